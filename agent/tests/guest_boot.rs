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
        match tokio::time::timeout(left, Client::connect(&self.sock().to_string_lossy())).await {
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

    // No reattach here: a virtio-serial port has no connection
    // boundary, so frames of a closed session can reach the next one
    // (docs/microvm.md, "What is left").

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
