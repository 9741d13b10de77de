//! Test harness: a busybox rootfs, the real lockbox-helper binary started
//! the way the engine starts it, and a small protocol client.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use lockbox_protocol::*;
use tokio::io::{AsyncWriteExt, BufWriter};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;

pub fn busybox_rootfs(dir: &Path) -> PathBuf {
    let root = dir.join("rootfs");
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
    // `busybox --install -s` would link to the host path of the binary;
    // relative links keep working after pivot_root.
    // The host binary answers: running the fresh copy races with other
    // tests' forks that briefly hold it open for writing (ETXTBSY).
    let list = Command::new("/bin/busybox").arg("--list").output().unwrap();
    assert!(list.status.success());
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        if applet != "busybox" {
            std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
        }
    }
    for d in ["etc", "tmp", "root"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(root.join("tmp"), std::fs::Permissions::from_mode(0o1777)).unwrap();
    root
}

pub struct Sandbox {
    pub dir: tempfile::TempDir,
    pub child: Child,
    pub status: LaunchStatus,
    pub spec: LaunchSpec,
}

pub fn spec_in(dir: &Path, rootfs: &Path, id: &str) -> LaunchSpec {
    let sb = dir.join("sb");
    LaunchSpec {
        name: format!("test-{id}"),
        id: format!("lbtest-{id}-{}", std::process::id()),
        dir: sb.to_string_lossy().into(),
        socket_path: sb.join("agent.sock").to_string_lossy().into(),
        rootfs: RootfsSpec {
            lower: vec![rootfs.to_string_lossy().into()],
            upper: sb.join("upper").to_string_lossy().into(),
            work: sb.join("work").to_string_lossy().into(),
        },
        hostname: "sandbox".into(),
        env: vec!["PATH=/bin".into(), "HOME=/root".into()],
        workdir: "/".into(),
        user: "0:0".into(),
        ..Default::default()
    }
}

impl Sandbox {
    /// Launches with a spec tweaked by `f`.
    pub fn launch(id: &str, f: impl FnOnce(&mut LaunchSpec, &Path)) -> Sandbox {
        Self::launch_as(id, None, f)
    }

    /// Launches as the given host uid (and the same gid), as an
    /// unprivileged user would.
    pub fn launch_as(
        id: &str,
        uid: Option<u32>,
        f: impl FnOnce(&mut LaunchSpec, &Path),
    ) -> Sandbox {
        let dir = tempfile::tempdir().unwrap();
        let rootfs = busybox_rootfs(dir.path());
        let mut spec = spec_in(dir.path(), &rootfs, id);
        std::fs::create_dir_all(&spec.dir).unwrap();
        f(&mut spec, dir.path());
        // Like a private LOCKBOX_HOME: the sandbox's host-side ids must not
        // need to traverse it.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        if let Some(u) = uid {
            let st = Command::new("chown")
                .args(["-R", &format!("{u}:{u}")])
                .arg(dir.path())
                .status()
                .unwrap();
            assert!(st.success());
        }
        let (child, status) = start_as(&spec, uid);
        Sandbox {
            dir,
            child,
            status,
            spec,
        }
    }

    /// Whether the helper (and so the sandbox) is still running.
    pub fn child_alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub async fn client(&self) -> Client {
        Client::connect(&self.spec.socket_path).await
    }
}

/// Starts the helper: stdin = lifeline pipe, stdout = status pipe.
pub fn start(spec: &LaunchSpec) -> (Child, LaunchStatus) {
    start_as(spec, None)
}

pub fn start_as(spec: &LaunchSpec, uid: Option<u32>) -> (Child, LaunchStatus) {
    let launch = Path::new(&spec.dir).join("launch.json");
    std::fs::write(&launch, serde_json::to_vec(spec).unwrap()).unwrap();
    let log = std::fs::File::create(Path::new(&spec.dir).join("helper.log")).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_lockbox-helper"));
    if let Some(u) = uid {
        use std::os::unix::process::CommandExt;
        // std drops supplementary groups when root switches uid.
        cmd.uid(u).gid(u);
    }
    let mut child = cmd
        .arg("run")
        .arg(&launch)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let status: LaunchStatus =
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("bad status line {line:?}: {e}"));
    (child, status)
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.wait();
    }
}

#[derive(Default, Debug)]
pub struct OpResult {
    pub replies: Vec<Message>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub done: bool,
}

impl OpResult {
    pub fn exited(&self) -> (Option<i32>, Option<i32>, bool) {
        for m in &self.replies {
            if let Message::Exited {
                code,
                signal,
                timed_out,
            } = m
            {
                return (*code, *signal, *timed_out);
            }
        }
        panic!("no Exited in {:?}", self.replies)
    }

    pub fn error(&self) -> Option<WireError> {
        self.replies.iter().find_map(|m| match m {
            Message::Error(e) => Some(e.clone()),
            _ => None,
        })
    }

    pub fn out(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
}

pub struct Client {
    pub r: tokio::io::BufReader<OwnedReadHalf>,
    pub w: BufWriter<OwnedWriteHalf>,
    next: u32,
    pub ops: HashMap<u32, (OpResult, bool)>,
}

impl Client {
    pub async fn connect(path: &str) -> Client {
        Client::handshake(UnixStream::connect(path).await.unwrap()).await
    }

