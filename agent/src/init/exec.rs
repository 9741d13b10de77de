//! Exec: start a confined process, stream its output under credit, feed
//! its stdin, deliver signals and resizes, enforce the timeout, and report
//! how it ended.

use std::ffi::CString;
use std::os::fd::OwnedFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::rc::Rc;
use std::time::Duration;

use lockbox_protocol::{stream, ErrorCode, ExecRequest, Frame, Message, WireError, DATA_CHUNK};
use nix::sys::wait::WaitStatus;
use tokio::sync::watch;

use super::conn::{Conn, Ctl, Input, OpIo};
use super::fdio::Fd;
use super::window::Window;
use super::Agent;
use crate::confine::ExecCreds;
use crate::users::User;

/// After the process exits, output still arriving (from children that kept
/// the pipe) is forwarded until the pipe is idle this long.
const DRAIN_IDLE: Duration = Duration::from_millis(300);

fn find_program(argv0: &str, env: &[String]) -> Result<PathBuf, WireError> {
    let is_exec = |p: &Path| {
        std::fs::metadata(p)
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    };
    if argv0.contains('/') {
        let p = PathBuf::from(argv0);
        if !p.exists() {
            return Err(WireError::new(
                ErrorCode::NotFound,
                format!("executable {argv0} not found"),
            ));
        }
        return Ok(p);
    }
    // The engine's plan always puts a PATH in; without one there is
    // nowhere to look.
    let path = env
        .iter()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or("");
    path.split(':')
        .filter(|d| !d.is_empty())
        .map(|d| Path::new(d).join(argv0))
        .find(|p| is_exec(p))
        .ok_or_else(|| {
            WireError::new(
                ErrorCode::NotFound,
                format!("executable {argv0:?} not found in PATH {path}"),
            )
        })
}

struct Spawned {
    pid: i32,
    stdin: Option<Fd>,
    stdout: Option<Rc<Fd>>,
    stderr: Option<Rc<Fd>>,
    pty: Option<Rc<Fd>>,
}

/// The request's environment (complete: the engine merged the sandbox's
/// in) plus HOME of the user it runs as, when it has none: HOME depends on
/// the user, which only this side resolves.
fn env_of(req: &ExecRequest, user: &User) -> Vec<String> {
    let mut env = req.env.clone();
    if !env.iter().any(|e| e.starts_with("HOME=")) {
        env.push(format!("HOME={}", user.home_or_default()));
    }
    env
}

