//! The agent against bad requests and a hostile inside: oversized or
//! malformed frames, arguments and paths over the kernel's limits, FIFOs
//! and devices given to file calls, links planted by a less-privileged
//! user. Each attack must fail as a clean error on a connection that keeps
//! working, and each has a control showing the probe would see a success.

mod common;

use std::time::Duration;

use common::*;
use lockbox_protocol::*;
use tokio::io::AsyncWriteExt;

/// Every request below must be answered well within this.
const PROMPT: Duration = Duration::from_secs(10);

async fn request(c: &mut Client, m: Message) -> OpResult {
    tokio::time::timeout(PROMPT, c.request(m))
        .await
        .expect("the agent stopped answering")
}

async fn sh(c: &mut Client, script: &str) -> OpResult {
    tokio::time::timeout(PROMPT, c.sh(script))
        .await
        .expect("the agent stopped answering")
}

async fn sh_as_root(c: &mut Client, script: &str) -> OpResult {
    let req = ExecRequest {
        argv: vec!["/bin/sh".into(), "-c".into(), script.into()],
        env: vec!["PATH=/bin".into()],
        user: Some("0:0".into()),
        ..Default::default()
    };
    tokio::time::timeout(PROMPT, c.exec_with(req, None))
        .await
        .expect("the agent stopped answering")
}

fn code(r: &OpResult) -> Option<ErrorCode> {
    r.error().map(|e| e.code)
}

/// Writes a frame as raw bytes, bypassing `write_frame`'s size check, the
/// way a buggy or older engine would.
async fn send_raw(c: &mut Client, kind: u8, id: u32, payload: &[u8]) {
    let len = (payload.len() + HEADER_LEN - 4) as u32;
    let mut h = len.to_be_bytes().to_vec();
    h.extend_from_slice(&[kind, 0]);
    h.extend_from_slice(&id.to_be_bytes());
    c.w.write_all(&h).await.unwrap();
    c.w.write_all(payload).await.unwrap();
    c.w.flush().await.unwrap();
}

