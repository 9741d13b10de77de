//! Byte streams of one operation, on top of the multiplexed connection.
//!
//! A demux task owns an operation's incoming channel and splits it into the
//! data streams (read by `StreamReader`s), the credits for the stream the
//! engine writes (used by `StreamWriter`), and control messages. A reader
//! grants credit back only for bytes its consumer has taken, which is what
//! carries backpressure from the host all the way to the process inside.

use std::sync::Arc;

use lockbox_protocol::{Frame, Message, DATA_CHUNK, INITIAL_WINDOW};
use tokio::sync::{mpsc, Mutex};

use crate::client::{Incoming, Op, Shared};
use crate::error::{EngineError, Result};

#[derive(Debug)]
enum Chunk {
    Data(Vec<u8>),
    Eof,
    Err(EngineError),
}

/// The pieces of a demultiplexed operation.
pub(crate) struct Demuxed {
    pub id: u32,
    pub shared: Arc<Shared>,
    pub control: mpsc::UnboundedReceiver<Result<Message>>,
    /// Readers for the requested outgoing-from-agent streams, in order.
    pub readers: Vec<StreamReader>,
    pub credits: mpsc::UnboundedReceiver<Result<u32>>,
}

/// Splits `op` into streams. `streams` are the data streams the agent will
/// send (and end with Eof). The task ends once a reply other than `Started`
/// has arrived and every stream has ended, on an `Error`, or when the
/// connection closes.
pub(crate) fn demux(op: Op, streams: &[u8]) -> Demuxed {
    demux_drain(op, streams, None)
}

/// Bytes of an abandoned file stream the engine still acknowledges. Past
/// this, nothing more is acknowledged: an agent streaming a device that
/// never ends (a file swapped for `/dev/zero`) stalls on its window
/// instead of streaming into the void for ever. Files are drained below
/// it, so an abandoned read of an ordinary file still ends.
pub(crate) const FILE_DRAIN_LIMIT: u64 = 16 << 20;

/// `demux`, but once a reader is gone, at most `drain_limit` bytes (all
/// streams together) are still acknowledged; `None` drains for ever, which
/// suits processes (they end, or the caller kills them).
pub(crate) fn demux_drain(op: Op, streams: &[u8], drain_limit: Option<u64>) -> Demuxed {
    let (ctl_tx, ctl_rx) = mpsc::unbounded_channel();
    let (cred_tx, cred_rx) = mpsc::unbounded_channel();
    let mut readers = Vec::new();
    let mut outs: Vec<(u8, Option<mpsc::UnboundedSender<Chunk>>)> = Vec::new();
    for &s in streams {
        let (tx, rx) = mpsc::unbounded_channel();
        readers.push(StreamReader::new(op.shared.clone(), op.id, s, rx));
        outs.push((s, Some(tx)));
    }
    let id = op.id;
    let shared = op.shared.clone();
    tokio::spawn(run_demux(op, ctl_tx, cred_tx, outs, drain_limit));
    Demuxed {
        id,
        shared,
        control: ctl_rx,
        readers,
        credits: cred_rx,
    }
}

