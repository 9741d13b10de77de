//! The engine side of the agent protocol: one Unix stream per sandbox,
//! multiplexed into operations by id. A writer task owns the socket's write
//! half (frames queue in a channel and are flushed in batches); a reader
//! task routes every incoming frame to its operation's channel. Data the
//! engine receives is acknowledged with credits only once it is consumed, so
//! a slow consumer slows the agent instead of growing buffers here.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use lockbox_protocol::{
    read_frame, write_frame, Frame, FrameError, FrameKind, Message, MAX_PAYLOAD, PROTOCOL_VERSION,
};
use tokio::io::{AsyncWriteExt, BufWriter};
use tokio::sync::mpsc;

use crate::error::{EngineError, Result};

/// What an operation receives.
#[derive(Debug)]
pub enum Incoming {
    Control(Message),
    Data(u8, Vec<u8>),
    Eof(u8),
    Credit(u8, u32),
    /// The connection is gone; nothing more will arrive.
    Closed(EngineError),
}

pub(crate) struct Shared {
    tx: mpsc::UnboundedSender<Frame>,
    routes: Mutex<HashMap<u32, mpsc::UnboundedSender<Incoming>>>,
    next_id: AtomicU32,
    closed: AtomicBool,
    /// Set to true to end both connection tasks.
    stop: tokio::sync::watch::Sender<bool>,
    /// Bytes the agent sent per (operation, stream) not yet given back as
    /// credit. An honest agent never has more than its window in flight;
    /// one that does (in a microVM, guest root can replace the agent) is
    /// cut off instead of buffered: operations' queues are unbounded.
    unacked: Mutex<HashMap<(u32, u8), u64>>,
    /// Frames queued for the agent and not yet written. Each data frame
    /// the agent sends for an operation nobody reads is acknowledged with
    /// a credit frame: an agent that floods tiny frames and never reads its
    /// socket would grow this queue without end (about 10 bytes of memory
    /// per byte it sends). Past [`MAX_QUEUED_FRAMES`] it is cut off.
    queued: Arc<std::sync::atomic::AtomicUsize>,
}

/// An honest agent reads its socket while it writes: a million frames
/// waiting for it means it stopped reading (about 100 MB held by then).
const MAX_QUEUED_FRAMES: usize = 1 << 20;

/// Where to cut a data payload so that the session marker of a microVM's
/// port (lockbox_protocol::reset) is not whole on the wire: its middle.
/// Data the host writes (a file, stdin) often comes from elsewhere; a
/// marker in it would make the guest start a new agent session inside it,
/// and the bytes after it would be taken as the host's own requests. A
/// frame header between the two halves breaks it: headers start with the
/// length's high byte, 0 below 16 MiB, which no magic byte is. The agent
/// joins a stream's data frames, so the bytes arrive unchanged.
fn marker_cut(payload: &[u8]) -> Option<usize> {
    const M: [u8; 16] = lockbox_protocol::reset::MARKER_MAGIC;
    // Horspool: the magic's bytes are distinct, so most windows move on
    // by 16 after one comparison (every data byte the host sends is
    // scanned, on both backends).
    const SHIFT: [u8; 256] = {
        let mut t = [16u8; 256];
        let mut j = 0;
        while j < 15 {
            t[M[j] as usize] = (15 - j) as u8;
            j += 1;
        }
        t
    };
    let mut i = 0;
    while i + M.len() <= payload.len() {
        let last = payload[i + 15];
        if last == M[15] && payload[i..i + 16] == M {
            return Some(i + M.len() / 2);
        }
        i += usize::from(SHIFT[usize::from(last)]);
    }
    None
}

/// Whether an operation id could begin the session marker in a frame
/// header (its bytes follow the header's kind and stream, which no magic
/// byte equals): such ids are skipped, so a payload can never complete
/// a marker that a header began.
fn id_may_begin_marker(id: u32) -> bool {
    id.to_be_bytes()
        .contains(&lockbox_protocol::reset::MARKER_MAGIC[0])
}

