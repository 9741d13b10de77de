//! The microVM guest (issue 14 groundwork): the initramfs built by
//! `make vm-assets` boots under qemu's TCG with lockbox-helper as /init,
//! and the host reaches the agent protocol through the VMM's Unix socket
//! for the virtio-serial port `lockbox.agent`.
//!
//! Needs LOCKBOX_VM_ASSETS (a directory with vmlinuz, initramfs.img and
//! assets.json) and qemu-system-x86_64; skipped with the reason otherwise
//! (`make test-vm` provides both).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::Client;
use lockbox_protocol::*;

/// TCG boots in 5-16 s here (2 cores, loaded); a guest that hangs (the
/// TSC calibration hang without tsc_early_khz) must fail, not block.
const BOOT_LIMIT: Duration = Duration::from_secs(120);
const QEMU: &str = "qemu-system-x86_64";

struct Assets {
    dir: PathBuf,
    kernel_release: String,
    cmdline: String,
}

fn assets() -> Option<Assets> {
    let Some(dir) = std::env::var_os("LOCKBOX_VM_ASSETS").map(PathBuf::from) else {
        eprintln!("skipped: LOCKBOX_VM_ASSETS is not set (make test-vm sets it)");
        return None;
    };
    if Command::new(QEMU).arg("--version").output().is_err() {
        eprintln!("skipped: {QEMU} is not installed (qemu-system-x86)");
        return None;
    }
    let json = std::fs::read_to_string(dir.join("assets.json"))
        .unwrap_or_else(|e| panic!("LOCKBOX_VM_ASSETS={}: assets.json: {e}", dir.display()));
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    Some(Assets {
        kernel_release: v["kernel"]["release"].as_str().unwrap().into(),
        cmdline: v["cmdline"].as_str().unwrap().into(),
        dir,
    })
}

/// One qemu process; killed and reaped on drop, whatever happened.
struct Vm {
    child: Child,
    dir: tempfile::TempDir,
}

impl Vm {
    fn boot(a: &Assets) -> Vm {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("agent.sock");
        let console = std::fs::File::create(dir.path().join("console.log")).unwrap();
        let child = Command::new(QEMU)
            .args(["-M", "microvm,x-option-roms=off,isa-serial=on,rtc=off"])
            .args(["-accel", "tcg", "-cpu", "max", "-m", "256", "-smp", "1"])
            .args(["-nodefaults", "-no-user-config", "-nographic", "-no-reboot"])
            // -nodefaults leaves the serial port unconnected: the guest's
            // console goes to console.log, shown when a boot fails.
            .args(["-serial", "stdio"])
            .arg("-kernel")
            .arg(a.dir.join("vmlinuz"))
            .arg("-initrd")
            .arg(a.dir.join("initramfs.img"))
            .args(["-append", &a.cmdline])
            .args(["-device", "virtio-serial-device"])
            .arg("-chardev")
            .arg(format!(
                "socket,id=agent,path={},server=on,wait=off",
                sock.display()
            ))
            .args(["-device", "virtserialport,chardev=agent,name=lockbox.agent"])
            .stdin(Stdio::null())
            .stdout(console)
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        Vm { child, dir }
    }

    fn sock(&self) -> PathBuf {
        self.dir.path().join("agent.sock")
    }

