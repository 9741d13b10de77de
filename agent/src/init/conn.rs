//! One engine connection: a reader that dispatches frames to operations,
//! and a writer task that batches outgoing frames into the socket.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use lockbox_protocol::{
    read_frame, read_frame_or_reject, stream, ErrorCode, Frame, FrameKind, Message, Rejected,
    WireError, MAX_PAYLOAD, PROTOCOL_VERSION,
};
use tokio::io::{AsyncWriteExt, BufReader, BufWriter};
use tokio::net::UnixStream;
use tokio::sync::mpsc;

use super::window::Window;
use super::Agent;

pub enum Input {
    Data(Vec<u8>),
    Eof,
    /// A frame of this input was refused: the operation must fail.
    Abort(WireError),
}

pub enum Ctl {
    Signal(i32),
    Resize(u16, u16),
    /// The connection is gone: nobody will read the output.
    Abandon,
}

pub struct OpEntry {
    pub input: mpsc::UnboundedSender<Input>,
    pub ctl: mpsc::UnboundedSender<Ctl>,
    /// Outgoing windows, indexed by stream number.
    pub windows: Rc<[Window; 3]>,
}

pub struct Conn {
    out: mpsc::UnboundedSender<Frame>,
    pub ops: RefCell<HashMap<u32, OpEntry>>,
}

impl Conn {
    pub fn send(&self, f: Frame) {
        // The engine drops the connection on a frame above the limit, so a
        // reply that grew too large (a listing, an echoed path) goes out
        // as an error for its operation instead.
        if f.kind == FrameKind::Control && f.payload.len() > MAX_PAYLOAD {
            let e = WireError::new(
                ErrorCode::ResourceExhausted,
                format!(
                    "reply of {} bytes exceeds the protocol limit",
                    f.payload.len()
                ),
            );
            let _ = self.out.send(Frame::control(f.id, &Message::Error(e)));
            return;
        }
        let _ = self.out.send(f);
    }

    pub fn reply(&self, id: u32, m: &Message) {
        self.send(Frame::control(id, m));
    }

    pub fn error(&self, id: u32, e: WireError) {
        self.reply(id, &Message::Error(e));
    }

    pub fn finish(&self, id: u32) {
        self.ops.borrow_mut().remove(&id);
    }
}

/// Operation handles given to an op's task.
pub struct OpIo {
    pub input: mpsc::UnboundedReceiver<Input>,
    pub ctl: mpsc::UnboundedReceiver<Ctl>,
    pub windows: Rc<[Window; 3]>,
}

async fn writer(half: tokio::net::unix::OwnedWriteHalf, mut rx: mpsc::UnboundedReceiver<Frame>) {
    let mut w = BufWriter::with_capacity(256 * 1024, half);
    while let Some(f) = rx.recv().await {
        let mut next = Some(f);
        while let Some(f) = next {
            if w.write_all(&f.header()).await.is_err() || w.write_all(&f.payload).await.is_err() {
                return;
            }
            next = rx.try_recv().ok();
        }
        if w.flush().await.is_err() {
            return;
        }
    }
}

