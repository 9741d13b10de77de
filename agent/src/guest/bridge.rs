//! Joins the virtio-serial port to the agent's ordinary listener. The
//! agent (`init::run`) serves connections accepted from a Unix socket; a
//! port is one character device whose "connection" is the host side being
//! open. So each time the host connects, one session connects to the
//! listener and copies bytes both ways until either side ends; the next
//! host connection (a reattach) gets a fresh agent connection.
//!
//! Plain threads with blocking I/O: one per direction, so neither
//! direction can stall the other, and no buffering beyond one read.

use std::fs::File;
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};
use std::sync::Arc;
use std::time::Duration;

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
/// threads never run a moment without it.
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
        .spawn(move || loop {
            wait_for_host(&port);
            if let Err(e) = session(&port, &addr) {
                eprintln!("lockbox guest: session: {e}");
                std::thread::sleep(Duration::from_millis(100));
            }
        });
    // SAFETY: restores this thread's mask saved above.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut()) };
    r.map(drop)
}

/// Returns once the host has sent something. While no host end is open
/// the port polls as POLLHUP at once (reads return 0), so this sleeps
/// between polls instead of spinning.
fn wait_for_host(port: &File) {
    loop {
        let mut p = libc::pollfd {
            fd: port.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(&mut p, 1, -1) };
        if n > 0 && p.revents & libc::POLLIN != 0 {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn session(port: &Arc<File>, addr: &SocketAddr) -> io::Result<()> {
    let sock = UnixStream::connect_addr(addr)?;
    let to_agent = {
        let port = port.clone();
        let sock = sock.try_clone()?;
        std::thread::Builder::new()
            .name("vport-in".into())
            .spawn(move || host_to_agent(&port, sock))?
    };
    agent_to_host(&sock, port);
    let _ = to_agent.join();
    Ok(())
}

/// Ends when the host closes its end (a read of 0). If the agent dropped
/// the connection first, the rest of this host session is discarded: its
/// bytes belong to a conversation that is over.
fn host_to_agent(mut port: &File, mut sock: UnixStream) {
    let mut buf = vec![0u8; CHUNK];
    let mut agent_gone = false;
    loop {
        match port.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if !agent_gone && sock.write_all(&buf[..n]).is_err() {
                    agent_gone = true;
                }
            }
        }
    }
    let _ = sock.shutdown(Shutdown::Both);
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
