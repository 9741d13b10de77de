//! One relayed TCP connection: a smoltcp socket on the sandbox's side, a
//! host socket on the other, and two bounded channels between them.
//!
//! The host connection is opened before the sandbox's SYN is answered, so
//! a refused or unreachable destination is a reset inside the sandbox,
//! not a connection that opens and then dies. The sandbox's first bytes
//! are held back (at most one TLS record) until its server name, if any,
//! has been checked.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use smoltcp::iface::SocketHandle;
use smoltcp::socket::tcp;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream, ReadHalf, WriteHalf};
use tokio::net::tcp::OwnedReadHalf;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, Notify};
use tokio::task::JoinHandle;

use crate::events::{Denial, DenialKind, Events};
use crate::intercept::Interception;
use crate::policy::Protocol;
use crate::secrets::StreamScan;
use crate::sni::{self, Hello};

/// Chunks in flight per direction; with `CHUNK` this bounds what a
/// connection holds outside the smoltcp buffers.
const CHANNEL: usize = 2;
pub const CHUNK: usize = 64 * 1024;

/// From the loop to the host side. When the forwarder holds secrets, the
/// gate's verdict comes first: `Intercept` (TLS to a secret host) or
/// `Scan` (plaintext, watched for placeholders); then the bytes.
pub enum ToHost {
    Data(Vec<u8>),
    Intercept(String),
    Scan,
}

/// What a connection's host side needs besides its socket.
#[derive(Clone)]
pub struct RelayCtx {
    pub interception: Option<Arc<Interception>>,
    pub events: Arc<Events>,
    pub dst: SocketAddr,
}

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
        to_host: Option<mpsc::Sender<ToHost>>,
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

/// Starts the two host-side tasks of an open connection. The reader
/// hands its half back when the writer learns the connection is to be
/// intercepted (the real host says nothing before the ClientHello, so
/// nothing has been read from it by then).
pub fn spawn_relay(
    stream: TcpStream,
    wake: Arc<Notify>,
    ctx: RelayCtx,
) -> (
    mpsc::Sender<ToHost>,
    mpsc::Receiver<FromHost>,
    [JoinHandle<()>; 2],
) {
    let _ = stream.set_nodelay(true);
    let (mut rd, wr) = stream.into_split();
    let (to_host, mut to_host_rx) = mpsc::channel::<ToHost>(CHANNEL);
    let (from_host_tx, from_host) = mpsc::channel::<FromHost>(CHANNEL);
    let (stop_tx, mut stop_rx) = oneshot::channel::<oneshot::Sender<OwnedReadHalf>>();
    let w1 = wake.clone();
    let reader_tx = from_host_tx.clone();
    let reader = tokio::spawn(async move {
        let mut armed = true;
        loop {
            // Read straight into the chunk that travels: no second copy.
            let mut buf = Vec::with_capacity(CHUNK);
            let msg = tokio::select! {
                biased;
                back = &mut stop_rx, if armed => {
                    match back {
                        Ok(back) => {
                            let _ = back.send(rd);
                            return;
                        }
                        Err(_) => {
                            armed = false;
                            continue;
                        }
                    }
                }
                r = rd.read_buf(&mut buf) => match r {
                    Ok(0) => FromHost::Eof,
                    Ok(_) => FromHost::Data(buf),
                    Err(_) => FromHost::Reset,
                },
            };
            let last = !matches!(msg, FromHost::Data(_));
            if reader_tx.send(msg).await.is_err() {
                return;
            }
            w1.notify_one();
            if last {
                return;
            }
        }
    });
    let writer = tokio::spawn(async move {
        let mut wr = wr;
        let mut next = to_host_rx.recv().await;
        let mut scan = None;
        match next {
            Some(ToHost::Intercept(host)) => {
                let r = intercept(host, stop_tx, wr, to_host_rx, &from_host_tx, &wake, &ctx).await;
                let end = if r.is_ok() {
                    FromHost::Eof
                } else {
                    FromHost::Reset
                };
                let _ = from_host_tx.send(end).await;
                wake.notify_one();
                return;
            }
            Some(ToHost::Scan) => {
                scan = Some(StreamScan::default());
                next = to_host_rx.recv().await;
            }
            _ => {}
        }
        // Not intercepted: the reader keeps its half, and only it may end
        // the sandbox's side.
        drop((stop_tx, from_host_tx));
        let mut reported: Vec<String> = Vec::new();
        while let Some(ToHost::Data(chunk)) = next {
            if let (Some(sc), Some(ix)) = (scan.as_mut(), ctx.interception.as_ref()) {
                report_plaintext(sc, ix, &chunk, &mut reported, &ctx);
            }
            if wr.write_all(&chunk).await.is_err() {
                return;
            }
            // Room in the channel again: the loop may read more.
            wake.notify_one();
            next = to_host_rx.recv().await;
        }
        let _ = wr.shutdown().await;
    });
    (to_host, from_host, [reader, writer])
}