    fn console(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("console.log")).unwrap_or_default()
    }

    /// Connects and completes the Hello handshake, bounded.
    async fn handshake(&self, limit: Duration) -> Client {
        let deadline = Instant::now() + limit;
        // qemu makes the socket shortly after it starts.
        while !self.sock().exists() {
            assert!(Instant::now() < deadline, "qemu made no socket");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let connect = async {
            let (s, _) = reset(&self.sock()).await;
            Client::handshake(s).await
        };
        match tokio::time::timeout(left, connect).await {
            Ok(c) => c,
            Err(_) => panic!(
                "no handshake within {limit:?}; guest console:\n{}",
                self.console()
            ),
        }
    }

    /// Waits for qemu to exit on its own, bounded.
    fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return Some(st);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What a session reset discarded before the echo: how many bytes, and
/// the first of them.
#[derive(Default)]
struct Discarded {
    len: usize,
    head: Vec<u8>,
}

/// The host side of the session reset on a new connection, as the
/// engine does it (engine/src/backend/microvm/session.rs).
async fn reset(sock: &Path) -> (tokio::net::UnixStream, Discarded) {
    reset_on(tokio::net::UnixStream::connect(sock).await.unwrap()).await
}

/// A marker with a fresh token, then the guest's bytes are discarded
/// until the token's echo.
async fn reset_on(mut s: tokio::net::UnixStream) -> (tokio::net::UnixStream, Discarded) {
    use lockbox_protocol::reset::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut token: Token = [0; TOKEN_LEN];
    std::io::Read::read_exact(
        &mut std::fs::File::open("/dev/urandom").unwrap(),
        &mut token,
    )
    .unwrap();
    s.write_all(&encode(&MARKER_MAGIC, &token)).await.unwrap();
    let mut finder = Finder::new(ECHO_MAGIC);
    let mut d = Discarded::default();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = s.read(&mut buf).await.unwrap();
        assert!(n > 0, "the port closed before the echo");
        let mut rest = &buf[..n];
        loop {
            match finder.feed(rest) {
                Found::Token {
                    token: t,
                    start,
                    end,
                } if t == token => {
                    assert_eq!(end, rest.len(), "bytes after the echo, before Hello");
                    d.len += start;
                    let room = 4096usize.saturating_sub(d.head.len());
                    d.head.extend_from_slice(&rest[..start.min(room)]);
                    return (s, d);
                }
                Found::Token { end, .. } => {
                    d.len += end;
                    rest = &rest[end..];
                }
                Found::Nothing => {
                    d.len += rest.len();
                    let room = 4096usize.saturating_sub(d.head.len());
                    d.head.extend_from_slice(&rest[..rest.len().min(room)]);
                    break;
                }
            }
        }
        assert!(d.len < 64 << 20, "no echo after {} bytes", d.len);
    }
}

fn exec(argv: &[&str]) -> ExecRequest {
    ExecRequest {
        argv: argv.iter().map(|s| s.to_string()).collect(),
        env: vec!["PATH=/bin".into()],
        cwd: "/".into(),
        ..Default::default()
    }
}

async fn run(vm: &Vm, c: &mut Client, argv: &[&str]) -> common::OpResult {
    match tokio::time::timeout(Duration::from_secs(30), c.exec_with(exec(argv), None)).await {
        Ok(r) => r,
        Err(_) => panic!("{argv:?} unanswered; guest console:\n{}", vm.console()),
    }
}

