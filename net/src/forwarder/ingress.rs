//! Published ports on the policy path: the host's `127.0.0.1:<host port>`
//! relayed into the sandbox's `<guest port>`.
//!
//! The listening sockets are bound by the helper (which has the privilege
//! and runs before the sandbox) and handed over as fds: the forwarder
//! never binds a host port itself, and a port that is taken fails the
//! create instead of this process. For each connection accepted on one,
//! the forwarder opens a TCP connection into the sandbox through its own
//! stack, from the gateway address, and copies bytes both ways through
//! bounded channels.
//!
//! Ingress is not egress: the policy does not decide it (the host asked
//! for it). What the sandbox sends back on such a connection goes to that
//! accepted socket and nowhere else: no host socket is opened for it, and
//! its smoltcp socket matches only the one (gateway, port) ↔ (sandbox,
//! guest port) pair.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener};
use std::sync::Arc;
use std::time::{Duration, Instant};

use smoltcp::iface::{Interface, SocketHandle, SocketSet};
use smoltcp::socket::tcp as stcp;
use smoltcp::wire::{IpAddress, IpEndpoint, IpListenEndpoint};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;

use super::device::Queues;

/// Connections through published ports open at once, all ports together;
/// more wait in the listening sockets' backlog (the kernel's, bounded).
pub const MAX_CONNECTIONS: usize = 64;
/// Each direction of each connection's smoltcp buffer.
const BUFFER: usize = 128 * 1024;
/// Chunks in flight per direction between the loop and the host socket.
const CHANNEL: usize = 2;
const CHUNK: usize = 64 * 1024;
/// The sandbox must answer the SYN within this (a closed port resets at
/// once; a dropped SYN would otherwise keep the client waiting).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The gateway's side of each connection takes a port from here.
const LOCAL_PORTS: std::ops::RangeInclusive<u16> = 49152..=65535;

/// One published port: the host's listening socket (bound and listening
/// already) and where its connections go inside the sandbox.
pub struct Published {
    pub listener: TcpListener,
    pub guest: SocketAddrV4,
}

/// What the loop learns from an accept task.
type Accepted = (TcpStream, SocketAddrV4, OwnedSemaphorePermit);

enum FromHost {
    Data(Vec<u8>),
    Eof,
}

struct Flow {
    handle: SocketHandle,
    /// Until the sandbox accepted: then the host side's tasks start.
    waiting: Option<(TcpStream, Instant)>,
    to_host: Option<mpsc::Sender<Vec<u8>>>,
    from_host: Option<mpsc::Receiver<FromHost>>,
    pending: Option<(Vec<u8>, usize)>,
    host_done: bool,
    /// The sandbox closed its sending side: what it sent is in the
    /// writer's hands, which finishes on its own.
    sandbox_done: bool,
    reader: Option<JoinHandle<()>>,
    writer: Option<JoinHandle<()>>,
    /// Moves to the writer once the relay starts: a connection counts
    /// until its last byte is written to the client.
    permit: Option<OwnedSemaphorePermit>,
}

impl Drop for Flow {
    fn drop(&mut self) {
        if let Some(t) = &self.reader {
            t.abort();
        }
        if let Some(t) = &self.writer {
            if !self.sandbox_done {
                t.abort();
            }
        }
        if let Some((s, _)) = self.waiting.take() {
            reset(s);
        }
    }
}

/// The published ports of one forwarder and their open connections.
pub struct Ingress {
    gateway: Ipv4Addr,
    accepted: mpsc::Receiver<Accepted>,
    flows: HashMap<u16, Flow>,
    next_port: u16,
    wake: Arc<Notify>,
    accept_tasks: Vec<JoinHandle<()>>,
}

impl Drop for Ingress {
    fn drop(&mut self) {
        for t in &self.accept_tasks {
            t.abort();
        }
    }
}