#[tokio::test]
async fn bad_requests_are_invalid_argument_and_the_connection_lives() {
    let mut sb = Sandbox::launch("badreq", |_, _| {});
    assert!(sb.status.ok, "{:?}", sb.status);
    let mut c = sb.client().await;

    // A control frame above the frame limit (an exec with a 5 MiB
    // argument) is answered for its id; the connection goes on.
    let big = Message::Exec(ExecRequest {
        argv: vec!["/bin/echo".into(), "x".repeat(5 << 20)],
        ..Default::default()
    });
    let payload = serde_json::to_vec(&big).unwrap();
    assert!(payload.len() > MAX_PAYLOAD);
    c.ops.insert(900, (OpResult::default(), false));
    send_raw(&mut c, FrameKind::Control as u8, 900, &payload).await;
    let r = tokio::time::timeout(PROMPT, c.wait(&[900]))
        .await
        .unwrap()
        .pop()
        .unwrap();
    assert_eq!(code(&r), Some(ErrorCode::InvalidArgument), "{r:?}");
    // An unknown frame kind and undecodable JSON: the same.
    c.ops.insert(901, (OpResult::default(), false));
    send_raw(&mut c, 77, 901, b"junk").await;
    c.ops.insert(902, (OpResult::default(), false));
    send_raw(&mut c, FrameKind::Control as u8, 902, b"{not json").await;
    let rs = tokio::time::timeout(PROMPT, c.wait(&[901, 902]))
        .await
        .unwrap();
    for r in &rs {
        assert_eq!(code(r), Some(ErrorCode::InvalidArgument), "{r:?}");
    }

    // An oversized data frame inside a running WriteFile fails that write
    // only.
    let id = c
        .start(Message::WriteFile {
            path: "/tmp/w".into(),
            mode: 0o644,
        })
        .await;
    send_raw(
        &mut c,
        FrameKind::Data as u8,
        id,
        &vec![0u8; MAX_PAYLOAD + 1],
    )
    .await;
    c.send(Frame::eof(id, stream::STDIN)).await;
    let r = tokio::time::timeout(PROMPT, c.wait(&[id]))
        .await
        .unwrap()
        .pop()
        .unwrap();
    assert_eq!(code(&r), Some(ErrorCode::InvalidArgument), "{r:?}");

    // Within a frame but over the kernel's limits: one argument above
    // MAX_ARG_STRLEN (E2BIG) and a path above PATH_MAX (ENAMETOOLONG).
    let r = tokio::time::timeout(
        PROMPT,
        c.exec_with(
            ExecRequest {
                argv: vec!["/bin/echo".into(), "y".repeat(200 << 10)],
                ..Default::default()
            },
            None,
        ),
    )
    .await
    .unwrap();
    assert_eq!(code(&r), Some(ErrorCode::InvalidArgument), "{r:?}");
    let long = format!("/tmp/{}", "d/".repeat(3000));
    let r = request(&mut c, Message::Stat { path: long }).await;
    assert_eq!(code(&r), Some(ErrorCode::InvalidArgument), "{r:?}");
    let r = request(
        &mut c,
        Message::Stat {
            path: format!("/tmp/{}", "n".repeat(300)),
        },
    )
    .await;
    assert_eq!(code(&r), Some(ErrorCode::InvalidArgument), "{r:?}");

    // The same connection still serves everything; the controls show the
    // probes above would have seen a success: a large argument that fits
    // runs, and the file written normally arrives.
    let r = tokio::time::timeout(
        PROMPT,
        c.exec_with(
            ExecRequest {
                argv: vec![
                    "/bin/sh".into(),
                    "-c".into(),
                    "echo ${#1}".into(),
                    "sh".into(),
                    "z".repeat(100 << 10),
                ],
                ..Default::default()
            },
            None,
        ),
    )
    .await
    .unwrap();
    assert_eq!(r.out(), format!("{}\n", 100 << 10), "{r:?}");
    let r = c.write_file("/tmp/w", b"fine").await;
    assert!(r.error().is_none(), "{r:?}");
    assert_eq!(sh(&mut c, "cat /tmp/w").await.out(), "fine");
    assert!(sb.child_alive());
}

#[tokio::test]
async fn fifos_and_devices_never_stall_file_calls() {
    let sb = Sandbox::launch("fifo", |_, _| {});
    assert!(sb.status.ok, "{:?}", sb.status);
    let mut c = sb.client().await;
    let r = sh(
        &mut c,
        "mkfifo /tmp/fifo && echo data > /tmp/file && echo ok",
    )
    .await;
    assert_eq!(r.out(), "ok\n", "{r:?}");

    // Control: the FIFO really blocks a reader (cat is still waiting when
    // its timeout kills it).
    let r = tokio::time::timeout(
        PROMPT,
        c.exec_with(
            ExecRequest {
                argv: vec!["/bin/cat".into(), "/tmp/fifo".into()],
                timeout_ms: Some(300),
                ..Default::default()
            },
            None,
        ),
    )
    .await
    .unwrap();
    assert!(
        r.exited().2,
        "cat of a FIFO without a writer should hang: {r:?}"
    );

    // Through the API: refused at once, for reads and writes, with and
    // without a process holding the other end, and for a device.
    let r = request(
        &mut c,
        Message::ReadFile {
            path: "/tmp/fifo".into(),
        },
    )
    .await;
    assert_eq!(code(&r), Some(ErrorCode::InvalidArgument), "{r:?}");
    let r = c.write_file("/tmp/fifo", b"x").await;
    assert_eq!(code(&r), Some(ErrorCode::InvalidArgument), "{r:?}");
    let holder = c
        .start(Message::Exec(ExecRequest {
            argv: vec![
                "/bin/sh".into(),
                "-c".into(),
                "exec 3<>/tmp/fifo; sleep 30".into(),
            ],
            ..Default::default()
        }))
        .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let r = request(
        &mut c,
        Message::ReadFile {
            path: "/tmp/fifo".into(),
        },
    )
    .await;
    assert_eq!(code(&r), Some(ErrorCode::InvalidArgument), "{r:?}");
    let r = c.write_file("/tmp/fifo", b"x").await;
    assert_eq!(code(&r), Some(ErrorCode::InvalidArgument), "{r:?}");
    let r = request(
        &mut c,
        Message::ReadFile {
            path: "/dev/zero".into(),
        },
    )
    .await;
    assert_eq!(code(&r), Some(ErrorCode::InvalidArgument), "{r:?}");
    let r = c.write_file("/dev/null", b"x").await;
    assert_eq!(code(&r), Some(ErrorCode::InvalidArgument), "{r:?}");
    c.send(Frame::control(
        holder,
        &Message::Signal {
            signal: libc::SIGKILL,
        },
    ))
    .await;
    c.wait(&[holder]).await;

    // Regular files still read, through a link too.
    let r = request(
        &mut c,
        Message::Symlink {
            target: "/tmp/file".into(),
            link: "/tmp/l".into(),
        },
    )
    .await;
    assert!(r.error().is_none(), "{r:?}");
    let r = request(
        &mut c,
        Message::ReadFile {
            path: "/tmp/l".into(),
        },
    )
    .await;
    assert_eq!(r.out(), "data\n", "{r:?}");
}

