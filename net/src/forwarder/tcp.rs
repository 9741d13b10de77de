//! One relayed TCP connection: a smoltcp socket on the sandbox's side, a
//! host socket on the other, and two bounded channels between them.
//!
//! The host connection is opened before the sandbox's SYN is answered, so
//! a refused or unreachable destination is a reset inside the sandbox,
//! not a connection that opens and then dies. The sandbox's first bytes
//! are held back (at most one TLS record) until its server name, if any,
//! has been checked.

use std::net::SocketAddr;
use std::sync::Arc;

use smoltcp::iface::SocketHandle;
use smoltcp::socket::tcp;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinHandle;

use crate::sni::{self, Hello};

/// Chunks in flight per direction; with `CHUNK` this bounds what a
/// connection holds outside the smoltcp buffers.
const CHANNEL: usize = 2;
pub const CHUNK: usize = 64 * 1024;

pub enum FromHost {
    Data(Vec<u8>),
    Eof,
    Reset,
}

pub enum Phase {
    /// The host connect is under way; the SYN waits here.
    Connecting { syn: Vec<u8> },
    /// Relaying; `gate` holds the sandbox's first bytes until decided.
    Open {
        handle: SocketHandle,
        to_host: Option<mpsc::Sender<Vec<u8>>>,
        from_host: mpsc::Receiver<FromHost>,
        pending: Option<(Vec<u8>, usize)>,
        /// The host side has ended (EOF or error): nothing more comes
        /// from it, and its closed channel is no reason to reset.
        host_done: bool,
        gate: Option<Vec<u8>>,
        tasks: [JoinHandle<()>; 2],
    },
}

pub struct Flow {
    pub dst: SocketAddr,
    pub phase: Phase,
    pub connect: Option<JoinHandle<()>>,
}

impl Drop for Flow {
    fn drop(&mut self) {
        if let Some(t) = &self.connect {
            t.abort();
        }
        if let Phase::Open { tasks, .. } = &self.phase {
            for t in tasks {
                t.abort();
            }
        }
    }
}

/// Starts the two host-side tasks of an open connection.
pub fn spawn_relay(
    stream: TcpStream,
    wake: Arc<Notify>,
) -> (
    mpsc::Sender<Vec<u8>>,
    mpsc::Receiver<FromHost>,
    [JoinHandle<()>; 2],
) {
    let _ = stream.set_nodelay(true);
    let (mut rd, mut wr) = stream.into_split();
    let (to_host, mut to_host_rx) = mpsc::channel::<Vec<u8>>(CHANNEL);
    let (from_host_tx, from_host) = mpsc::channel::<FromHost>(CHANNEL);
    let w1 = wake.clone();
    let reader = tokio::spawn(async move {
        let mut buf = vec![0u8; CHUNK];
        loop {
            let msg = match rd.read(&mut buf).await {
                Ok(0) => FromHost::Eof,
                Ok(n) => FromHost::Data(buf[..n].to_vec()),
                Err(_) => FromHost::Reset,
            };
            let last = !matches!(msg, FromHost::Data(_));
            if from_host_tx.send(msg).await.is_err() {
                return;
            }
            w1.notify_one();
            if last {
                return;
            }
        }
    });
    let writer = tokio::spawn(async move {
        while let Some(chunk) = to_host_rx.recv().await {
            if wr.write_all(&chunk).await.is_err() {
                return;
            }
            // Room in the channel again: the loop may read more.
            wake.notify_one();
        }
        let _ = wr.shutdown().await;
    });
    (to_host, from_host, [reader, writer])
}

/// What the gate decided about the sandbox's first bytes.
pub enum GateResult {
    Wait,
    /// Let them through; `Some(name)` is the TLS server name to check.
    Pass(Option<String>),
    Refuse,
}

pub fn judge(gate: &[u8]) -> GateResult {
    match sni::parse(gate) {
        Hello::Incomplete => GateResult::Wait,
        Hello::NotTls => GateResult::Pass(None),
        Hello::ClientHello(Some(n)) => GateResult::Pass(Some(n)),
        // TLS without a name the policy could check.
        Hello::ClientHello(None) => GateResult::Pass(Some(String::new())),
        Hello::Malformed => GateResult::Refuse,
    }
}

/// Moves bytes both ways for one open connection. Returns false once the
/// connection is over and its socket can go.
pub fn shuttle(sock: &mut tcp::Socket<'_>, phase: &mut Phase) -> bool {
    let Phase::Open {
        to_host,
        from_host,
        pending,
        host_done,
        gate,
        ..
    } = phase
    else {
        return true;
    };
    // Sandbox → host, unless the gate still holds the first bytes.
    if gate.is_none() {
        while sock.can_recv() {
            let Some(tx) = to_host.as_ref() else { break };
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
            // The sandbox closed its side: close the host's write side.
            to_host.take();
        }
    }
    // Host → sandbox.
    while !*host_done {
        if let Some((buf, off)) = pending {
            match sock.send_slice(&buf[*off..]) {
                Ok(n) => *off += n,
                Err(_) => break,
            }
            if *off < buf.len() {
                break;
            }
            *pending = None;
        }
        match from_host.try_recv() {
            Ok(FromHost::Data(d)) => *pending = Some((d, 0)),
            Ok(FromHost::Eof) => {
                *host_done = true;
                sock.close();
            }
            Ok(FromHost::Reset) | Err(mpsc::error::TryRecvError::Disconnected) => {
                *host_done = true;
                sock.abort();
            }
            Err(mpsc::error::TryRecvError::Empty) => break,
        }
    }
    !matches!(sock.state(), tcp::State::Closed | tcp::State::TimeWait)
}

/// Reads what the sandbox sent so far into the gate (bounded by one TLS
/// record).
pub fn fill_gate(sock: &mut tcp::Socket<'_>, gate: &mut Vec<u8>) {
    while sock.can_recv() && gate.len() < sni::MAX_HELLO {
        let room = sni::MAX_HELLO - gate.len();
        let got = sock
            .recv(|b| {
                let n = b.len().min(room);
                (n, b[..n].to_vec())
            })
            .unwrap_or_default();
        if got.is_empty() {
            break;
        }
        gate.extend_from_slice(&got);
    }
}
