//! The host process whose life is a sandbox's (the native helper; for a
//! microVM, the confined VMM's supervisor): watched with a pidfd, killed
//! only when its start time proves it is still the same process.

use std::os::fd::{FromRawFd, OwnedFd};
use std::process::Child;
use std::time::Duration;

use tokio::sync::watch;

fn pidfd_open(pid: u32) -> Option<OwnedFd> {
    // SAFETY: raw syscall; a non-negative result is a new fd we own.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::c_int, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: fresh fd from the kernel.
    Some(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Watches `pid` until it exits; reaps it when we own it as `child`.
/// Must run inside a tokio runtime.
pub fn watch_exit(pid: u32, child: Option<Child>) -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    let fd = pidfd_open(pid);
    tokio::spawn(async move {
        // SAFETY: the AsyncFd owns the pidfd, which stays open and unchanged
        // for its whole life.
        let afd = fd.and_then(|fd| unsafe {
            tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE).ok()
        });
        match afd {
            Some(afd) => {
                let _ = afd.readable().await;
            }
            None => {
                // No pidfd (old kernel or already gone): poll /proc.
                while crate::state::process_start_time(pid).is_some() {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        if let Some(mut c) = child {
            let _ = c.try_wait();
        }
        let _ = tx.send(true);
    });
    rx
}

/// Waits until `exited` is true or `d` passes; true if it exited.
pub async fn wait_exited(exited: &mut watch::Receiver<bool>, d: Duration) -> bool {
    tokio::time::timeout(d, exited.wait_for(|e| *e))
        .await
        .is_ok()
}

/// SIGKILL to a pid we verified by start time.
pub fn kill_verified(pid: u32, start: u64) {
    if pid != 0 && crate::state::process_start_time(pid) == Some(start) {
        // SAFETY: plain kill(2).
        unsafe {
            libc::kill(pid as i32, libc::SIGKILL);
        }
    }
}