/// The sandbox's user (1000) plants links to a root-only file; file calls
/// through the API act as that user and cannot read or overwrite it.
#[tokio::test]
async fn file_calls_act_as_the_sandbox_user() {
    let sb = Sandbox::launch("asuser", |s, _| {
        s.user = "1000:1000".into();
    });
    assert!(sb.status.ok, "{:?}", sb.status);
    let mut c = sb.client().await;
    let r = sh_as_root(
        &mut c,
        "echo top > /secret && chmod 600 /secret && mkdir -m 700 /rootdir && echo ok",
    )
    .await;
    assert_eq!(r.out(), "ok\n", "{r:?}");
    let r = sh(
        &mut c,
        "id -u; ln -s /secret /tmp/rl; ln -s /secret /tmp/wl; ln -s /rootdir /tmp/dl",
    )
    .await;
    assert_eq!(r.out(), "1000\n", "{r:?}");

    let r = request(
        &mut c,
        Message::ReadFile {
            path: "/tmp/rl".into(),
        },
    )
    .await;
    assert_eq!(code(&r), Some(ErrorCode::PermissionDenied), "{r:?}");
    assert!(r.stdout.is_empty());
    let r = c.write_file("/tmp/wl", b"pwned").await;
    assert_eq!(code(&r), Some(ErrorCode::PermissionDenied), "{r:?}");
    let r = request(
        &mut c,
        Message::ReadDir {
            path: "/tmp/dl".into(),
        },
    )
    .await;
    assert_eq!(code(&r), Some(ErrorCode::PermissionDenied), "{r:?}");
    let r = request(
        &mut c,
        Message::MkdirAll {
            path: "/tmp/dl/x".into(),
            mode: 0o755,
        },
    )
    .await;
    assert_eq!(code(&r), Some(ErrorCode::PermissionDenied), "{r:?}");
    let r = request(
        &mut c,
        Message::Remove {
            path: "/secret".into(),
        },
    )
    .await;
    assert_eq!(code(&r), Some(ErrorCode::PermissionDenied), "{r:?}");
    let r = sh_as_root(&mut c, "cat /secret; stat -c %a /secret").await;
    assert_eq!(r.out(), "top\n600\n", "the root-only file changed: {r:?}");

    // What the user may do, it does as itself.
    let r = c.write_file("/tmp/mine", b"m").await;
    assert!(r.error().is_none(), "{r:?}");
    let r = sh(&mut c, "stat -c %u:%g /tmp/mine").await;
    assert_eq!(r.out(), "1000:1000\n", "{r:?}");

    // Control: the same read as root (an explicit opt-in) succeeds, so the
    // probe above would have seen a leak.
    let r = request(
        &mut c,
        Message::AsUser {
            user: "0:0".into(),
            request: Box::new(Message::ReadFile {
                path: "/tmp/rl".into(),
            }),
        },
    )
    .await;
    assert_eq!(r.out(), "top\n", "{r:?}");
    // Only file requests can be wrapped.
    let r = request(
        &mut c,
        Message::AsUser {
            user: "0:0".into(),
            request: Box::new(Message::Exec(ExecRequest {
                argv: vec!["/bin/true".into()],
                ..Default::default()
            })),
        },
    )
    .await;
    assert_eq!(code(&r), Some(ErrorCode::InvalidArgument), "{r:?}");
}