/// Bigger socket buffers: a 256 KiB data frame then moves in one wakeup
/// instead of several.
fn widen_buffers(s: &UnixStream) {
    use std::os::fd::AsRawFd;
    let size: libc::c_int = 4 << 20;
    for opt in [libc::SO_SNDBUF, libc::SO_RCVBUF] {
        // SAFETY: setsockopt with a valid int option.
        unsafe {
            libc::setsockopt(
                s.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                (&size as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
    }
}

pub async fn serve(agent: Rc<Agent>, s: UnixStream) {
    widen_buffers(&s);
    let (r, w) = s.into_split();
    let (tx, rx) = mpsc::unbounded_channel();
    let writer_task = tokio::task::spawn_local(writer(w, rx));
    let conn = Rc::new(Conn {
        out: tx,
        ops: RefCell::new(HashMap::new()),
    });
    let mut r = BufReader::with_capacity(256 * 1024, r);
    if handshake(&agent, &conn, &mut r).await {
        loop {
            match read_frame_or_reject(&mut r).await {
                Ok(Ok(f)) => dispatch(&agent, &conn, f),
                Ok(Err(rej)) => reject(&conn, rej),
                Err(_) => break,
            }
        }
    }
    for (_, op) in conn.ops.borrow_mut().drain() {
        let _ = op.ctl.send(Ctl::Abandon);
        for w in op.windows.iter() {
            w.close();
        }
    }
    drop(conn);
    let _ = writer_task.await;
}

async fn handshake(
    agent: &Agent,
    conn: &Conn,
    r: &mut BufReader<tokio::net::unix::OwnedReadHalf>,
) -> bool {
    let f = match read_frame(r).await {
        Ok(f) => f,
        Err(_) => return false,
    };
    match (f.kind, f.message()) {
        (FrameKind::Control, Ok(Message::Hello { version })) if version == PROTOCOL_VERSION => {
            conn.reply(
                0,
                &Message::HelloAck {
                    version: PROTOCOL_VERSION,
                    agent_pid: agent.host_pid,
                    // A restored VM answers to its new name once told.
                    sandbox: crate::guest::renamed().unwrap_or_else(|| agent.spec.name.clone()),
                },
            );
            true
        }
        (FrameKind::Control, Ok(Message::Hello { version })) => {
            conn.error(
                0,
                WireError::new(
                    ErrorCode::Unsupported,
                    format!("protocol version {version} not supported (agent speaks {PROTOCOL_VERSION})"),
                ),
            );
            false
        }
        _ => {
            conn.error(
                0,
                WireError::new(
                    ErrorCode::InvalidArgument,
                    "expected Hello as the first frame",
                ),
            );
            false
        }
    }
}

fn register(conn: &Conn, id: u32) -> Option<OpIo> {
    let mut ops = conn.ops.borrow_mut();
    if ops.contains_key(&id) || id == 0 {
        return None;
    }
    let (itx, irx) = mpsc::unbounded_channel();
    let (ctx, crx) = mpsc::unbounded_channel();
    let windows = Rc::new([Window::default(), Window::default(), Window::default()]);
    ops.insert(
        id,
        OpEntry {
            input: itx,
            ctl: ctx,
            windows: windows.clone(),
        },
    );
    Some(OpIo {
        input: irx,
        ctl: crx,
        windows,
    })
}

/// A well-delimited frame we cannot take: its operation fails with
/// `invalid_argument`, the connection and every other operation go on.
fn reject(conn: &Conn, rej: Rejected) {
    let e = WireError::new(ErrorCode::InvalidArgument, rej.reason.clone());
    if let Some(op) = conn.ops.borrow().get(&rej.id) {
        // Part of a running operation's input: that operation fails.
        let _ = op.input.send(Input::Abort(e));
        return;
    }
    // A request (or a frame of a kind this agent does not know) that
    // started nothing: answer it; the engine drops replies for ids it no
    // longer waits on.
    if rej.id != 0 {
        conn.error(rej.id, e);
    }
}

fn dispatch(agent: &Rc<Agent>, conn: &Rc<Conn>, f: Frame) {
    match f.kind {
        FrameKind::Data | FrameKind::Eof => {
            if let Some(op) = conn.ops.borrow().get(&f.id) {
                let input = if f.kind == FrameKind::Data {
                    Input::Data(f.payload)
                } else {
                    Input::Eof
                };
                if f.stream == stream::STDIN {
                    let _ = op.input.send(input);
                }
            }
        }
        FrameKind::Credit => {
            if let (Ok(n), Some(op)) = (f.credit_bytes(), conn.ops.borrow().get(&f.id)) {
                if let Some(w) = op.windows.get(f.stream as usize) {
                    w.grant(n);
                }
            }
        }
        FrameKind::Control => {
            let msg = match f.message() {
                Ok(m) => m,
                Err(e) => {
                    conn.error(
                        f.id,
                        WireError::new(ErrorCode::InvalidArgument, e.to_string()),
                    );
                    return;
                }
            };
            control(agent, conn, f.id, msg);
        }
    }
}

fn control(agent: &Rc<Agent>, conn: &Rc<Conn>, id: u32, msg: Message) {
    match msg {
        Message::Signal { signal } => {
            if let Some(op) = conn.ops.borrow().get(&id) {
                let _ = op.ctl.send(Ctl::Signal(signal));
            }
            return;
        }
        Message::Resize { rows, cols } => {
            if let Some(op) = conn.ops.borrow().get(&id) {
                let _ = op.ctl.send(Ctl::Resize(rows, cols));
            }
            return;
        }
        Message::Ping => return conn.reply(id, &Message::Ok),
        Message::Shutdown => {
            let (a, c) = (agent.clone(), conn.clone());
            tokio::task::spawn_local(async move {
                super::shutdown(&a).await;
                c.reply(id, &Message::Ok);
                // Let the writer flush the reply before PID 1 goes.
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                a.done.notify_one();
            });
            return;
        }
        // A restored microVM's fresh identity (guest/identity.rs).
        Message::Reseed {
            name,
            hostname,
            entropy,
        } => {
            let r = match crate::guest::reseed(&name, &hostname, &entropy) {
                Ok(()) => Message::Ok,
                Err(e) => Message::Error(WireError::new(
                    match e.kind() {
                        std::io::ErrorKind::Unsupported => ErrorCode::Unsupported,
                        std::io::ErrorKind::InvalidInput => ErrorCode::InvalidArgument,
                        _ => ErrorCode::Internal,
                    },
                    e.to_string(),
                )),
            };
            return conn.reply(id, &r);
        }
        _ => {}
    }
    let default = super::files::Creds {
        uid: agent.confine.default_user.uid,
        gid: agent.confine.default_user.gid,
    };
    let (creds, msg) = match msg {
        Message::AsUser { user, request } if super::files::is_file_request(&request) => {
            match crate::users::resolve(&user) {
                Ok(u) => (
                    super::files::Creds {
                        uid: u.uid,
                        gid: u.gid,
                    },
                    *request,
                ),
                Err(e) => return conn.error(id, e),
            }
        }
        Message::AsUser { .. } => {
            return conn.error(
                id,
                WireError::new(
                    ErrorCode::InvalidArgument,
                    "AsUser wraps file requests only",
                ),
            )
        }
        m => (default, m),
    };
    let Some(io) = register(conn, id) else {
        return conn.error(
            id,
            WireError::new(
                ErrorCode::InvalidArgument,
                format!("operation id {id} is in use or reserved"),
            ),
        );
    };
    let (a, c) = (agent.clone(), conn.clone());
    match msg {
        Message::Exec(req) => {
            tokio::task::spawn_local(async move {
                super::exec::run(&a, &c, id, req, io).await;
                c.finish(id);
            });
        }
        Message::ReadFile { path } => {
            tokio::task::spawn_local(async move {
                super::files::read_file(&c, id, &path, creds, &io).await;
                c.finish(id);
            });
        }
        Message::WriteFile { path, mode } => {
            tokio::task::spawn_local(async move {
                super::files::write_file(&c, id, &path, mode, creds, io).await;
                c.finish(id);
            });
        }
        other if super::files::is_file_request(&other) => {
            tokio::task::spawn_local(async move {
                let reply = super::files::simple(creds, other).await;
                c.reply(id, &reply);
                c.finish(id);
            });
        }
        _ => {
            c.error(
                id,
                WireError::new(ErrorCode::InvalidArgument, "not a request the agent serves"),
            );
            c.finish(id);
        }
    }
}