/// Runs `argv` as the session's first op and returns its output,
/// asserting that every frame read is that op's and none carries the
/// first session's flood (op `stale`).
async fn only_own_frames(c: &mut Client, stale: u32, argv: &[&str]) -> String {
    let id = c.start(Message::Exec(exec(argv))).await;
    let mut out = Vec::new();
    loop {
        let f = tokio::time::timeout(Duration::from_secs(30), read_frame(&mut c.r))
            .await
            .expect("the new session answered")
            .unwrap();
        assert_eq!(
            f.id, id,
            "a frame for op {} (the first session's flood was op {stale}) reached a later session",
            f.id
        );
        assert!(
            !String::from_utf8_lossy(&f.payload).contains("stale-session-one"),
            "the first session's output reached a later one"
        );
        if f.kind == FrameKind::Data {
            out.extend_from_slice(&f.payload);
        }
        if f.kind == FrameKind::Control && matches!(f.message(), Ok(Message::Exited { .. })) {
            return String::from_utf8_lossy(&out).into_owned();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guest_boots_and_serves_the_agent_protocol() {
    let Some(a) = assets() else { return };
    let mut vm = Vm::boot(&a);
    let t0 = Instant::now();
    let mut c = vm.handshake(BOOT_LIMIT).await;
    eprintln!("boot to handshake: {:?}", t0.elapsed());

    let r = run(&vm, &mut c, &["echo", "hello from the guest"]).await;
    assert_eq!(r.exited(), (Some(0), None, false), "{r:?}");
    assert_eq!(r.out(), "hello from the guest\n");

    // It ran on the guest kernel, not the host's: the control is the host
    // itself, which must report another release for this to mean anything.
    let r = run(&vm, &mut c, &["cat", "/proc/sys/kernel/osrelease"]).await;
    assert_eq!(r.out().trim(), a.kernel_release);
    let host = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    assert_ne!(
        host.trim(),
        a.kernel_release,
        "host runs the guest kernel: no control"
    );

    // A session reset while the guest floods the first session (its
    // output thread blocked on the port: the host stopped reading): the
    // flood's bytes are in flight ahead of the echo, deterministically
    // (the control: they were really there, and without the reset would
    // have been read as this session's frames); none reaches the second
    // session. The same connection is reused: the reset, not a new
    // connection, is what delimits sessions.
    let flood = c
        .start(Message::Exec(exec(&[
            "sh",
            "-c",
            "exec yes stale-session-one",
        ])))
        .await;
    let mut seen = 0;
    while seen < 256 * 1024 {
        let f = read_frame(&mut c.r).await.unwrap();
        seen += f.payload.len();
    }
    let sock = c.r.into_inner().reunite(c.w.into_inner()).unwrap();
    // Until the flood has backed up into the socket (64 KiB unread): those
    // bytes are in flight ahead of any echo, whatever the guest's timing.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        use std::os::fd::AsRawFd;
        let mut b = vec![0u8; 64 * 1024];
        // SAFETY: recv into a local buffer of its length; peek only.
        let n = unsafe {
            libc::recv(
                sock.as_raw_fd(),
                b.as_mut_ptr().cast(),
                b.len(),
                libc::MSG_PEEK | libc::MSG_DONTWAIT,
            )
        };
        if n >= b.len() as isize {
            break;
        }
        assert!(Instant::now() < deadline, "the flood never backed up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let t0 = Instant::now();
    let (s, discarded) = reset_on(sock).await;
    eprintln!(
        "reset during a flood: {:?}, {} stale bytes discarded",
        t0.elapsed(),
        discarded.len
    );
    assert!(
        discarded.len >= 64 * 1024
            && String::from_utf8_lossy(&discarded.head).contains("stale-session-one"),
        "control: no stale bytes of the first session were in flight ({} bytes: {:?})",
        discarded.len,
        String::from_utf8_lossy(&discarded.head)
    );
    let mut c = Client::handshake(s).await;
    let out = only_own_frames(
        &mut c,
        flood,
        &[
            "sh",
            "-c",
            "busybox pkill yes 2>/dev/null; echo second session",
        ],
    )
    .await;
    assert_eq!(out, "second session\n");

    // Reattach: this connection goes, a new one resets and is served
    // (what a second engine process does).
    drop(c);
    let t0 = Instant::now();
    let (s, discarded) = reset(&vm.sock()).await;
    eprintln!(
        "reattach on a new connection: {:?}, {} stale bytes discarded",
        t0.elapsed(),
        discarded.len
    );
    let mut c = Client::handshake(s).await;
    let out = only_own_frames(&mut c, flood, &["echo", "third session"]).await;
    assert_eq!(out, "third session\n");

    // Shutdown ends PID 1, the guest kernel panics (panic=-1) and qemu
    // (-no-reboot) exits by itself: nothing is left running.
    let r = tokio::time::timeout(Duration::from_secs(30), c.request(Message::Shutdown))
        .await
        .expect("shutdown answered");
    assert!(matches!(r.replies.last(), Some(Message::Ok)), "{r:?}");
    let st = vm.wait_exit(Duration::from_secs(60));
    assert!(
        st.is_some(),
        "qemu still running after the guest's shutdown"
    );
    let dir: PathBuf = vm.dir.path().into();
    drop(vm);
    assert!(
        !Path::new(&dir).exists(),
        "the VM's directory (socket) remains"
    );
}

/// Boot-to-handshake time, median of LOCKBOX_VM_BOOTS (3) cold boots.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn bench_guest_boot() {
    let Some(a) = assets() else { return };
    let n: usize = std::env::var("LOCKBOX_VM_BOOTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let mut times = Vec::new();
    for _ in 0..n {
        let vm = Vm::boot(&a);
        let t0 = Instant::now();
        let mut c = vm.handshake(BOOT_LIMIT).await;
        let boot = t0.elapsed();
        let r = run(&vm, &mut c, &["echo", "x"]).await;
        assert_eq!(r.out(), "x\n");
        eprintln!(
            "boot to handshake: {boot:?}, to first exec output: {:?}",
            t0.elapsed()
        );
        times.push(boot);
    }
    times.sort();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    eprintln!(
        "guest boot (TCG) to handshake: median {:?} of {n} (min {:?}, max {:?}); loadavg {}",
        times[n / 2],
        times[0],
        times[n - 1],
        load.trim()
    );
}
