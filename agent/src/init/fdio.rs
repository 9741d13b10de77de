//! Async reads and writes on raw pipe and pty fds (tokio's process and
//! pipe types assume they own the child; here the agent reaps on its own).

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

use tokio::io::unix::AsyncFd;

pub struct Fd(AsyncFd<OwnedFd>);

impl Fd {
    pub fn new(fd: OwnedFd) -> io::Result<Fd> {
        // SAFETY: fcntl on an fd we own.
        unsafe {
            let fl = libc::fcntl(fd.as_raw_fd(), libc::F_GETFL);
            libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, fl | libc::O_NONBLOCK);
        }
        // SAFETY: the fd is owned by the AsyncFd from here on and closed
        // only when it is dropped.
        let a = unsafe { AsyncFd::register(fd) }.map_err(|e| io::Error::other(e.to_string()))?;
        Ok(Fd(a))
    }

    pub fn raw(&self) -> i32 {
        self.0.get_ref().as_raw_fd()
    }

    /// Reads at most `max` bytes into a fresh buffer; empty means EOF (a
    /// pty whose other side closed reports EIO, also EOF).
    pub async fn read_chunk(&self, max: usize) -> io::Result<Vec<u8>> {
        let mut v: Vec<u8> = Vec::with_capacity(max);
        loop {
            let mut g = self.0.readable().await?;
            let r = g.try_io(|i| {
                // SAFETY: reading into the vector's spare capacity.
                let n = unsafe { libc::read(i.as_raw_fd(), v.as_mut_ptr().cast(), max) };
                if n < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(n as usize)
                }
            });
            match r {
                Ok(Ok(n)) => {
                    // SAFETY: the kernel initialised n bytes.
                    unsafe { v.set_len(n) };
                    return Ok(v);
                }
                Ok(Err(e)) if e.raw_os_error() == Some(libc::EIO) => return Ok(Vec::new()),
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
    }

    pub async fn write_all(&self, mut buf: &[u8]) -> io::Result<()> {
        while !buf.is_empty() {
            let mut g = self.0.writable().await?;
            let r = g.try_io(|i| {
                // SAFETY: writing from a valid slice.
                let n = unsafe { libc::write(i.as_raw_fd(), buf.as_ptr().cast(), buf.len()) };
                if n < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(n as usize)
                }
            });
            match r {
                Ok(Ok(n)) => buf = &buf[n..],
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
        Ok(())
    }
}