impl Ingress {
    /// Starts accepting on every published port (inside the runtime).
    pub fn start(
        published: Vec<Published>,
        gateway: Ipv4Addr,
        wake: Arc<Notify>,
    ) -> std::io::Result<Ingress> {
        let (tx, accepted) = mpsc::channel(MAX_CONNECTIONS);
        let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        let mut accept_tasks = Vec::new();
        for p in published {
            p.listener.set_nonblocking(true)?;
            let listener = tokio::net::TcpListener::from_std(p.listener)?;
            let (tx, permits, wake) = (tx.clone(), permits.clone(), wake.clone());
            accept_tasks.push(tokio::spawn(async move {
                loop {
                    // A permit first: at the limit, connections wait in
                    // the kernel's backlog, not in this process.
                    let Ok(permit) = permits.clone().acquire_owned().await else {
                        return;
                    };
                    let Ok((stream, _)) = listener.accept().await else {
                        // EMFILE and the like: try again shortly rather
                        // than spin.
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    };
                    if tx.send((stream, p.guest, permit)).await.is_err() {
                        return;
                    }
                    wake.notify_one();
                }
            }));
        }
        Ok(Ingress {
            gateway,
            accepted,
            flows: HashMap::new(),
            next_port: *LOCAL_PORTS.start(),
            wake,
            accept_tasks,
        })
    }

    /// New connections into the sandbox, bytes both ways, ended ones gone.
    /// Runs between the stack's polls, like the egress relay.
    pub fn round(
        &mut self,
        iface: &mut Interface,
        dev: &mut Queues,
        sockets: &mut SocketSet<'static>,
    ) {
        while let Ok((stream, guest, permit)) = self.accepted.try_recv() {
            self.open(iface, sockets, stream, guest, permit);
        }
        let mut over = Vec::new();
        for (port, flow) in self.flows.iter_mut() {
            let sock = sockets.get_mut::<stcp::Socket>(flow.handle);
            if !flow.step(sock, &self.wake) {
                over.push(*port);
            }
        }
        if over.is_empty() {
            return;
        }
        // An aborted socket sends its reset when polled: poll before it
        // goes.
        iface.poll(smoltcp::time::Instant::now(), dev, sockets);
        for port in over {
            if let Some(flow) = self.flows.remove(&port) {
                sockets.remove(flow.handle);
            }
        }
    }

    fn open(
        &mut self,
        iface: &mut Interface,
        sockets: &mut SocketSet<'static>,
        stream: TcpStream,
        guest: SocketAddrV4,
        permit: OwnedSemaphorePermit,
    ) {
        let Some(local) = self.free_port() else {
            reset(stream);
            return;
        };
        let mut s = stcp::Socket::new(
            stcp::SocketBuffer::new(vec![0; BUFFER]),
            stcp::SocketBuffer::new(vec![0; BUFFER]),
        );
        s.set_nagle_enabled(false);
        s.set_keep_alive(Some(smoltcp::time::Duration::from_secs(30)));
        s.set_timeout(Some(smoltcp::time::Duration::from_secs(90)));
        let remote = IpEndpoint::new(IpAddress::Ipv4(*guest.ip()), guest.port());
        let from = IpListenEndpoint {
            addr: Some(IpAddress::Ipv4(self.gateway)),
            port: local,
        };
        if s.connect(iface.context(), remote, from).is_err() {
            reset(stream);
            return;
        }
        let _ = stream.set_nodelay(true);
        let handle = sockets.add(s);
        self.flows.insert(
            local,
            Flow {
                handle,
                waiting: Some((stream, Instant::now())),
                to_host: None,
                from_host: None,
                pending: None,
                host_done: false,
                sandbox_done: false,
                reader: None,
                writer: None,
                permit: Some(permit),
            },
        );
    }

    fn free_port(&mut self) -> Option<u16> {
        let span = (LOCAL_PORTS.end() - LOCAL_PORTS.start()) as usize + 1;
        for _ in 0..span {
            let p = self.next_port;
            self.next_port = if p == *LOCAL_PORTS.end() {
                *LOCAL_PORTS.start()
            } else {
                p + 1
            };
            if !self.flows.contains_key(&p) {
                return Some(p);
            }
        }
        None
    }
}