/// Reports each placeholder found in plaintext the sandbox sends (once
/// per placeholder per connection); the bytes go on unchanged.
pub fn report_plaintext(
    scan: &mut StreamScan,
    ix: &Interception,
    chunk: &[u8],
    reported: &mut Vec<String>,
    ctx: &RelayCtx,
) {
    for s in scan.scan(ix.secrets(), chunk) {
        if reported.contains(&s.placeholder) {
            continue;
        }
        reported.push(s.placeholder.clone());
        let mut d = Denial::now(
            DenialKind::Secret,
            format!(
                "placeholder {} sent without TLS to a secret host: not substituted (its hosts: {})",
                s.placeholder,
                s.hosts().join(",")
            ),
        );
        d.protocol = Some(Protocol::Tcp);
        d.ip = Some(ctx.dst.ip());
        d.port = Some(ctx.dst.port());
        ctx.events.deny(d);
    }
}

/// Takes the host connection back from the reader and serves it through
/// the interception; the sandbox's bytes reach it through an in-memory
/// pipe (bounded like the channels).
async fn intercept(
    host: String,
    stop_tx: oneshot::Sender<oneshot::Sender<OwnedReadHalf>>,
    wr: tokio::net::tcp::OwnedWriteHalf,
    mut to_host_rx: mpsc::Receiver<ToHost>,
    from_host_tx: &mpsc::Sender<FromHost>,
    wake: &Notify,
    ctx: &RelayCtx,
) -> io::Result<()> {
    let ix = ctx
        .interception
        .clone()
        .ok_or_else(|| io::Error::other("no interception"))?;
    let (back_tx, back_rx) = oneshot::channel();
    stop_tx
        .send(back_tx)
        .map_err(|_| io::Error::other("host side gone"))?;
    let rd = back_rx
        .await
        .map_err(|_| io::Error::other("host side gone"))?;
    let stream = rd.reunite(wr).map_err(io::Error::other)?;
    let (ours, theirs) = tokio::io::duplex(CHUNK);
    let (pipe_r, pipe_w) = tokio::io::split(ours);
    let up = pump_up(&mut to_host_rx, pipe_w, wake);
    // Ends at the pipe's end: once `serve` is over and dropped its side,
    // after everything it wrote toward the sandbox was delivered.
    let down = pump_down(pipe_r, from_host_tx, wake);
    let work = ix.serve(&host, stream, theirs, &ctx.events, ctx.dst);
    tokio::pin!(up, down, work);
    let (mut up_done, mut down_done, mut result) = (false, false, None);
    loop {
        tokio::select! {
            r = &mut work, if result.is_none() => {
                if r.is_err() || down_done {
                    return r;
                }
                result = Some(r);
            }
            _ = &mut down, if !down_done => {
                down_done = true;
                if let Some(r) = result.take() {
                    return r;
                }
            }
            _ = &mut up, if !up_done => up_done = true,
        }
    }
}

async fn pump_up(rx: &mut mpsc::Receiver<ToHost>, mut w: WriteHalf<DuplexStream>, wake: &Notify) {
    while let Some(ToHost::Data(d)) = rx.recv().await {
        if w.write_all(&d).await.is_err() {
            return;
        }
        wake.notify_one();
    }
    let _ = w.shutdown().await;
}

async fn pump_down(mut r: ReadHalf<DuplexStream>, tx: &mpsc::Sender<FromHost>, wake: &Notify) {
    let mut buf = vec![0u8; CHUNK];
    while let Ok(n) = r.read(&mut buf).await {
        if n == 0 || tx.send(FromHost::Data(buf[..n].to_vec())).await.is_err() {
            return;
        }
        wake.notify_one();
    }
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
            permit.send(ToHost::Data(chunk));
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