impl Shared {
    pub(crate) fn send(&self, f: Frame) -> Result<()> {
        if self.closed.load(Ordering::Acquire) {
            return Err(EngineError::unavailable("the sandbox is not running"));
        }
        // Refused here, before the wire: a frame the agent cannot take
        // would otherwise end the writer and with it every operation of
        // the sandbox.
        if f.payload.len() > MAX_PAYLOAD {
            return Err(EngineError::invalid(format!(
                "request of {} bytes is larger than the {MAX_PAYLOAD}-byte protocol limit \
                 (arguments, environment and paths together)",
                f.payload.len()
            )));
        }
        if matches!(f.kind, FrameKind::Credit) {
            if let (Ok(n), Ok(mut u)) = (f.credit_bytes(), self.unacked.lock()) {
                if let Some(left) = u.get_mut(&(f.id, f.stream)) {
                    *left = left.saturating_sub(n.into());
                    if *left == 0 {
                        u.remove(&(f.id, f.stream));
                    }
                }
            }
        }
        if matches!(f.kind, FrameKind::Data) {
            if let Some(cut) = marker_cut(&f.payload) {
                let mut head = f;
                let tail = head.payload.split_off(cut);
                let (id, stream) = (head.id, head.stream);
                self.send(head)?;
                return self.send(Frame::data(id, stream, tail));
            }
        }
        // Counted before it is queued, so the writer never takes it first.
        self.queued.fetch_add(1, Ordering::AcqRel);
        self.tx.send(f).map_err(|_| {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            EngineError::unavailable("the sandbox is not running")
        })
    }

    /// Counts `n` bytes received on (id, stream); false once the agent has
    /// more in flight than its window allows.
    fn note_data(&self, id: u32, stream: u8, n: usize) -> bool {
        let Ok(mut u) = self.unacked.lock() else {
            return false;
        };
        let left = u.entry((id, stream)).or_insert(0);
        *left = left.saturating_add(n as u64);
        *left <= u64::from(lockbox_protocol::INITIAL_WINDOW)
    }
}

/// A connected, handshaken agent connection. Cheap to clone.
#[derive(Clone)]
pub struct AgentClient {
    shared: Arc<Shared>,
    pub agent_pid: u32,
    /// File requests go out as this user spec instead of the sandbox's
    /// configured user (see `as_user`).
    as_user: Option<Arc<str>>,
}

/// One operation: its id and the channel its frames arrive on. Dropping it
/// unregisters the id; later frames for it are acknowledged and discarded.
pub struct Op {
    pub id: u32,
    pub(crate) shared: Arc<Shared>,
    pub(crate) rx: mpsc::UnboundedReceiver<Incoming>,
    as_user: Option<Arc<str>>,
}

impl Drop for Op {
    fn drop(&mut self) {
        if let Ok(mut r) = self.shared.routes.lock() {
            r.remove(&self.id);
        }
    }
}

impl Op {
    pub fn send(&self, msg: &Message) -> Result<()> {
        match &self.as_user {
            Some(user) if msg.is_file_request() => {
                let wrapped = Message::AsUser {
                    user: user.to_string(),
                    request: Box::new(msg.clone()),
                };
                self.shared.send(Frame::control(self.id, &wrapped))
            }
            _ => self.shared.send(Frame::control(self.id, msg)),
        }
    }

    pub async fn recv(&mut self) -> Incoming {
        self.rx.recv().await.unwrap_or_else(|| {
            Incoming::Closed(EngineError::unavailable(
                "the sandbox agent connection closed",
            ))
        })
    }

