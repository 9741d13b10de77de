//! Relaying between two kernel TCP sockets with splice(2): the bytes move
//! from one socket's receive queue into a pipe and from the pipe into the
//! other socket's send queue as page references, never through this
//! process's memory. What a connection holds here is one pipe (64 KiB,
//! the default size) per direction.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use tokio::io::Interest;
use tokio::net::TcpStream;

/// At most this much is moved per call (one default pipe).
const STEP: usize = 64 * 1024;

/// How a relay ended.
#[derive(Debug, PartialEq, Eq)]
pub enum End {
    /// Both sides closed their sending side; each end of stream was
    /// passed on as a shutdown of the other's.
    Closed,
    /// One side failed (reset, or the other stopped reading): the other
    /// side is reset too.
    Reset,
}

/// Moves bytes both ways until both directions ended or one failed.
/// `first` (already read from `a`, e.g. the gated ClientHello) goes to
/// `b` before anything else.
pub async fn relay(a: &TcpStream, b: &TcpStream, first: &[u8]) -> End {
    if !first.is_empty() && write_all(b, first).await.is_err() {
        return End::Reset;
    }
    let up = one_way(a, b);
    let down = one_way(b, a);
    tokio::pin!(up, down);
    let (mut up_done, mut down_done) = (false, false);
    while !(up_done && down_done) {
        let r = tokio::select! {
            r = &mut up, if !up_done => { up_done = true; r }
            r = &mut down, if !down_done => { down_done = true; r }
        };
        if r.is_err() {
            return End::Reset;
        }
    }
    End::Closed
}

async fn write_all(to: &TcpStream, mut buf: &[u8]) -> io::Result<()> {
    while !buf.is_empty() {
        let n = to
            .async_io(Interest::WRITABLE, || {
                // SAFETY: writing from a buffer valid for its length.
                let n = unsafe { libc::write(to.as_raw_fd(), buf.as_ptr().cast(), buf.len()) };
                if n < 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(n as usize)
            })
            .await?;
        buf = &buf[n..];
    }
    Ok(())
}

/// `from` → pipe → `to` until `from` ends its stream (then `to`'s sending
/// side is shut down) or either fails.
pub async fn one_way(from: &TcpStream, to: &TcpStream) -> io::Result<()> {
    let (pr, pw) = pipe()?;
    loop {
        // The pipe is empty here: EAGAIN can only mean `from` has nothing.
        let mut held = from
            .async_io(Interest::READABLE, || {
                splice(from.as_raw_fd(), pw.as_raw_fd(), STEP)
            })
            .await?;
        if held == 0 {
            shutdown_write(to);
            return Ok(());
        }
        while held > 0 {
            held -= to
                .async_io(Interest::WRITABLE, || {
                    splice(pr.as_raw_fd(), to.as_raw_fd(), held)
                })
                .await?;
        }
    }
}

fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
    // SAFETY: splice between two fds we hold; no user memory involved.
    let n = unsafe {
        libc::splice(
            from,
            std::ptr::null_mut(),
            to,
            std::ptr::null_mut(),
            len,
            libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills two fds, owned below.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both were just created and are ours.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

fn shutdown_write(s: &TcpStream) {
    // SAFETY: shutdown on a socket we hold.
    unsafe { libc::shutdown(s.as_raw_fd(), libc::SHUT_WR) };
}

/// Makes the next close of `s` a reset (SO_LINGER with a zero timeout):
/// how a refused or failed connection ends inside the sandbox at once.
pub fn reset_on_close(s: &impl AsRawFd) {
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt with a valid linger struct.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&l as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{Shutdown, TcpListener};

    /// Two connected pairs on loopback: (client, server-side) each.
    fn pair() -> (std::net::TcpStream, std::net::TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (s, _) = l.accept().unwrap();
        (c, s)
    }

    fn tokio(s: std::net::TcpStream) -> TcpStream {
        s.set_nonblocking(true).unwrap();
        TcpStream::from_std(s).unwrap()
    }

    fn run<T>(f: impl std::future::Future<Output = T>) -> T {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn relays_both_ways_and_ends_when_both_sides_closed() {
        let (mut sandbox, a) = pair();
        let (b, mut host) = pair();
        let peers = std::thread::spawn(move || {
            let big = vec![7u8; 3 << 20];
            let h = std::thread::spawn(move || {
                let mut got = Vec::new();
                host.read_to_end(&mut got).unwrap();
                host.write_all(b"reply").unwrap();
                host.shutdown(Shutdown::Write).unwrap();
                got
            });
            sandbox.write_all(&big).unwrap();
            sandbox.shutdown(Shutdown::Write).unwrap();
            let mut back = Vec::new();
            sandbox.read_to_end(&mut back).unwrap();
            (h.join().unwrap(), back)
        });
        let end = run(async {
            let (a, b) = (tokio(a), tokio(b));
            relay(&a, &b, b"first:").await
        });
        let (got, back) = peers.join().unwrap();
        assert_eq!(end, End::Closed);
        assert_eq!(&got[..6], b"first:");
        assert_eq!(got.len(), 6 + (3 << 20));
        assert!(got[6..].iter().all(|&x| x == 7));
        assert_eq!(back, b"reply");
    }

    #[test]
    fn ends_when_one_side_goes_away() {
        let (sandbox, a) = pair();
        let (b, mut host) = pair();
        // The sandbox closes for good; the host keeps talking: its bytes
        // meet a closed socket, the relay ends and resets.
        drop(sandbox);
        let talker = std::thread::spawn(move || {
            let chunk = [1u8; 65536];
            let t0 = std::time::Instant::now();
            while host.write_all(&chunk).is_ok() {
                assert!(t0.elapsed() < std::time::Duration::from_secs(10));
            }
        });
        let end = run(async {
            let (a, b) = (tokio(a), tokio(b));
            tokio::time::timeout(std::time::Duration::from_secs(10), relay(&a, &b, b""))
                .await
                .expect("the relay ended")
        });
        assert_eq!(end, End::Reset);
        drop(talker);
    }
}
