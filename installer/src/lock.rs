//! The cross-process install lock: flock(2) on versions/<v>.lock. The
//! kernel drops it when the holder dies, so a killed installer never
//! blocks the next one.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;
use std::path::Path;

use crate::error::{Error, Result};

pub struct InstallLock {
    _file: File,
}

impl InstallLock {
    pub fn acquire(path: &Path) -> Result<InstallLock> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            .open(path)
            .map_err(|e| Error::io_at("open lock", path, e))?;
        loop {
            // SAFETY: flock on a descriptor we own; no memory is involved.
            let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
            if rc == 0 {
                return Ok(InstallLock { _file: file });
            }
            let err = std::io::Error::last_os_error();
            if err.kind() != std::io::ErrorKind::Interrupted {
                return Err(Error::io_at("lock", path, err));
            }
        }
    }
}