/// Memory the sandbox holds outside any process's resident set (a deleted
/// tmpfs file kept open) fills what /dev/shm may take (half the memory
/// limit), and a workload then asks for the rest. The cgroup's OOM killer
/// must pick the workload, never the agent: the agent keeps serving on the
/// same connection.
#[tokio::test]
async fn the_agent_outlives_an_oom_inside() {
    let mut sb = Sandbox::launch("oom", |s, _| {
        s.limits.memory_mib = Some(48);
    });
    assert!(sb.status.ok, "{:?}", sb.status);
    let mut c = sb.client().await;
    let r = sh(
        &mut c,
        "exec 3>/dev/shm/held; rm /dev/shm/held; \
         dd if=/dev/zero bs=1M count=60 >&3 2>/dev/null; echo fill=$?; \
         dd if=/dev/zero of=/dev/null bs=40M count=1 2>/dev/null; echo dd=$?; \
         cat /proc/self/oom_score_adj",
    )
    .await;
    // /dev/shm stops at half the limit (fill fails with ENOSPC), and the
    // control: the limit was really reached (the allocating writer was
    // killed), and the victim was a workload.
    assert_eq!(r.out(), "fill=1\ndd=137\n1000\n", "{r:?}");
    let r = sh(&mut c, "echo alive").await;
    assert_eq!(r.out(), "alive\n", "{r:?}");
    // The review's case: /dev/shm filled as far as it goes, the memory
    // staying taken after its writer is gone. Filled twice over.
    for _ in 0..2 {
        let r = sh(
            &mut c,
            "dd if=/dev/zero of=/dev/shm/fill bs=1M count=64 2>/dev/null; echo dd=$?",
        )
        .await;
        assert_eq!(r.out(), "dd=1\n", "{r:?}");
    }
    for _ in 0..3 {
        let r = sh(&mut c, "echo alive").await;
        assert_eq!(r.out(), "alive\n", "{r:?}");
    }
    let r = request(
        &mut c,
        Message::Stat {
            path: "/dev/shm/fill".into(),
        },
    )
    .await;
    assert!(r.error().is_none(), "{r:?}");
    assert!(sb.child_alive());
}

/// The helper refuses limits outside the bounds the engine's plan uses
/// (protocol::bounds), with the engine's code; a spec at the bound starts.
/// It once took cpus up to 4096 while the engine stopped at 1024.
#[tokio::test]
async fn limits_outside_the_shared_bounds_are_refused() {
    use lockbox_protocol::bounds::MAX_CPUS;
    let sb = Sandbox::launch("cpus-over", |s, _| s.limits.cpus = Some(MAX_CPUS * 2.0));
    assert!(!sb.status.ok, "{:?}", sb.status);
    assert_eq!(
        sb.status.code,
        Some(ErrorCode::InvalidArgument),
        "{:?}",
        sb.status
    );
    assert!(
        sb.status.error.as_deref().unwrap_or("").contains("cpus"),
        "{:?}",
        sb.status
    );
    // Control: at the bound it launches, so the refusal above is the bound.
    let sb = Sandbox::launch("cpus-at", |s, _| s.limits.cpus = Some(MAX_CPUS));
    assert!(sb.status.ok, "{:?}", sb.status);
}
