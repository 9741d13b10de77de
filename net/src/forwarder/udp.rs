//! Relayed UDP: one connected host socket per (sandbox address, destination)
//! pair, closed after a minute without traffic.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use tokio::net::UdpSocket;
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinHandle;

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
    replies: mpsc::Sender<(Key, Vec<u8>)>,
    wake: Arc<Notify>,
) -> std::io::Result<Flow> {
    let bind: SocketAddr = if key.1.is_ipv4() {
        "0.0.0.0:0".parse().expect("literal")
    } else {
        "[::]:0".parse().expect("literal")
    };
    let std_sock = std::net::UdpSocket::bind(bind)?;
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
