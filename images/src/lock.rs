//! Cross-process advisory locks (flock) that give up when canceled.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::Duration;

use crate::cancel::Cancel;
use crate::error::{ImageError, IoContext, Result};

/// Held until dropped (closing the file releases the lock).
pub(crate) struct FileLock {
    _file: File,
}

pub(crate) fn lock(path: &Path, exclusive: bool, cancel: &Cancel) -> Result<FileLock> {
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .ctx("open lock", path)?;
    let op = if exclusive {
        libc::LOCK_EX
    } else {
        libc::LOCK_SH
    } | libc::LOCK_NB;
    loop {
        cancel.check()?;
        // SAFETY: the fd is valid for the life of `file`.
        if unsafe { libc::flock(file.as_raw_fd(), op) } == 0 {
            return Ok(FileLock { _file: file });
        }
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EWOULDBLOCK)
            && err.kind() != std::io::ErrorKind::Interrupted
        {
            return Err(ImageError::io("flock", path, err));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