    /// The Hello handshake on a connected stream.
    pub async fn handshake(s: UnixStream) -> Client {
        let (r, w) = s.into_split();
        let mut c = Client {
            r: tokio::io::BufReader::with_capacity(1 << 20, r),
            w: BufWriter::with_capacity(1 << 20, w),
            next: 1,
            ops: HashMap::new(),
        };
        c.send(Frame::control(
            0,
            &Message::Hello {
                version: PROTOCOL_VERSION,
            },
        ))
        .await;
        let f = read_frame(&mut c.r).await.unwrap();
        assert!(matches!(f.message().unwrap(), Message::HelloAck { .. }));
        c
    }

    pub async fn send(&mut self, f: Frame) {
        write_frame(&mut self.w, &f).await.unwrap();
        self.w.flush().await.unwrap();
    }

    /// Starts a request; `read_stream` says the op ends with an Eof on stream 1.
    pub async fn start(&mut self, mut m: Message) -> u32 {
        // The engine always sends a cwd (the agent has no default of its
        // own); requests here that leave it out mean the root.
        if let Message::Exec(r) = &mut m {
            if r.cwd.is_empty() {
                r.cwd = "/".into();
            }
        }
        let id = self.next;
        self.next += 1;
        let streams = match &m {
            Message::ReadFile { .. } => true,
            Message::AsUser { request, .. } => matches!(**request, Message::ReadFile { .. }),
            _ => false,
        };
        self.ops.insert(id, (OpResult::default(), streams));
        self.send(Frame::control(id, &m)).await;
        id
    }

    pub async fn send_input(&mut self, id: u32, data: &[u8]) {
        for c in data.chunks(DATA_CHUNK) {
            write_frame(&mut self.w, &Frame::data(id, stream::STDIN, c.to_vec()))
                .await
                .unwrap();
        }
        write_frame(&mut self.w, &Frame::eof(id, stream::STDIN))
            .await
            .unwrap();
        self.w.flush().await.unwrap();
    }

    /// Reads frames until every op in `ids` has ended.
    pub async fn wait(&mut self, ids: &[u32]) -> Vec<OpResult> {
        while ids.iter().any(|i| !self.ops[i].0.done) {
            let f = read_frame(&mut self.r).await.unwrap();
            let Some((op, streams)) = self.ops.get_mut(&f.id) else {
                continue;
            };
            match f.kind {
                FrameKind::Data => {
                    let n = f.payload.len() as u32;
                    if f.stream == stream::STDERR {
                        op.stderr.extend_from_slice(&f.payload);
                    } else {
                        op.stdout.extend_from_slice(&f.payload);
                    }
                    let id = f.id;
                    let st = f.stream;
                    write_frame(&mut self.w, &Frame::credit(id, st, n))
                        .await
                        .unwrap();
                    self.w.flush().await.unwrap();
                }
                FrameKind::Eof => {
                    if *streams && f.stream == stream::STDOUT {
                        op.done = true;
                    }
                }
                FrameKind::Credit => {}
                FrameKind::Control => {
                    let m = f.message().unwrap();
                    let terminal = match &m {
                        Message::Started { .. } => false,
                        Message::Ok if *streams => false,
                        Message::Error(_) => true,
                        _ => true,
                    };
                    op.replies.push(m);
                    if terminal {
                        op.done = true;
                    }
                }
            }
        }
        ids.iter().map(|i| self.ops.remove(i).unwrap().0).collect()
    }

    pub async fn exec_with(&mut self, req: ExecRequest, stdin: Option<&[u8]>) -> OpResult {
        let id = self.start(Message::Exec(req)).await;
        if let Some(d) = stdin {
            self.send_input(id, d).await;
        }
        self.wait(&[id]).await.pop().unwrap()
    }

    pub async fn sh(&mut self, script: &str) -> OpResult {
        self.exec_with(
            ExecRequest {
                argv: vec!["/bin/sh".into(), "-c".into(), script.into()],
                env: vec!["PATH=/bin".into()],
                ..Default::default()
            },
            None,
        )
        .await
    }

    pub async fn request(&mut self, m: Message) -> OpResult {
        let id = self.start(m).await;
        self.wait(&[id]).await.pop().unwrap()
    }

    pub async fn write_file(&mut self, path: &str, data: &[u8]) -> OpResult {
        let id = self
            .start(Message::WriteFile {
                path: path.into(),
                mode: 0o644,
            })
            .await;
        // Respect the agent's window: send at most INITIAL_WINDOW ahead.
        let mut sent = 0usize;
        let mut granted = INITIAL_WINDOW as usize;
        for c in data.chunks(DATA_CHUNK) {
            while sent + c.len() > granted {
                let f = read_frame(&mut self.r).await.unwrap();
                match f.kind {
                    FrameKind::Credit if f.id == id => {
                        granted += f.credit_bytes().unwrap() as usize
                    }
                    FrameKind::Control if f.id == id => {
                        let op = &mut self.ops.get_mut(&id).unwrap().0;
                        op.replies.push(f.message().unwrap());
                        op.done = true;
                        return self.ops.remove(&id).unwrap().0;
                    }
                    _ => {}
                }
            }
            write_frame(&mut self.w, &Frame::data(id, stream::STDIN, c.to_vec()))
                .await
                .unwrap();
            sent += c.len();
        }
        write_frame(&mut self.w, &Frame::eof(id, stream::STDIN))
            .await
            .unwrap();
        self.w.flush().await.unwrap();
        self.wait(&[id]).await.pop().unwrap()
    }
}