fn spawn(agent: &Agent, req: &ExecRequest) -> Result<Spawned, WireError> {
    let argv0 = req
        .argv
        .first()
        .ok_or_else(|| WireError::new(ErrorCode::InvalidArgument, "argv is empty"))?;
    let resolved;
    let user = match &req.user {
        Some(u) => {
            resolved = crate::users::resolve(u)?;
            &resolved
        }
        None => &agent.confine.default_user,
    };
    let env = env_of(req, user);
    let program = find_program(argv0, &env)?;
    let cwd = req.cwd.clone();
    if !cwd.starts_with('/') {
        return Err(WireError::new(
            ErrorCode::InvalidArgument,
            format!("working directory {cwd:?} must be absolute"),
        ));
    }
    if !Path::new(&cwd).is_dir() {
        return Err(WireError::new(
            ErrorCode::NotFound,
            format!("working directory {cwd} does not exist"),
        ));
    }
    let creds = ExecCreds {
        uid: user.uid,
        gid: user.gid,
        cwd: CString::new(cwd)
            .map_err(|_| WireError::new(ErrorCode::InvalidArgument, "cwd has NUL"))?,
        tty: req.tty,
    };
    let mut cmd = Command::new(&program);
    cmd.arg0(argv0).args(&req.argv[1..]).env_clear();
    for kv in &env {
        if let Some((k, v)) = kv.split_once('=') {
            cmd.env(k, v);
        }
    }
    let mut pty_master = None;
    if req.tty {
        let ws = nix::pty::Winsize {
            ws_row: req.rows.unwrap_or(24),
            ws_col: req.cols.unwrap_or(80),
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        let p = nix::pty::openpty(Some(&ws), None)
            .map_err(|e| WireError::new(ErrorCode::Internal, format!("openpty: {e}")))?;
        let slave = p.slave;
        // openpty's fds are inheritable: without CLOEXEC the slave would
        // also leak into execs started while this one runs.
        // SAFETY: fcntl on fds we own.
        unsafe {
            libc::fcntl(
                std::os::fd::AsRawFd::as_raw_fd(&slave),
                libc::F_SETFD,
                libc::FD_CLOEXEC,
            );
        }
        let dup = |f: &OwnedFd| {
            f.try_clone()
                .map(Stdio::from)
                .map_err(|e| super::files::wire(e, "pty"))
        };
        cmd.stdin(dup(&slave)?)
            .stdout(dup(&slave)?)
            .stderr(Stdio::from(slave));
        // SAFETY: the master must not leak into the child.
        unsafe {
            libc::fcntl(
                std::os::fd::AsRawFd::as_raw_fd(&p.master),
                libc::F_SETFD,
                libc::FD_CLOEXEC,
            )
        };
        pty_master = Some(p.master);
    } else {
        cmd.stdin(if req.stdin {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    }
    // SAFETY: the closure only makes system calls (see confine.rs).
    unsafe { cmd.pre_exec(agent.confine.pre_exec(creds)) };
    // E2BIG (arguments over the kernel's limits) and NUL bytes are the
    // caller's input: invalid_argument, like any other bad request.
    let mut child = cmd
        .spawn()
        .map_err(|e| super::files::wire(e, &format!("exec {argv0}")))?;
    let pid = child.id() as i32;
    let wrap = |f: Option<OwnedFd>| f.and_then(|f| Fd::new(f).ok());
    let mut s = Spawned {
        pid,
        stdin: wrap(child.stdin.take().map(OwnedFd::from)),
        stdout: wrap(child.stdout.take().map(OwnedFd::from)).map(Rc::new),
        stderr: wrap(child.stderr.take().map(OwnedFd::from)).map(Rc::new),
        pty: None,
    };
    if let Some(m) = pty_master {
        let m = Rc::new(Fd::new(m).map_err(|e| super::files::wire(e, "pty"))?);
        s.pty = Some(m.clone());
        s.stdout = Some(m);
    }
    // The Child is dropped without waiting: the reaper owns the status.
    Ok(s)
}

async fn pump(
    conn: Rc<Conn>,
    id: u32,
    which: u8,
    fd: Rc<Fd>,
    windows: Rc<[Window; 3]>,
    mut exited: watch::Receiver<bool>,
) {
    let w = &windows[which as usize];
    loop {
        let n = w.acquire(DATA_CHUNK).await;
        let idle = async {
            let _ = exited.wait_for(|e| *e).await;
            tokio::time::sleep(DRAIN_IDLE).await;
        };
        let chunk = tokio::select! {
            r = fd.read_chunk(n) => r,
            _ = idle => break,
        };
        match chunk {
            Ok(b) if b.is_empty() => break,
            Ok(b) => {
                w.spend(b.len());
                conn.send(Frame::data(id, which, b));
            }
            Err(_) => break,
        }
    }
    conn.send(Frame::eof(id, which));
}

async fn feed(
    conn: Rc<Conn>,
    id: u32,
    fd: Option<Rc<Fd>>,
    mut input: tokio::sync::mpsc::UnboundedReceiver<Input>,
) {
    let mut fd = fd;
    let mut pending = 0usize;
    while let Some(i) = input.recv().await {
        match i {
            Input::Data(d) => {
                if let Some(f) = &fd {
                    if f.write_all(&d).await.is_err() {
                        // A reader that went away: keep granting credit so
                        // the engine's writer does not stall; drop the bytes.
                        fd = None;
                    }
                }
                pending += d.len();
                if pending >= super::files::CREDIT_BATCH || input.is_empty() {
                    conn.send(Frame::credit(id, stream::STDIN, pending as u32));
                    pending = 0;
                }
            }
            // Dropping the fd closes the process's stdin.
            Input::Eof | Input::Abort(_) => fd = None,
        }
    }
}

fn kill_group(pid: i32, sig: i32) {
    // SAFETY: plain kill; the process group id equals the pid (setsid).
    unsafe {
        if libc::kill(-pid, sig) != 0 {
            libc::kill(pid, sig);
        }
    }
}

pub async fn run(agent: &Agent, conn: &Rc<Conn>, id: u32, req: ExecRequest, io: OpIo) {
    let OpIo {
        input,
        mut ctl,
        windows,
    } = io;
    let sp = match spawn(agent, &req) {
        Ok(s) => s,
        Err(e) => return conn.error(id, e),
    };
    let status_rx = agent.reaper.watch(sp.pid);
    conn.reply(id, &Message::Started { pid: sp.pid as u32 });
    let (ex_tx, ex_rx) = watch::channel(false);
    let mut pumps = Vec::new();
    if let Some(o) = sp.stdout.clone() {
        pumps.push(tokio::task::spawn_local(pump(
            conn.clone(),
            id,
            stream::STDOUT,
            o,
            windows.clone(),
            ex_rx.clone(),
        )));
    }
    if let Some(e) = sp.stderr.clone() {
        pumps.push(tokio::task::spawn_local(pump(
            conn.clone(),
            id,
            stream::STDERR,
            e,
            windows.clone(),
            ex_rx.clone(),
        )));
    }
    if sp.pty.is_some() {
        // A tty has no separate stderr stream; end it so readers finish.
        conn.send(Frame::eof(id, stream::STDERR));
    }
    let stdin_fd = match (&sp.pty, sp.stdin) {
        (Some(p), _) => Some(p.clone()),
        (None, Some(s)) => Some(Rc::new(s)),
        _ => None,
    };
    let feeder = tokio::task::spawn_local(feed(conn.clone(), id, stdin_fd, input));

    let timeout = async {
        match req.timeout_ms {
            Some(ms) => tokio::time::sleep(Duration::from_millis(ms)).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(timeout);
    tokio::pin!(status_rx);
    let mut timed_out = false;
    let mut ctl_open = true;
    let status = loop {
        tokio::select! {
            st = &mut status_rx => break st.ok(),
            _ = &mut timeout, if !timed_out => {
                timed_out = true;
                kill_group(sp.pid, libc::SIGKILL);
            }
            c = ctl.recv(), if ctl_open => match c {
                Some(Ctl::Signal(s)) => kill_group(sp.pid, s),
                Some(Ctl::Resize(rows, cols)) => {
                    if let Some(p) = &sp.pty {
                        let ws = libc::winsize { ws_row: rows, ws_col: cols, ws_xpixel: 0, ws_ypixel: 0 };
                        // SAFETY: TIOCSWINSZ with a valid winsize.
                        unsafe { libc::ioctl(p.raw(), libc::TIOCSWINSZ, &ws) };
                    }
                }
                Some(Ctl::Abandon) => kill_group(sp.pid, libc::SIGKILL),
                None => ctl_open = false,
            },
        }
    };
    let _ = ex_tx.send(true);
    for p in pumps {
        let _ = p.await;
    }
    feeder.abort();
    let (code, signal) = match status {
        Some(WaitStatus::Exited(_, c)) => (Some(c), None),
        Some(WaitStatus::Signaled(_, s, _)) => (None, Some(s as i32)),
        _ => (None, Some(libc::SIGKILL)),
    };
    conn.reply(
        id,
        &Message::Exited {
            code,
            signal,
            timed_out,
        },
    );
}