async fn run_demux(
    mut op: Op,
    ctl: mpsc::UnboundedSender<Result<Message>>,
    cred: mpsc::UnboundedSender<Result<u32>>,
    mut outs: Vec<(u8, Option<mpsc::UnboundedSender<Chunk>>)>,
    drain_limit: Option<u64>,
) {
    let mut replied = false;
    let mut drained = 0u64;
    loop {
        if replied && outs.iter().all(|(_, tx)| tx.is_none()) {
            return;
        }
        match op.recv().await {
            Incoming::Control(Message::Error(e)) => {
                return fail_all(&mut outs, &cred, &ctl, EngineError::from(e))
            }
            Incoming::Control(m) => {
                if !matches!(m, Message::Started { .. }) {
                    replied = true;
                }
                let _ = ctl.send(Ok(m));
            }
            Incoming::Data(s, bytes) => {
                let n = bytes.len() as u32;
                let sent = outs
                    .iter()
                    .find(|(st, _)| *st == s)
                    .and_then(|(_, tx)| tx.as_ref())
                    .map(|tx| tx.send(Chunk::Data(bytes)).is_ok())
                    .unwrap_or(false);
                if !sent {
                    // Unread or unexpected: drop it but keep the agent
                    // moving, up to the drain limit.
                    drained += n as u64;
                    let keep_going = match drain_limit {
                        None => true,
                        Some(l) => drained <= l,
                    };
                    if keep_going {
                        let _ = op.shared.send(Frame::credit(op.id, s, n));
                    }
                }
            }
            Incoming::Eof(s) => {
                if let Some((_, tx)) = outs.iter_mut().find(|(st, _)| *st == s) {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(Chunk::Eof);
                    }
                }
            }
            Incoming::Credit(_, n) => {
                let _ = cred.send(Ok(n));
            }
            Incoming::Closed(e) => return fail_all(&mut outs, &cred, &ctl, e),
        }
    }
}

/// Ends an operation with `e`: every open output stream, the credit
/// channel and the control channel see the same error.
fn fail_all(
    outs: &mut [(u8, Option<mpsc::UnboundedSender<Chunk>>)],
    cred: &mpsc::UnboundedSender<Result<u32>>,
    ctl: &mpsc::UnboundedSender<Result<Message>>,
    e: EngineError,
) {
    for (_, tx) in outs.iter_mut() {
        if let Some(tx) = tx.take() {
            let _ = tx.send(Chunk::Err(e.clone()));
        }
    }
    let _ = cred.send(Err(e.clone()));
    let _ = ctl.send(Err(e));
}

struct ReaderState {
    rx: mpsc::UnboundedReceiver<Chunk>,
    buf: Vec<u8>,
    pos: usize,
    end: Option<Result<()>>,
}

/// The read side of one stream (exec stdout/stderr, a file's contents).
/// Safe to share; reads are serialized. Dropping a pending `read` loses no
/// bytes.
pub struct StreamReader {
    shared: Arc<Shared>,
    id: u32,
    stream: u8,
    state: Mutex<ReaderState>,
}

impl StreamReader {
    fn new(shared: Arc<Shared>, id: u32, stream: u8, rx: mpsc::UnboundedReceiver<Chunk>) -> Self {
        StreamReader {
            shared,
            id,
            stream,
            state: Mutex::new(ReaderState {
                rx,
                buf: Vec::new(),
                pos: 0,
                end: None,
            }),
        }
    }

    /// Copies up to `out.len()` bytes; waits for at least one. 0 = EOF.
    pub async fn read(&self, out: &mut [u8]) -> Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        let mut st = self.state.lock().await;
        loop {
            if st.pos < st.buf.len() {
                let n = out.len().min(st.buf.len() - st.pos);
                out[..n].copy_from_slice(&st.buf[st.pos..st.pos + n]);
                st.pos += n;
                if st.pos == st.buf.len() {
                    let consumed = st.buf.len() as u32;
                    st.buf = Vec::new();
                    st.pos = 0;
                    let _ = self
                        .shared
                        .send(Frame::credit(self.id, self.stream, consumed));
                }
                return Ok(n);
            }
            if let Some(end) = &st.end {
                return end.clone().map(|_| 0);
            }
            match st.rx.recv().await {
                Some(Chunk::Data(b)) => {
                    st.buf = b;
                    st.pos = 0;
                }
                Some(Chunk::Eof) => st.end = Some(Ok(())),
                Some(Chunk::Err(e)) => st.end = Some(Err(e)),
                None => {
                    st.end = Some(Err(EngineError::unavailable(
                        "stream ended without EOF (sandbox gone)",
                    )))
                }
            }
        }
    }

    /// Reads everything until EOF.
    pub async fn read_to_end(&self) -> Result<Vec<u8>> {
        self.read_to_end_max(u64::MAX).await
    }

    /// Reads everything until EOF, or fails with `resource_exhausted`
    /// ("output limit: ...") as soon as more than `max` bytes arrived, so
    /// a stream the sandbox controls never grows the host without bound.
    pub async fn read_to_end_max(&self, max: u64) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        let mut buf = vec![0u8; DATA_CHUNK];
        loop {
            let n = self.read(&mut buf).await?;
            if n == 0 {
                return Ok(out);
            }
            if (out.len() + n) as u64 > max {
                return Err(EngineError::new(
                    lockbox_protocol::ErrorCode::ResourceExhausted,
                    format!("output limit: the stream passed {max} bytes"),
                ));
            }
            out.extend_from_slice(&buf[..n]);
        }
    }
}

