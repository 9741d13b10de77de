//! Panics never cross the C ABI: every export runs its body through
//! [`catch`], which turns a panic into an `internal` error.
//!
//! Rust's default panic hook prints to stderr, which belongs to the host.
//! `std::panic::set_hook` is process-wide, so we cannot simply replace it:
//! another Rust library in the same process would lose its own hook. We
//! install ours once, on the first export called, and it *chains*: a panic
//! on a thread that is currently inside a lockbox export, or on one of the
//! library's own runtime threads, is recorded (for the error message and
//! the library log) and printed nowhere; every other panic goes to the hook
//! that was there before. The library is linked `-z nodelete`, so the hook's
//! code can never be unloaded from under the host.
use crate::error::ApiError;
use std::cell::{Cell, RefCell};
use std::panic::{self, AssertUnwindSafe};
use std::sync::Once;

thread_local! {
    /// >0 while this thread runs inside a lockbox export.
    static DEPTH: Cell<u32> = const { Cell::new(0) };
    /// Set on the library's own runtime threads.
    static OURS: Cell<bool> = const { Cell::new(false) };
    /// The last panic recorded on this thread, for the error message.
    static LAST: RefCell<Option<String>> = const { RefCell::new(None) };
}

static HOOK: Once = Once::new();

fn install_hook() {
    HOOK.call_once(|| {
        let prev = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            let ours = DEPTH.with(|d| d.get() > 0) || OURS.with(|o| o.get());
            if !ours {
                prev(info);
                return;
            }
            let what = if let Some(s) = info.payload().downcast_ref::<&str>() {
                (*s).to_string()
            } else if let Some(s) = info.payload().downcast_ref::<String>() {
                s.clone()
            } else {
                "non-string panic payload".to_string()
            };
            let msg = match info.location() {
                Some(l) => format!("{what} (at {}:{})", l.file(), l.line()),
                None => what,
            };
            crate::log::write(crate::log::Level::Error, format_args!("panic: {msg}"));
            let _ = LAST.try_with(|l| *l.borrow_mut() = Some(msg));
        }));
    });
}

/// Marks the current thread as one of the library's (runtime workers).
pub fn mark_lockbox_thread() {
    OURS.with(|o| o.set(true));
}

/// Runs `f`, turning a panic into an `internal` error.
pub fn catch<R>(f: impl FnOnce() -> R) -> Result<R, ApiError> {
    install_hook();
    DEPTH.with(|d| d.set(d.get() + 1));
    let r = panic::catch_unwind(AssertUnwindSafe(f));
    DEPTH.with(|d| d.set(d.get() - 1));
    r.map_err(|_| {
        let msg = LAST
            .with(|l| l.borrow_mut().take())
            .unwrap_or_else(|| "unknown panic".to_string());
        ApiError::internal(format!("panic inside liblockbox: {msg}"))
    })
}
