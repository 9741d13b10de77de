//! Exec: start a confined process, stream its output under credit, feed
//! its stdin, deliver signals and resizes, enforce the timeout, and report
//! how it ended.

use std::collections::BTreeMap;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Duration;

use lockbox_protocol::{stream, ErrorCode, ExecRequest, Frame, Message, WireError, DATA_CHUNK};
use nix::sys::wait::WaitStatus;
use tokio::sync::watch;

use super::conn::{Conn, Ctl, Input, OpIo};
use super::fdio::Fd;
use super::window::Window;
use super::Agent;
use crate::spawner::{Request, SpawnError, Spawner};
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
    let has_nul = |s: &str| s.contains('\0');
    if req.argv.iter().any(|a| has_nul(a)) || env.iter().any(|e| has_nul(e)) || has_nul(&cwd) {
        return Err(WireError::new(
            ErrorCode::InvalidArgument,
            format!("exec {argv0}: nul byte found in provided data"),
        ));
    }
    // As the environment of a std Command: one entry per name (the last
    // given wins), entries without '=' dropped, sorted by name.
    let env: Vec<String> = env
        .iter()
        .filter_map(|kv| kv.split_once('='))
        .collect::<BTreeMap<_, _>>()
        .into_iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    let program = program
        .to_str()
        .ok_or_else(|| WireError::new(ErrorCode::InvalidArgument, "program path is not UTF-8"))?;
    let cloexec = |f: &OwnedFd| {
        // SAFETY: fcntl on an fd we own: nothing of it may leak into
        // execs started while this one runs.
        unsafe { libc::fcntl(f.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) };
    };
    // (ours, the child's) for each of stdin, stdout, stderr.
    let mut pty_master = None;
    let (mine, theirs): ([Option<OwnedFd>; 3], [OwnedFd; 3]) = if req.tty {
        let ws = nix::pty::Winsize {
            ws_row: req.rows.unwrap_or(24),
            ws_col: req.cols.unwrap_or(80),
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        let p = nix::pty::openpty(Some(&ws), None)
            .map_err(|e| WireError::new(ErrorCode::Internal, format!("openpty: {e}")))?;
        cloexec(&p.slave);
        cloexec(&p.master);
        let dup = |f: &OwnedFd| f.try_clone().map_err(|e| super::files::wire(e, "pty"));
        pty_master = Some(p.master);
        (
            [None, None, None],
            [dup(&p.slave)?, dup(&p.slave)?, p.slave],
        )
    } else {
        let pipe = || {
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
                .map_err(|e| super::files::wire(e.into(), "pipe"))
        };
        let (in_r, in_w) = if req.stdin {
            let (r, w) = pipe()?;
            (r, Some(w))
        } else {
            let null = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/null")
                .map_err(|e| super::files::wire(e, "/dev/null"))?;
            (OwnedFd::from(null), None)
        };
        let (out_r, out_w) = pipe()?;
        let (err_r, err_w) = pipe()?;
        ([in_w, Some(out_r), Some(err_r)], [in_r, out_w, err_w])
    };
    let request = Request {
        program,
        argv: &req.argv,
        env: &env,
        cwd: &cwd,
        uid: user.uid,
        gid: user.gid,
        tty: req.tty,
        stdio: [&theirs[0], &theirs[1], &theirs[2]],
    };
    let pid =
        start(agent, &request).map_err(|e| super::files::wire(e, &format!("exec {argv0}")))?;
    drop(theirs);
    let [stdin, stdout, stderr] = mine;
    let wrap = |f: Option<OwnedFd>| f.and_then(|f| Fd::new(f).ok());
    let mut s = Spawned {
        pid,
        stdin: wrap(stdin),
        stdout: wrap(stdout).map(Rc::new),
        stderr: wrap(stderr).map(Rc::new),
        pty: None,
    };
    if let Some(m) = pty_master {
        let m = Rc::new(Fd::new(m).map_err(|e| super::files::wire(e, "pty"))?);
        s.pty = Some(m.clone());
        s.stdout = Some(m);
    }
    Ok(s)
}

/// Starts the process through the agent's spawner, starting a spawner
/// first when there is none or it has died.
fn start(agent: &Agent, req: &Request) -> std::io::Result<i32> {
    let mut slot = agent.spawner.borrow_mut();
    for _ in 0..2 {
        if slot.is_none() {
            *slot = Some(Spawner::start(&agent.confine)?);
        }
        let Some(sp) = slot.as_mut() else { break };
        match sp.spawn(req) {
            Ok(pid) => return Ok(pid),
            Err(SpawnError::Exec(e)) => return Err(e),
            // Nothing started: a new spawner may take it.
            Err(SpawnError::NotDelivered) => *slot = None,
            // Perhaps something started: running it twice would be worse.
            Err(SpawnError::Lost(e)) => {
                *slot = None;
                return Err(std::io::Error::other(format!(
                    "the sandbox's exec spawner went away mid-request ({e}); \
                     whether the command started is unknown"
                )));
            }
        }
    }
    Err(std::io::Error::from_raw_os_error(libc::EAGAIN))
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