    /// Waits for the next control message, skipping nothing else: a data
    /// frame here is a protocol violation by the agent.
    pub async fn recv_control(&mut self) -> Result<Message> {
        match self.recv().await {
            Incoming::Control(Message::Error(e)) => Err(e.into()),
            Incoming::Control(m) => Ok(m),
            Incoming::Closed(e) => Err(e),
            other => Err(EngineError::internal(format!(
                "agent sent {other:?} before replying"
            ))),
        }
    }
}

/// Connects to `<dir>/agent.sock` through `/proc/self/fd/<dirfd>/`, so a
/// long state path never hits the 108-byte `sun_path` limit, and without
/// changing the process's working directory.
pub fn connect_socket(dir: &Path) -> Result<std::os::unix::net::UnixStream> {
    let d: OwnedFd = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags_dir()
        .open(dir)
        .map_err(|e| EngineError::io(format!("open {}", dir.display()), e))?
        .into();
    let short = format!("/proc/self/fd/{}/agent.sock", d.as_raw_fd());
    let s = std::os::unix::net::UnixStream::connect(&short).map_err(|e| {
        let mut err = EngineError::io(format!("connect to agent of {}", dir.display()), e);
        if matches!(
            err.code,
            lockbox_protocol::ErrorCode::NotFound | lockbox_protocol::ErrorCode::Internal
        ) {
            err.code = lockbox_protocol::ErrorCode::Unavailable;
        }
        err
    })?;
    drop(d);
    Ok(s)
}

trait DirOpen {
    fn custom_flags_dir(&mut self) -> &mut Self;
}
impl DirOpen for std::fs::OpenOptions {
    fn custom_flags_dir(&mut self) -> &mut Self {
        use std::os::unix::fs::OpenOptionsExt;
        self.custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
    }
}

impl AgentClient {
    /// Connects and performs the Hello handshake. Must run inside a tokio
    /// runtime (it spawns the reader and writer tasks).
    pub async fn connect(dir: &Path, expect_sandbox: &str) -> Result<AgentClient> {
        Self::handshake(connect_socket(dir)?, expect_sandbox).await
    }

    /// The Hello handshake on a connected socket (a VM's, after its
    /// session reset).
    pub async fn handshake(
        std_sock: std::os::unix::net::UnixStream,
        expect_sandbox: &str,
    ) -> Result<AgentClient> {
        std_sock
            .set_nonblocking(true)
            .map_err(|e| EngineError::io("socket", e))?;
        let sock =
            tokio::net::UnixStream::from_std(std_sock).map_err(|e| EngineError::io("socket", e))?;
        let (mut rd, wr) = sock.into_split();
        let (tx, rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            tx,
            routes: Mutex::new(HashMap::new()),
            next_id: AtomicU32::new(1),
            closed: AtomicBool::new(false),
            stop: tokio::sync::watch::channel(false).0,
            unacked: Mutex::new(HashMap::new()),
            queued: Arc::new(std::sync::atomic::AtomicUsize::new(0)),
        });

        // Handshake before the tasks start, on the raw halves.
        let mut wr = BufWriter::with_capacity(lockbox_protocol::DATA_CHUNK + 64, wr);
        write_frame(
            &mut wr,
            &Frame::control(
                0,
                &Message::Hello {
                    version: PROTOCOL_VERSION,
                },
            ),
        )
        .await?;
        wr.flush()
            .await
            .map_err(|e| EngineError::io("agent handshake", e))?;
        let ack = read_frame(&mut rd).await?;
        let agent_pid = match ack.message()? {
            Message::HelloAck {
                version,
                agent_pid,
                sandbox,
            } => {
                if version != PROTOCOL_VERSION {
                    return Err(EngineError::unsupported(format!(
                        "agent speaks protocol {version}, engine speaks {PROTOCOL_VERSION}"
                    )));
                }
                if !expect_sandbox.is_empty() && sandbox != expect_sandbox {
                    return Err(EngineError::internal(format!(
                        "agent socket belongs to sandbox {sandbox:?}, not {expect_sandbox:?}"
                    )));
                }
                agent_pid
            }
            Message::Error(e) => return Err(e.into()),
            other => {
                return Err(EngineError::internal(format!(
                    "agent answered the handshake with {other:?}"
                )))
            }
        };

