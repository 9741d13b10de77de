//! Joins the virtio-serial port to the agent's ordinary listener. The
//! agent (`init::run`) serves connections accepted from a Unix socket; a
//! port is one character device with no connection boundary: bytes of a
//! host connection that is gone can still be queued when the next one
//! starts, and the guest learns of a disconnect only asynchronously.
//!
//! So sessions are delimited in the byte stream (lockbox_protocol::reset):
//! each host connection starts with a marker and a random token. On a
//! marker the bridge ends the current agent session (its connection to
//! the listener, and the thread copying its output to the port), opens a
//! fresh one, writes the token's echo and only then lets the new session
//! write. Host bytes before a marker go to the old session or nowhere;
//! the host discards guest bytes before its echo. Nothing of an earlier
//! session reaches a later one in either direction, whatever state the
//! old one was in (a host killed mid-frame, a VM restored mid-session).
//!
//! Plain threads with blocking I/O: this one reads the port, one per
//! session copies the agent's output to it, so neither direction can
//! stall the other; no buffering beyond one 64 KiB read.

use std::fs::File;
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use lockbox_protocol::reset::{encode, Finder, Found, Token, ECHO_MAGIC, MARKER_MAGIC};

/// An abstract socket: nothing on a filesystem a workload could replace.
const LISTENER_NAME: &[u8] = b"lockbox-agent";
const CHUNK: usize = 64 * 1024;

pub fn listener() -> io::Result<(OwnedFd, SocketAddr)> {
    let addr = SocketAddr::from_abstract_name(LISTENER_NAME)?;
    let l = UnixListener::bind_addr(&addr)?;
    Ok((l.into(), addr))
}

/// The bridge threads block every signal: the agent takes SIGCHLD and
/// SIGTERM from a signalfd, which only sees signals that every thread
/// blocks (a thread that does not would take SIGCHLD and discard it, and
/// the agent would never reap). The mask is set around the spawn so the
/// threads never run a moment without it; session threads inherit it.
pub fn spawn(port: File, addr: SocketAddr) -> io::Result<()> {
    let port = Arc::new(port);
    // SAFETY: sigset operations on local values; pthread_sigmask on this thread.
    let old = unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_BLOCK, &all, &mut old);
        old
    };
    let r = std::thread::Builder::new()
        .name("vport".into())
        .spawn(move || read_port(port, addr));
    // SAFETY: restores this thread's mask saved above.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut()) };
    r.map(drop)
}

/// One agent connection and the thread copying its output to the port.
struct Session {
    sock: UnixStream,
    /// False once a write to the agent failed: it ended the conversation,
    /// and the host's bytes until the next marker belong to nothing.
    agent_alive: bool,
    to_host: JoinHandle<()>,
}

impl Session {
    /// Ends the agent's connection and waits until nothing of this
    /// session can reach the port any more. The copying thread may be
    /// blocked writing to the port (a write blocks while no host is
    /// connected); a host's arrival, which is what brings a marker, lets
    /// it finish, and its next read of the shut socket ends it.
    fn end(self) {
        let _ = self.sock.shutdown(Shutdown::Both);
        let _ = self.to_host.join();
    }
}

fn read_port(port: Arc<File>, addr: SocketAddr) {
    let mut finder = Finder::new(MARKER_MAGIC);
    let mut session: Option<Session> = None;
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = match wait_for_host(&port) {
            Port::Readable => match (&*port).read(&mut buf) {
                Ok(0) => 0,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    eprintln!("lockbox guest: port read: {e}");
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                }
            },
            Port::NoHost => 0,
        };
        if n == 0 {
            // No host, and everything it sent was read: its session is over.
            if let Some(s) = session.take() {
                s.end();
            }
            finder.clear();
            std::thread::sleep(Duration::from_millis(10));
            continue;
        }
        let mut rest = &buf[..n];
        loop {
            match finder.feed(rest) {
                Found::Nothing => {
                    forward(&mut session, rest);
                    break;
                }
                Found::Token { token, start, end } => {
                    forward(&mut session, &rest[..start]);
                    if let Some(s) = session.take() {
                        s.end();
                    }
                    session = match open(&port, &addr, &token) {
                        Ok(s) => Some(s),
                        Err(e) => {
                            eprintln!("lockbox guest: session: {e}");
                            None
                        }
                    };
                    rest = &rest[end..];
                }
            }
        }
    }
}

/// Host bytes for the current session, if it still has a live agent.
fn forward(session: &mut Option<Session>, bytes: &[u8]) {
    if let Some(s) = session {
        if s.agent_alive && !bytes.is_empty() && (&s.sock).write_all(bytes).is_err() {
            s.agent_alive = false;
        }
    }
}

/// A fresh agent connection; the echo goes out before its output may.
fn open(port: &Arc<File>, addr: &SocketAddr, token: &Token) -> io::Result<Session> {
    let sock = UnixStream::connect_addr(addr)?;
    (&**port).write_all(&encode(&ECHO_MAGIC, token))?;
    let to_host = {
        let port = port.clone();
        let sock = sock.try_clone()?;
        std::thread::Builder::new()
            .name("vport-out".into())
            .spawn(move || agent_to_host(&sock, &port))?
    };
    Ok(Session {
        sock,
        agent_alive: true,
        to_host,
    })
}

enum Port {
    Readable,
    NoHost,
}

/// Waits until the port has bytes to read, or says that no host is
/// connected: then the port polls as POLLHUP at once (and reads return 0
/// once nothing is queued), and the caller sleeps instead of spinning.
fn wait_for_host(port: &File) -> Port {
    loop {
        let mut p = libc::pollfd {
            fd: port.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(&mut p, 1, -1) };
        if n > 0 && p.revents & libc::POLLIN != 0 {
            return Port::Readable;
        }
        if n > 0 && p.revents & libc::POLLHUP != 0 {
            return Port::NoHost;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn agent_to_host(mut sock: &UnixStream, port: &Arc<File>) {
    let mut port: &File = port;
    let mut buf = vec![0u8; CHUNK];
    loop {
        match sock.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if port.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = sock.shutdown(Shutdown::Both);
}