impl Flow {
    /// Returns false once the connection is over and its socket can go.
    fn step(&mut self, sock: &mut stcp::Socket<'_>, wake: &Arc<Notify>) -> bool {
        if let Some((_, since)) = &self.waiting {
            match sock.state() {
                stcp::State::SynSent | stcp::State::SynReceived => {
                    if since.elapsed() > CONNECT_TIMEOUT {
                        sock.abort();
                        return false;
                    }
                    return true;
                }
                // Refused (the sandbox reset) or gone: the client sees a
                // reset too (the waiting stream is reset when dropped).
                stcp::State::Closed | stcp::State::TimeWait => return false,
                _ => {
                    let (stream, _) = self.waiting.take().expect("checked above");
                    self.start_relay(stream, wake.clone());
                }
            }
        }
        // Sandbox → host.
        if let Some(tx) = &self.to_host {
            if tx.is_closed() {
                // The client is gone: so is the connection.
                sock.abort();
                return false;
            }
            while sock.can_recv() {
                let Ok(permit) = tx.try_reserve() else { break };
                let chunk = sock
                    .recv(|b| {
                        let n = b.len().min(CHUNK);
                        (n, b[..n].to_vec())
                    })
                    .unwrap_or_default();
                if chunk.is_empty() {
                    break;
                }
                permit.send(chunk);
            }
            if !sock.may_recv() && !sock.can_recv() {
                // The sandbox closed its side: close the client's once
                // the writer has written what is queued.
                self.to_host = None;
                self.sandbox_done = true;
            }
        }
        // Host → sandbox.
        while !self.host_done {
            if let Some((buf, off)) = &mut self.pending {
                match sock.send_slice(&buf[*off..]) {
                    Ok(n) => *off += n,
                    Err(_) => break,
                }
                if *off < buf.len() {
                    break;
                }
                self.pending = None;
            }
            let Some(rx) = self.from_host.as_mut() else {
                break;
            };
            match rx.try_recv() {
                Ok(FromHost::Data(d)) => self.pending = Some((d, 0)),
                Ok(FromHost::Eof) => {
                    self.host_done = true;
                    sock.close();
                }
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    self.host_done = true;
                    sock.abort();
                }
                Err(mpsc::error::TryRecvError::Empty) => break,
            }
        }
        !matches!(sock.state(), stcp::State::Closed | stcp::State::TimeWait)
    }

    fn start_relay(&mut self, stream: TcpStream, wake: Arc<Notify>) {
        let (mut rd, mut wr) = stream.into_split();
        let (to_host, mut to_host_rx) = mpsc::channel::<Vec<u8>>(CHANNEL);
        let (from_host_tx, from_host) = mpsc::channel::<FromHost>(CHANNEL);
        let w = wake.clone();
        let reader = tokio::spawn(async move {
            loop {
                let mut buf = Vec::with_capacity(CHUNK);
                let msg = match rd.read_buf(&mut buf).await {
                    Ok(0) => FromHost::Eof,
                    Ok(_) => FromHost::Data(buf),
                    // Dropping the sender tells the loop: reset.
                    Err(_) => return,
                };
                let last = matches!(msg, FromHost::Eof);
                if from_host_tx.send(msg).await.is_err() {
                    return;
                }
                w.notify_one();
                if last {
                    // Keep the sender: a closed channel would read as a
                    // reset once the Eof is taken.
                    std::future::pending::<()>().await;
                }
            }
        });
        let permit = self.permit.take();
        let writer = tokio::spawn(async move {
            let _permit = permit;
            while let Some(chunk) = to_host_rx.recv().await {
                if wr.write_all(&chunk).await.is_err() {
                    // The receiver dropped here tells the loop the client
                    // is gone.
                    break;
                }
                wake.notify_one();
            }
            let _ = wr.shutdown().await;
            drop(to_host_rx);
            wake.notify_one();
        });
        self.to_host = Some(to_host);
        self.from_host = Some(from_host);
        self.reader = Some(reader);
        self.writer = Some(writer);
    }
}

/// Ends a client's connection with a reset, not a clean close: it was
/// never served.
fn reset(s: TcpStream) {
    super::splice::reset_on_close(&s);
    drop(s);
}