        tokio::spawn(write_loop(
            wr,
            rx,
            shared.stop.subscribe(),
            shared.queued.clone(),
        ));
        tokio::spawn(read_loop(rd, shared.clone()));
        Ok(AgentClient {
            shared,
            agent_pid,
            as_user: None,
        })
    }

    /// Closes the connection; pending and future operations fail with
    /// `unavailable`.
    pub fn close(&self) {
        self.shared.stop.send_replace(true);
    }

    pub fn is_closed(&self) -> bool {
        self.shared.closed.load(Ordering::Acquire)
    }

    /// Registers a new operation id.
    pub fn op(&self) -> Result<Op> {
        if self.is_closed() {
            return Err(EngineError::unavailable("the sandbox is not running"));
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let mut id;
        {
            let mut r = self
                .shared
                .routes
                .lock()
                .map_err(|_| EngineError::internal("route table poisoned"))?;
            loop {
                id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
                if id != 0 && !id_may_begin_marker(id) && !r.contains_key(&id) {
                    break;
                }
            }
            r.insert(id, tx);
        }
        Ok(Op {
            id,
            shared: self.shared.clone(),
            rx,
            as_user: self.as_user.clone(),
        })
    }

    /// The same connection, with every file request acting as `user` (a
    /// spec the agent resolves in the sandbox's root) instead of its
    /// configured user: an explicit opt-in (e.g. root), since a file call
    /// as a more privileged user follows links a less privileged one
    /// planted.
    pub fn as_user(&self, user: &str) -> AgentClient {
        AgentClient {
            as_user: Some(user.into()),
            ..self.clone()
        }
    }

    /// Sends a request and waits for its single reply.
    pub async fn call(&self, msg: &Message) -> Result<Message> {
        let mut op = self.op()?;
        op.send(msg)?;
        op.recv_control().await
    }

    pub(crate) fn shared(&self) -> Arc<Shared> {
        self.shared.clone()
    }
}

async fn write_loop(
    mut wr: BufWriter<tokio::net::unix::OwnedWriteHalf>,
    mut rx: mpsc::UnboundedReceiver<Frame>,
    mut stop: tokio::sync::watch::Receiver<bool>,
    queued: Arc<std::sync::atomic::AtomicUsize>,
) {
    loop {
        let f = tokio::select! {
            f = rx.recv() => match f { Some(f) => f, None => break },
            _ = stop.wait_for(|s| *s) => break,
        };
        queued.fetch_sub(1, Ordering::AcqRel);
        if !write_one(&mut wr, &f).await {
            return;
        }
        // Batch: only flush when nothing else is queued.
        while let Ok(f) = rx.try_recv() {
            queued.fetch_sub(1, Ordering::AcqRel);
            if !write_one(&mut wr, &f).await {
                return;
            }
        }
        if wr.flush().await.is_err() {
            return;
        }
    }
    let _ = wr.shutdown().await;
}

/// Writes one frame; false once the socket is unusable. An oversized frame
/// (`Shared::send` refuses them, so only a bug gets here) is dropped
/// before any byte of it is written, which keeps the stream in step.
async fn write_one(wr: &mut BufWriter<tokio::net::unix::OwnedWriteHalf>, f: &Frame) -> bool {
    match write_frame(wr, f).await {
        Ok(()) => true,
        Err(FrameError::Protocol(_)) => true,
        Err(_) => false,
    }
}

