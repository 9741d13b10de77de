//! Relayed UDP: one connected host socket per (sandbox address, destination)
//! pair, closed after a minute without traffic. Its local port comes from
//! the forwarders' slice of the host's range, as a TCP connection's does
//! (upstream.rs): a UDP socket holds its port toward every destination,
//! so flows from the whole range (256 per sandbox) let sandboxes together
//! take every UDP port the host's own resolver binds from (attack review
//! s6, S6-NET-1).

use std::net::SocketAddr;
use std::os::fd::{FromRawFd, OwnedFd};
use std::sync::Arc;
use std::time::Instant;

use tokio::net::UdpSocket;
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinHandle;

use super::upstream::PortSlice;

/// (sandbox source, destination)
pub type Key = (SocketAddr, SocketAddr);

pub struct Flow {
    /// Sends go straight to the kernel: tokio's `try_send` reports
    /// WouldBlock until its reactor has seen the socket writable once.
    pub send: std::net::UdpSocket,
    pub last: Instant,
    task: JoinHandle<()>,
}

impl Drop for Flow {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Opens the host socket and its reader. Datagrams the loop cannot take
/// at once are dropped (UDP promises nothing more), so one busy flow
/// never holds more than the shared channel.
pub fn open(
    key: Key,
    ports: Option<PortSlice>,
    replies: mpsc::Sender<(Key, Vec<u8>)>,
    wake: Arc<Notify>,
) -> std::io::Result<Flow> {
    let std_sock = socket_in(key.1.is_ipv4(), ports)?;
    std_sock.connect(key.1)?;
    std_sock.set_nonblocking(true)?;
    let send = std_sock.try_clone()?;
    let s = UdpSocket::from_std(std_sock)?;
    let task = tokio::spawn(async move {
        let mut buf = vec![0u8; 65536];
        loop {
            match s.recv(&mut buf).await {
                Ok(n) => {
                    if replies.try_send((key, buf[..n].to_vec())).is_ok() {
                        wake.notify_one();
                    }
                }
                // ICMP errors from the destination surface here; the
                // sandbox simply gets no answer, as it would directly.
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(10)).await,
            }
        }
    });
    Ok(Flow {
        send,
        last: Instant::now(),
        task,
    })
}

/// An unbound UDP socket told to take its port from `ports`, so that the
/// kernel's autobind at `connect` does (EAGAIN once the slice is held).
/// Before Linux 6.3 the option is unknown and the whole range is used.
fn socket_in(v4: bool, ports: Option<PortSlice>) -> std::io::Result<std::net::UdpSocket> {
    let family = if v4 { libc::AF_INET } else { libc::AF_INET6 };
    // SAFETY: a fresh socket, owned from here on.
    let fd = unsafe { libc::socket(family, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd was just returned by socket(2) and nothing else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    if let Some(p) = ports {
        // ENOPROTOOPT before 6.3: the whole range, as the doc above says.
        let _ = super::upstream::set_port_range(&fd, p);
    }
    Ok(std::net::UdpSocket::from(fd))
}
