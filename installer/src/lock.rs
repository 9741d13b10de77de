//! The cross-process install lock: flock(2) on versions/<v>.lock. The
//! kernel drops it when the holder dies, so a killed installer never
//! blocks the next one. Waiting polls, so an overall deadline (--timeout)
//! also bounds the wait for another process's install.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::fsutil::check_node;

pub struct InstallLock {
    _file: File,
}

impl InstallLock {
    pub fn acquire(path: &Path, deadline: Option<Instant>) -> Result<InstallLock> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(path)
            .map_err(|e| Error::io_at("open lock", path, e))?;
        let m = file
            .metadata()
            .map_err(|e| Error::io_at("stat lock", path, e))?;
        check_node(path, &m, false, true)?;
        let mut wait = Duration::from_millis(1);
        loop {
            // SAFETY: flock on a descriptor we own; no memory is involved.
            let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
            if rc == 0 {
                return Ok(InstallLock { _file: file });
            }
            let err = std::io::Error::last_os_error();
            match err.raw_os_error() {
                Some(libc::EWOULDBLOCK) | Some(libc::EINTR) => {}
                _ => return Err(Error::io_at("lock", path, err)),
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(Error::Network(format!(
                    "deadline exceeded (--timeout) waiting for another install's lock {}",
                    path.display()
                )));
            }
            std::thread::sleep(wait);
            wait = (wait * 2).min(Duration::from_millis(50));
        }
    }
}
