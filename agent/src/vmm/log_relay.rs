//! qemu's stdout and stderr, relayed to the helper's own stderr (the
//! sandbox's helper.log) with a byte budget. qemu writes there what a
//! guest can provoke (device-model warnings, and the whole guest console
//! with the engine's LOCKBOX_VM_CONSOLE debug switch): inheriting the
//! log file would let a guest fill the host's disk. Past the budget the
//! relay keeps reading (qemu never blocks on a full pipe) and drops.

use std::io::{self, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// Per VM, over its whole life: far above what qemu writes on its own
/// (a few lines at start and exit).
pub const BUDGET: u64 = 1 << 20;

pub struct Relay {
    rd: OwnedFd,
    budget: u64,
    written: u64,
    dropped: u64,
}

/// Points fd 2 (and so every process forked from here on) at a fresh
/// pipe; returns the relay reading it and the previous stderr, which
/// `restore` puts back once qemu is started.
pub fn redirect_stderr() -> io::Result<(Relay, OwnedFd)> {
    let mut p = [0; 2];
    // SAFETY: pipe2 into a local array.
    if unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fresh fds from pipe2.
    let (rd, wr) = unsafe { (OwnedFd::from_raw_fd(p[0]), OwnedFd::from_raw_fd(p[1])) };
    // qemu's end blocks as a log normally does; only the relay's is
    // non-blocking.
    clear_nonblock(wr.as_raw_fd())?;
    // SAFETY: dup of our own stderr.
    let saved = unsafe { libc::fcntl(2, libc::F_DUPFD_CLOEXEC, 3) };
    if saved < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh fd from F_DUPFD_CLOEXEC.
    let saved = unsafe { OwnedFd::from_raw_fd(saved) };
    // SAFETY: dup2 onto our stderr; `wr` is dropped after, fd 2 stays.
    if unsafe { libc::dup2(wr.as_raw_fd(), 2) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((Relay::new(rd, BUDGET), saved))
}

/// Puts the helper's own stderr back (its messages are not qemu's).
pub fn restore(saved: &OwnedFd) {
    // SAFETY: dup2 of an fd we hold onto our stderr.
    unsafe { libc::dup2(saved.as_raw_fd(), 2) };
}

fn clear_nonblock(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl flag calls on an fd we hold.
    unsafe {
        let fl = libc::fcntl(fd, libc::F_GETFL);
        if fl < 0 || libc::fcntl(fd, libc::F_SETFL, fl & !libc::O_NONBLOCK) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

impl Relay {
    pub fn new(rd: OwnedFd, budget: u64) -> Relay {
        Relay {
            rd,
            budget,
            written: 0,
            dropped: 0,
        }
    }

    pub fn fd(&self) -> RawFd {
        self.rd.as_raw_fd()
    }

    /// Moves what is readable now to `out`; false once every writer is
    /// gone (or the pipe failed).
    pub fn pump(&mut self, out: &mut impl Write) -> bool {
        let mut buf = [0u8; 16 * 1024];
        loop {
            // SAFETY: read into a local buffer.
            let n = unsafe { libc::read(self.fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n == 0 {
                return false;
            }
            if n < 0 {
                let e = io::Error::last_os_error().raw_os_error();
                return e == Some(libc::EAGAIN) || e == Some(libc::EINTR);
            }
            let n = n as u64;
            let keep = n.min(self.budget - self.written);
            if keep > 0 {
                let _ = out.write_all(&buf[..keep as usize]);
                self.written += keep;
                if self.written == self.budget {
                    let _ = writeln!(
                        out,
                        "\nlockbox-helper vmm: qemu's output reached its {} byte budget; the rest is dropped",
                        self.budget
                    );
                }
            }
            self.dropped += n - keep;
        }
    }

    /// What is left in the pipe once qemu is gone, then the count of what
    /// was dropped.
    pub fn finish(&mut self, out: &mut impl Write) {
        self.pump(out);
        if self.dropped > 0 {
            let _ = writeln!(
                out,
                "lockbox-helper vmm: {} bytes of qemu's output dropped",
                self.dropped
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_budget_and_never_blocks_the_writer() {
        let mut p = [0; 2];
        // SAFETY: pipe2 into a local array.
        assert_eq!(
            unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) },
            0
        );
        // SAFETY: fresh fds.
        let (rd, wr) = unsafe { (OwnedFd::from_raw_fd(p[0]), OwnedFd::from_raw_fd(p[1])) };
        clear_nonblock(wr.as_raw_fd()).unwrap();
        // 3 MiB through a 64 KiB pipe: the writer finishes only if the
        // relay keeps reading past its budget.
        let writer = std::thread::spawn(move || {
            let mut f = std::fs::File::from(wr);
            let chunk = vec![b'x'; 64 * 1024];
            for _ in 0..48 {
                f.write_all(&chunk).unwrap();
            }
        });
        let mut relay = Relay::new(rd, 100 * 1024);
        let mut out = Vec::new();
        let mut fds = [libc::pollfd {
            fd: relay.fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        loop {
            // SAFETY: a valid pollfd array.
            unsafe { libc::poll(fds.as_mut_ptr(), 1, 5000) };
            if !relay.pump(&mut out) {
                break;
            }
        }
        writer.join().unwrap();
        relay.finish(&mut out);
        assert!(out[..100 * 1024].iter().all(|b| *b == b'x'));
        assert!(
            !out[100 * 1024..].windows(2).any(|w| w == b"xx"),
            "more than the budget kept"
        );
        assert!(out.len() < 100 * 1024 + 300, "{} bytes out", out.len());
        let text = String::from_utf8_lossy(&out[100 * 1024..]).into_owned();
        assert!(
            text.contains("budget")
                && text.contains(&format!("{} bytes", 3 * 1024 * 1024 - 100 * 1024)),
            "{text}"
        );
    }
}
