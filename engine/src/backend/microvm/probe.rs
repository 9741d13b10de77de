//! Whether KVM can boot the guest here. Some hosts expose a /dev/kvm on
//! which the guest kernel hangs (a nested, paravirtual KVM), so the answer
//! is a real boot to the agent's handshake, bounded by a timeout; it runs
//! at most once per (host kernel release, guest kernel) and is cached as
//! JSON under the engine's home.

use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::json;

use super::host::{Accel, KERNEL};
use crate::client::AgentClient;

/// A guest boots to its handshake in 1-2 s under a working KVM.
const PROBE_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Usable,
    Unusable,
    Absent,
}

impl Verdict {
    pub fn name(self) -> &'static str {
        match self {
            Verdict::Usable => "usable",
            Verdict::Unusable => "unusable",
            Verdict::Absent => "absent",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Probe {
    pub key: String,
    pub verdict: Verdict,
    pub reason: String,
}

fn key(assets: &Path) -> String {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let kernel = std::fs::read(assets.join(KERNEL)).unwrap_or_default();
    let k = super::disks::sha256_hex(&kernel);
    super::disks::sha256_hex(format!("{}\0{k}", release.trim()).as_bytes())
}

/// The cached verdict for this host and guest kernel, probing (once, under
/// a lock shared by every process using this home) if there is none.
pub async fn kvm(state_dir: &Path, qemu: &Path, assets: &Path) -> Probe {
    if !Path::new("/dev/kvm").exists() {
        return Probe {
            key: String::new(),
            verdict: Verdict::Absent,
            reason: "/dev/kvm does not exist".into(),
        };
    }
    let dir = state_dir.join("vm");
    let key = key(assets);
    let cache = dir.join("kvm-probe.json");
    let cached = || -> Option<Probe> {
        let p: Probe = serde_json::from_slice(&std::fs::read(&cache).ok()?).ok()?;
        (p.key == key).then_some(p)
    };
    if let Some(p) = cached() {
        return p;
    }
    static IN_PROCESS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    let _g = IN_PROCESS.lock().await;
    let _ = std::fs::create_dir_all(&dir);
    let lock_path = dir.join("kvm-probe.lock");
    // The other process probing holds it at most PROBE_TIMEOUT and a bit.
    let lock = tokio::task::spawn_blocking(move || -> Option<std::fs::File> {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(lock_path)
            .ok()?;
        // SAFETY: flock on an fd we own.
        (unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } == 0).then_some(f)
    })
    .await
    .ok()
    .flatten();
    if let Some(p) = cached() {
        return p;
    }
    let (verdict, reason) = match boot(&dir, qemu, assets).await {
        Ok(()) => (
            Verdict::Usable,
            "a guest booted to its handshake under KVM".to_string(),
        ),
        Err(r) => (Verdict::Unusable, r),
    };
    let p = Probe {
        key,
        verdict,
        reason,
    };
    if lock.is_some() {
        let tmp = dir.join(format!(".kvm-probe-{}", crate::names::new_id()));
        if std::fs::write(&tmp, serde_json::to_vec(&p).unwrap_or_default()).is_ok() {
            let _ = std::fs::rename(&tmp, &cache);
        }
    }
    p
}

/// One bare boot (no disks: the initramfs's agent answers) under KVM.
async fn boot(dir: &Path, qemu: &Path, assets: &Path) -> Result<(), String> {
    let helper = crate::paths::find_helper().map_err(|e| e.message)?;
    let id = format!("kvmprobe-{}", crate::names::new_id());
    let run = dir.join(&id);
    std::fs::create_dir(&run).map_err(|e| format!("{}: {e}", run.display()))?;
    let s = |p: &Path| p.to_string_lossy().into_owned();
    let vmm = json!({
        "id": id,
        "qemu": s(qemu),
        "args": super::launch::base_args(Accel::Kvm, 256, 1),
        "binds": [{"src": s(assets), "dst": "/vm", "writable": false, "own": false}],
        "socket": s(&run.join("agent.sock")),
        "limits": {"memory_mib": 512, "pids": 256},
        "kvm": true,
    });
    let r = async {
        let mut launched = super::launch::spawn_helper(&helper, &run, &vmm, false)
            .await
            .map_err(|e| e.message)?;
        let hello = tokio::time::timeout(PROBE_TIMEOUT, AgentClient::connect(&run, "")).await;
        drop(launched.lifeline.take());
        crate::backend::process::kill_verified(
            launched.pid,
            crate::state::process_start_time(launched.pid).unwrap_or(0),
        );
        let _ = crate::backend::process::wait_exited(&mut launched.exited, Duration::from_secs(5)).await;
        match hello {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(format!("the guest did not answer under KVM: {}", e.message)),
            Err(_) => Err(format!(
                "a guest did not boot within {PROBE_TIMEOUT:?} under this KVM (a nested KVM on which the guest kernel hangs)"
            )),
        }
    }
    .await;
    let _ = std::fs::remove_dir_all(&run);
    r
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    /// `host.vm_check` on this host (`make test-vm-backend` sets
    /// LOCKBOX_VM_ASSETS and LOCKBOX_HELPER): a verdict with its reason,
    /// bounded even where KVM hangs the guest, and the second call answers
    /// from the cache without booting anything.
    #[tokio::test(flavor = "multi_thread")]
    async fn vm_check_is_bounded_and_cached() {
        if std::env::var_os(super::super::host::ASSETS_ENV).is_none() {
            eprintln!("skipped: LOCKBOX_VM_ASSETS is not set (make test-vm-backend)");
            return;
        }
        let home = tempfile::tempdir().unwrap();
        let t0 = Instant::now();
        let first = super::super::vm_check(home.path()).await;
        let took = t0.elapsed();
        eprintln!("vm_check: {first:?} in {took:?}");
        assert!(
            took < super::PROBE_TIMEOUT + Duration::from_secs(15),
            "{took:?}"
        );
        assert!(first.qemu.is_some() && first.assets.is_some(), "{first:?}");
        assert!(
            ["usable", "unusable", "absent"].contains(&first.kvm.as_str()),
            "{first:?}"
        );
        assert!(!first.kvm_reason.is_empty() && !first.reason.is_empty());
        match std::env::var(super::super::host::ACCEL_ENV).ok().as_deref() {
            Some(a @ ("tcg" | "kvm")) => assert_eq!(first.default_accel.as_deref(), Some(a)),
            _ => assert_eq!(
                first.default_accel.as_deref() == Some("kvm"),
                first.kvm == "usable"
            ),
        }
        if first.kvm != "absent" {
            let cached: super::Probe = serde_json::from_slice(
                &std::fs::read(home.path().join("vm/kvm-probe.json")).unwrap(),
            )
            .unwrap();
            assert_eq!(cached.verdict.name(), first.kvm);
            // No boot left behind, no probe directory either.
            let left: Vec<_> = std::fs::read_dir(home.path().join("vm"))
                .unwrap()
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("kvmprobe-"))
                .collect();
            assert!(left.is_empty(), "{left:?}");
        }
        // From the cache: no boot (here one lasts the 20 s probe timeout).
        // The assets are hashed again, seconds in a debug build on a
        // loaded machine: 2 s failed there, 10 s is still under a probe.
        let t1 = Instant::now();
        let second = super::super::vm_check(home.path()).await;
        assert_eq!(second, first);
        assert!(t1.elapsed() < Duration::from_secs(10), "{:?}", t1.elapsed());
    }
}