async fn read_loop(mut rd: tokio::net::unix::OwnedReadHalf, shared: Arc<Shared>) {
    let mut stop = shared.stop.subscribe();
    let reason = loop {
        let next = tokio::select! {
            f = read_frame(&mut rd) => f,
            _ = stop.wait_for(|s| *s) => break EngineError::unavailable("the sandbox connection was closed"),
        };
        let f = match next {
            Ok(f) => f,
            // A helper killed mid-conversation resets the connection: that
            // is the sandbox stopping too, not a transport fault to report.
            Err(FrameError::Closed) => {
                break EngineError::unavailable("the sandbox stopped (agent connection closed)")
            }
            Err(FrameError::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
                ) =>
            {
                break EngineError::unavailable("the sandbox stopped (agent connection closed)")
            }
            Err(e) => break EngineError::from(e),
        };
        let incoming = match f.kind {
            FrameKind::Control => match f.message() {
                Ok(m) => Incoming::Control(m),
                Err(e) => break EngineError::from(e),
            },
            FrameKind::Data => {
                if !shared.note_data(f.id, f.stream, f.payload.len()) {
                    break EngineError::internal(format!(
                        "agent protocol violation: more than its {}-byte window in flight on operation {} stream {}",
                        lockbox_protocol::INITIAL_WINDOW,
                        f.id,
                        f.stream
                    ));
                }
                Incoming::Data(f.stream, f.payload)
            }
            FrameKind::Eof => Incoming::Eof(f.stream),
            FrameKind::Credit => match f.credit_bytes() {
                Ok(n) => Incoming::Credit(f.stream, n),
                Err(e) => break EngineError::from(e),
            },
        };
        let route = shared
            .routes
            .lock()
            .ok()
            .and_then(|r| r.get(&f.id).cloned());
        let undelivered = match route {
            Some(tx) => tx.send(incoming).err().map(|e| e.0),
            None => Some(incoming),
        };
        // Nobody wants these bytes any more: acknowledge them so the agent
        // never waits for credit that would never come.
        if let Some(Incoming::Data(stream, bytes)) = undelivered {
            if shared.queued.load(Ordering::Acquire) > MAX_QUEUED_FRAMES {
                break EngineError::internal(format!(
                    "agent protocol violation: {MAX_QUEUED_FRAMES} frames wait for it to read"
                ));
            }
            let _ = shared.send(Frame::credit(f.id, stream, bytes.len() as u32));
        }
    };
    shared.closed.store(true, Ordering::Release);
    shared.stop.send_replace(true);
    let routes: Vec<_> = shared
        .routes
        .lock()
        .map(|mut r| r.drain().map(|(_, tx)| tx).collect())
        .unwrap_or_default();
    for tx in routes {
        let _ = tx.send(Incoming::Closed(reason.clone()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lockbox_protocol::{ErrorCode, ExecRequest};

    /// A minimal agent on a real socket: answers the handshake and every
    /// Ping, and records the size of every frame it receives.
    async fn fake_agent(l: tokio::net::UnixListener, seen: Arc<Mutex<Vec<usize>>>) {
        let (s, _) = l.accept().await.unwrap();
        let (mut r, w) = s.into_split();
        let mut w = BufWriter::new(w);
        while let Ok(f) = read_frame(&mut r).await {
            seen.lock().unwrap().push(f.payload.len());
            let reply = match f.message() {
                Ok(Message::Hello { .. }) => Message::HelloAck {
                    version: PROTOCOL_VERSION,
                    agent_pid: 1,
                    sandbox: "fake".into(),
                },
                _ => Message::Ok,
            };
            write_frame(&mut w, &Frame::control(f.id, &reply))
                .await
                .unwrap();
            w.flush().await.unwrap();
        }
    }

    #[tokio::test]
    async fn oversized_request_is_invalid_and_the_connection_lives() {
        let dir = tempfile::tempdir().unwrap();
        let l = tokio::net::UnixListener::bind(dir.path().join("agent.sock")).unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        tokio::spawn(fake_agent(l, seen.clone()));
        let c = AgentClient::connect(dir.path(), "fake").await.unwrap();

        let big = ExecRequest {
            argv: vec!["echo".into(), "x".repeat(MAX_PAYLOAD + 1)],
            ..Default::default()
        };
        let e = c.call(&Message::Exec(big)).await.unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidArgument, "{e}");
        // The same connection still answers, and the agent never saw a
        // byte of the refused request.
        assert!(matches!(c.call(&Message::Ping).await, Ok(Message::Ok)));
        assert!(!c.is_closed());
        let sizes = seen.lock().unwrap().clone();
        assert_eq!(sizes.len(), 2, "{sizes:?}");
        assert!(sizes.iter().all(|n| *n <= MAX_PAYLOAD));

        // Control: a request just under the limit does go out.
        let fits = ExecRequest {
            argv: vec!["echo".into(), "x".repeat(MAX_PAYLOAD - 4096)],
            ..Default::default()
        };
        assert!(matches!(
            c.call(&Message::Exec(fits)).await,
            Ok(Message::Ok)
        ));
        assert!(seen.lock().unwrap().iter().any(|n| *n > MAX_PAYLOAD - 4096));
    }

    /// Data the host writes into a sandbox (a file, stdin) may hold a
    /// microVM's session marker; on the wire it must never be whole (the
    /// guest would start a new agent session inside the data and take the
    /// bytes after it as the host's requests), and the agent must still
    /// get the data unchanged. Control: the same payload in one frame, as
    /// it went before, does carry a whole marker.
    #[tokio::test]
    async fn a_session_marker_in_data_is_never_whole_on_the_wire() {
        use lockbox_protocol::reset::{encode, Finder, Found, MARKER_MAGIC};
        use tokio::io::AsyncReadExt;
        let dir = tempfile::tempdir().unwrap();
        let l = tokio::net::UnixListener::bind(dir.path().join("agent.sock")).unwrap();
        // The agent keeps the raw bytes until the stream's Eof frame is in
        // them: no sleep, whatever the machine's load.
        let agent = tokio::spawn(async move {
            let (mut r, _w) = accept_handshake(l).await;
            let mut wire = Vec::new();
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = r.read(&mut buf).await.unwrap();
                assert!(n > 0, "the connection ended before the stream's Eof");
                wire.extend_from_slice(&buf[..n]);
                let mut rd = &wire[..];
                let mut eof = false;
                while let Ok(f) = read_frame(&mut rd).await {
                    eof |= f.kind == FrameKind::Eof;
                }
                if eof {
                    return wire;
                }
            }
        });
        let c = AgentClient::connect(dir.path(), "fake").await.unwrap();
        let marker = encode(&MARKER_MAGIC, b"0123456789abcdef");
        let mut payload = marker.to_vec();
        payload.extend_from_slice(b"after a marker at the start;");
        payload.extend_from_slice(&marker);
        payload.extend_from_slice(&MARKER_MAGIC); // two magics back to back
        payload.extend_from_slice(b"tail, then one at the very end");
        payload.extend_from_slice(&MARKER_MAGIC);
        let op = c.op().unwrap();
        c.shared
            .send(Frame::data(op.id, 1, payload.clone()))
            .unwrap();
        c.shared.send(Frame::eof(op.id, 1)).unwrap();
        // An operation id whose bytes could begin a magic in a header is
        // never handed out (ids 0x900..=0x9ff hold a 0x09 byte).
        assert!(id_may_begin_marker(0x0900) && !id_may_begin_marker(0x0a00));
        c.shared.next_id.store(0x0900, Ordering::Relaxed);
        assert_eq!(c.op().unwrap().id, 0x0a00);
        let wire = agent.await.unwrap();
        c.close();

        let whole = |bytes: &[u8]| {
            !matches!(Finder::new(MARKER_MAGIC).feed(bytes), Found::Nothing)
                || bytes.windows(16).any(|w| w == MARKER_MAGIC)
        };
        let mut before = Frame::data(op.id, 1, payload.clone()).header().to_vec();
        before.extend_from_slice(&payload);
        assert!(
            whole(&before),
            "control: one frame carries the marker whole"
        );
        assert!(!whole(&wire), "a whole session marker went out on the wire");
        // The agent's view: the data frames of the stream, joined.
        let mut rd = &wire[..];
        let mut got = Vec::new();
        while let Ok(f) = read_frame(&mut rd).await {
            if f.kind == FrameKind::Data && f.id == op.id {
                got.extend_from_slice(&f.payload);
            }
        }
        assert_eq!(got, payload, "the data changed on the way");
    }

    /// The skipping search finds the first magic exactly where a naive
    /// one does, at every offset and with magic bytes around it.
    #[test]
    fn marker_cut_finds_what_a_naive_search_finds() {
        use lockbox_protocol::reset::MARKER_MAGIC as M;
        for len in 0..80usize {
            for at in 0..=len.saturating_sub(16) {
                for noise in [0u8, 0x09, 0x90, 0x8e] {
                    let mut v = vec![noise; len];
                    if len >= 16 {
                        v[at..at + 16].copy_from_slice(&M);
                    }
                    let naive = v.windows(16).position(|w| w == M).map(|p| p + 8);
                    assert_eq!(marker_cut(&v), naive, "len {len} at {at} noise {noise:#x}");
                }
            }
        }
    }

    /// Accepts one connection and answers its handshake as an agent would.
    async fn accept_handshake(
        l: tokio::net::UnixListener,
    ) -> (
        tokio::net::unix::OwnedReadHalf,
        BufWriter<tokio::net::unix::OwnedWriteHalf>,
    ) {
        let (s, _) = l.accept().await.unwrap();
        let (mut r, w) = s.into_split();
        let mut w = BufWriter::new(w);
        let hello = read_frame(&mut r).await.unwrap();
        let ack = Message::HelloAck {
            version: PROTOCOL_VERSION,
            agent_pid: 1,
            sandbox: "fake".into(),
        };
        write_frame(&mut w, &Frame::control(hello.id, &ack))
            .await
            .unwrap();
        w.flush().await.unwrap();
        (r, w)
    }

    /// A hostile agent (in a microVM, guest root can replace it): answers
    /// the handshake, then sends `total` bytes of stdout for the first
    /// request's id without waiting for any credit.
    async fn flooding_agent(l: tokio::net::UnixListener, total: usize) {
        let (mut r, mut w) = accept_handshake(l).await;
        let req = read_frame(&mut r).await.unwrap();
        // Keep reading (credits) so only the window is at stake.
        tokio::spawn(async move { while read_frame(&mut r).await.is_ok() {} });
        let mut sent = 0;
        while sent < total {
            let f = Frame::data(req.id, 1, vec![b'x'; lockbox_protocol::DATA_CHUNK]);
            if write_frame(&mut w, &f).await.is_err() {
                return;
            }
            sent += lockbox_protocol::DATA_CHUNK;
        }
        let _ = w.flush().await;
        std::future::pending::<()>().await;
    }

    /// What an operation that is not being read holds after `total` bytes
    /// were pushed at it, and whether the connection is still up.
    async fn buffered_after_flood(total: usize) -> (usize, bool) {
        let dir = tempfile::tempdir().unwrap();
        let l = tokio::net::UnixListener::bind(dir.path().join("agent.sock")).unwrap();
        tokio::spawn(flooding_agent(l, total));
        let c = AgentClient::connect(dir.path(), "fake").await.unwrap();
        let mut op = c.op().unwrap();
        op.send(&Message::Ping).unwrap();
        // Let the flood arrive (or the engine cut it off).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        let mut last = usize::MAX;
        loop {
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            let n = op.rx.len();
            if c.is_closed() || n == last || std::time::Instant::now() > deadline {
                break;
            }
            last = n;
        }
        let mut bytes = 0;
        while let Ok(m) = op.rx.try_recv() {
            if let Incoming::Data(_, b) = m {
                bytes += b.len();
            }
        }
        (bytes, c.is_closed())
    }

    // The agent may have at most its window (INITIAL_WINDOW per stream)
    // in flight; a hostile one that ignores it must not make the host
    // buffer without bound: the connection is cut as a protocol
    // violation. Control: an agent that stays within the window is
    // delivered all of it and the connection lives.
    #[tokio::test]
    async fn an_agent_past_its_window_is_cut_off_not_buffered() {
        let window = lockbox_protocol::INITIAL_WINDOW as usize;
        let (held, closed) = buffered_after_flood(window).await;
        assert_eq!(held, window, "control: a full window is delivered");
        assert!(
            !closed,
            "control: an agent within its window keeps its connection"
        );

        let (held, closed) = buffered_after_flood(8 * window).await;
        assert!(
            held <= window,
            "the host buffered {} MiB for an unread operation (window {} MiB)",
            held >> 20,
            window >> 20
        );
        assert!(closed, "an agent past its window keeps its connection");
    }

    /// A hostile agent that floods one-byte data frames for an operation
    /// that does not exist and never reads its socket: each is answered
    /// with a credit frame that cannot be written.
    async fn deaf_flooding_agent(l: tokio::net::UnixListener, frames: usize) {
        let (_r, mut w) = accept_handshake(l).await;
        for _ in 0..frames {
            if write_frame(&mut w, &Frame::data(999, 1, vec![b'x']))
                .await
                .is_err()
            {
                return;
            }
        }
        let _ = w.flush().await;
        // Never reads: hold the socket open.
        std::future::pending::<()>().await;
    }

    // The credits owed to such an agent must not queue without bound:
    // past MAX_QUEUED_FRAMES the connection is cut. Control: the same
    // agent sending fewer frames than the bound keeps its connection (the
    // credits wait, bounded).
    //
    // Sampled every 300 ms. Past the bound, until the cut (or the queue
    // past it, or 180 s: a debug build floods slowly on a loaded machine);
    // below it, until the queue has held still for ten samples: one still
    // sample was taken for the end of the flood, and a loaded machine
    // stalls the flood longer than that (CI-GUARD saw a return at 912298
    // frames, neither cut nor done).
    #[tokio::test]
    async fn an_agent_that_never_reads_is_cut_off_not_queued_for() {
        async fn run(frames: usize) -> (bool, usize) {
            let dir = tempfile::tempdir().unwrap();
            let l = tokio::net::UnixListener::bind(dir.path().join("agent.sock")).unwrap();
            tokio::spawn(deaf_flooding_agent(l, frames));
            let c = AgentClient::connect(dir.path(), "fake").await.unwrap();
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(180);
            let (mut last, mut still) = (usize::MAX, 0);
            loop {
                tokio::time::sleep(std::time::Duration::from_millis(300)).await;
                let q = c.shared.queued.load(Ordering::Acquire);
                still = if q == last && q > 0 { still + 1 } else { 0 };
                let done = if frames > MAX_QUEUED_FRAMES {
                    q > MAX_QUEUED_FRAMES + 1
                } else {
                    still >= 10
                };
                if c.is_closed() || done || std::time::Instant::now() > deadline {
                    return (c.is_closed(), q);
                }
                last = q;
            }
        }
        let (closed, queued) = run(MAX_QUEUED_FRAMES / 4).await;
        assert!(!closed, "control: below the bound the connection lives");
        assert!(queued > 0, "control: credits did queue ({queued})");
        let (closed, queued) = run(2 * MAX_QUEUED_FRAMES).await;
        assert!(
            closed && queued <= MAX_QUEUED_FRAMES + 1,
            "an agent that never reads: closed={closed}, {queued} frames queued for it"
        );
    }
}
