//! The library's one tokio runtime: created on first use, never shut down
//! (the host may call in at any time until it exits).
//!
//! Only time, I/O and sync drivers are used. tokio's `signal` and `process`
//! features are deliberately absent: both install a SIGCHLD/signal handler in
//! the host, and a Go host crashes on foreign handlers without SA_ONSTACK.
use std::sync::OnceLock;
use tokio::runtime::{Builder, Runtime};

static RUNTIME: OnceLock<Runtime> = OnceLock::new();

/// Worker threads: the machine is small and most work is waiting on I/O.
const WORKERS: usize = 2;

pub fn runtime() -> &'static Runtime {
    RUNTIME.get_or_init(|| {
        Builder::new_multi_thread()
            .worker_threads(WORKERS)
            .max_blocking_threads(64)
            .thread_name("lockbox-rt")
            .on_thread_start(crate::panic::mark_lockbox_thread)
            .enable_io()
            .enable_time()
            .build()
            // Without a runtime the library cannot do anything; this is
            // reached inside catch_unwind, so it becomes an `internal` error.
            .expect("lockbox: cannot start the tokio runtime")
    })
}
