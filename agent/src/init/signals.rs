//! SIGCHLD and SIGTERM for PID 1 through a signalfd: no signal handlers
//! (and no tokio "signal" feature, which would otherwise be unified into
//! the host library's tokio when the workspace is built together).
//! Workloads get an empty signal mask back before exec (confine.rs).

use std::io;

use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use tokio::io::unix::AsyncFd;

pub struct Signals(AsyncFd<SignalFd>);

fn set() -> SigSet {
    let mut s = SigSet::empty();
    s.add(Signal::SIGCHLD);
    s.add(Signal::SIGTERM);
    s
}

impl Signals {
    /// Must run before any thread exists, so every thread blocks them.
    pub fn block() -> io::Result<()> {
        set().thread_block().map_err(io::Error::from)
    }

    pub fn new() -> io::Result<Signals> {
        let fd = SignalFd::with_flags(&set(), SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
            .map_err(io::Error::from)?;
        // SAFETY: the SignalFd owns the fd and lives inside the AsyncFd.
        let a = unsafe { AsyncFd::register(fd) }.map_err(|e| io::Error::other(e.to_string()))?;
        Ok(Signals(a))
    }

    /// The next signal number.
    pub async fn next(&self) -> io::Result<i32> {
        loop {
            let mut g = self.0.readable().await?;
            match g.try_io(|fd| fd.get_ref().read_signal().map_err(io::Error::from)) {
                // A SIGTERM sent from inside the sandbox (its sender is in
                // our pid namespace, so ssi_pid != 0) is not a stop request:
                // only the supervisor, outside the namespace (seen as pid
                // 0), may stop the sandbox.
                Ok(Ok(Some(info)))
                    if info.ssi_signo as i32 == libc::SIGTERM && info.ssi_pid != 0 =>
                {
                    continue
                }
                Ok(Ok(Some(info))) => return Ok(info.ssi_signo as i32),
                Ok(Ok(None)) => g.clear_ready(),
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
    }
}