impl Drop for StreamReader {
    /// Bytes that arrived but were never read still count against the
    /// agent's window: give them back, and refuse the rest (the demux then
    /// acknowledges it), so an abandoned stream never stalls its process.
    fn drop(&mut self) {
        let st = self.state.get_mut();
        st.rx.close();
        let mut unread = st.buf.len();
        while let Ok(c) = st.rx.try_recv() {
            if let Chunk::Data(b) = c {
                unread += b.len();
            }
        }
        while unread > 0 {
            let n = unread.min(u32::MAX as usize);
            let _ = self
                .shared
                .send(Frame::credit(self.id, self.stream, n as u32));
            unread -= n;
        }
    }
}

struct WriterState {
    credit: i64,
    credits: mpsc::UnboundedReceiver<Result<u32>>,
    closed: bool,
    failed: Option<EngineError>,
}

/// The write side of one stream (exec stdin, a file being written). Waits
/// for credit from the agent before sending, so writing a huge file never
/// buffers more than one window.
pub struct StreamWriter {
    shared: Arc<Shared>,
    id: u32,
    stream: u8,
    state: Mutex<WriterState>,
}

impl StreamWriter {
    pub(crate) fn new(
        shared: Arc<Shared>,
        id: u32,
        stream: u8,
        credits: mpsc::UnboundedReceiver<Result<u32>>,
    ) -> Self {
        StreamWriter {
            shared,
            id,
            stream,
            state: Mutex::new(WriterState {
                credit: INITIAL_WINDOW as i64,
                credits,
                closed: false,
                failed: None,
            }),
        }
    }

    /// Sends all of `data` (waits for credit as needed).
    pub async fn write_all(&self, data: &[u8]) -> Result<()> {
        let mut st = self.state.lock().await;
        if st.closed {
            return Err(EngineError::invalid("write after close"));
        }
        for chunk in data.chunks(DATA_CHUNK) {
            while st.credit < chunk.len() as i64 {
                if let Some(e) = &st.failed {
                    return Err(e.clone());
                }
                match st.credits.recv().await {
                    Some(Ok(n)) => st.credit += n as i64,
                    Some(Err(e)) => st.failed = Some(e),
                    None => {
                        st.failed = Some(EngineError::unavailable(
                            "the other end stopped reading (process exited)",
                        ))
                    }
                }
            }
            st.credit -= chunk.len() as i64;
            self.shared
                .send(Frame::data(self.id, self.stream, chunk.to_vec()))?;
        }
        Ok(())
    }

    /// Half-close: the reader inside sees EOF. Idempotent.
    /// (Dropping the writer does the same, like closing a pipe or file.)
    pub async fn close_write(&self) -> Result<()> {
        let mut st = self.state.lock().await;
        if st.closed {
            return Ok(());
        }
        st.closed = true;
        self.shared.send(Frame::eof(self.id, self.stream))
    }
}

impl Drop for StreamWriter {
    /// An abandoned writer ends its stream like a closed pipe, so the agent
    /// never waits for bytes that will not come.
    fn drop(&mut self) {
        if !self.state.get_mut().closed {
            let _ = self.shared.send(Frame::eof(self.id, self.stream));
        }
    }
}
