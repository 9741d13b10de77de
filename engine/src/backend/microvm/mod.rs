//! The microVM backend: the sandbox is a qemu `microvm` guest whose init
//! is the Lockbox agent (agent/src/guest), and qemu runs confined by
//! `lockbox-helper vmm` (agent/src/vmm). The agent protocol is unchanged;
//! it crosses a virtio-serial port whose host end is `agent.sock` in the
//! sandbox's directory. docs/microvm.md has the design.
//!
//! What the VM cannot do yet is refused up front, naming this backend
//! (`unsupported`), never done differently in silence.

mod asset_check;
pub(crate) mod checkpoint;
mod ckpt_files;
mod disks;
mod host;
mod launch;
mod net;
pub(crate) mod probe;
mod qmp;
mod session;
mod volumes;

use std::path::Path;
use std::time::Duration;

use super::{Backend, BackendInfo, BoxFuture, LaunchRequest, Launched};
use crate::client::AgentClient;
use crate::error::{EngineError, Result};
use crate::plan::Plan;

pub(crate) const MICROVM: &str = "microvm";

/// Boot to the agent's handshake: a hang detector, never a schedule. A TCG
/// boot takes 5-7 s on an idle 2-CPU host and 20-26 s when it is loaded
/// (4x that seen with eight builds beside it); KVM about 1 s. The caller's
/// context still ends the wait whenever it likes.
const BOOT_TIMEOUT: Duration = Duration::from_secs(300);

/// Stateless: any process may connect to any running VM; each connection
/// resets the guest's session first (`session.rs`).
pub(crate) struct MicroVm;

impl MicroVm {
    pub(crate) const fn new() -> MicroVm {
        MicroVm
    }
}

fn unsupported(what: &str) -> EngineError {
    EngineError::unsupported(format!("microvm backend: {what} is not supported yet"))
}

/// What this backend refuses, before anything is made.
fn check(plan: &Plan, req: &LaunchRequest<'_>) -> Result<()> {
    volumes::check(&req.mounts)?;
    net::check(plan, req.restore.is_some())?;
    if plan.limits.disk_mib.is_none() {
        return Err(EngineError::invalid(
            "microvm backend: the writable layer is a disk of a fixed size: disk_mib 0 (unlimited) is not possible",
        ));
    }
    Ok(())
}

impl Backend for MicroVm {
    fn info(&self) -> BackendInfo {
        BackendInfo {
            kind: MICROVM.into(),
            boundary: "guest kernel in a qemu microvm (KVM or TCG, see LOCKBOX_VM_ACCEL); qemu confined: own namespaces, unprivileged uid, no capabilities, no_new_privs, Lockbox seccomp + Landlock + qemu -sandbox, file size limit, cgroup".into(),
        }
    }

    fn launch<'a>(&'a self, req: LaunchRequest<'a>) -> BoxFuture<'a, Result<Launched>> {
        Box::pin(async move {
            check(req.plan, &req)?;
            let home = req
                .dir
                .parent()
                .and_then(Path::parent)
                .ok_or_else(|| EngineError::internal("sandbox dir has no home"))?;
            let host = host::detect(home).await?;
            let helper = crate::paths::find_helper()?;
            let mut launched = match req.restore {
                Some(r) => checkpoint::launch_restored(&helper, &host, &req, r).await?,
                None => launch::launch(&helper, &host, &req).await?,
            };
            launched
                .report
                .enforced
                .push(format!("accel_{}", host.accel.name()));
            host.assets_check.report(&mut launched.report);
            Ok(launched)
        })
    }

    fn connect<'a>(&'a self, dir: &'a Path, name: &'a str) -> BoxFuture<'a, Result<AgentClient>> {
        Box::pin(async move {
            let connect = async {
                let sock = session::reset(dir).await?;
                AgentClient::handshake(sock, name).await
            };
            match tokio::time::timeout(BOOT_TIMEOUT, connect).await {
                Ok(r) => r.map_err(|e| {
                    e.context(format!(
                        "microvm: the guest's agent (log: {})",
                        log_tail(dir)
                    ))
                }),
                Err(_) => Err(EngineError::new(
                    lockbox_protocol::ErrorCode::Timeout,
                    format!(
                        "microvm: the guest did not answer within {BOOT_TIMEOUT:?} (log: {})",
                        log_tail(dir)
                    ),
                )),
            }
        })
    }
}

/// The last lines of the helper's log (qemu's errors; the guest's console
/// only with LOCKBOX_VM_CONSOLE), bounded: the sandbox's directory goes
/// when a create fails.
fn log_tail(dir: &Path) -> String {
    use std::io::{Read, Seek, SeekFrom};
    let mut s = String::new();
    if let Ok(mut f) = std::fs::File::open(dir.join("helper.log")) {
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        let _ = f.seek(SeekFrom::Start(len.saturating_sub(600)));
        let mut b = Vec::new();
        let _ = f.take(600).read_to_end(&mut b);
        s = String::from_utf8_lossy(&b)
            .lines()
            .collect::<Vec<_>>()
            .join(" | ");
    }
    s
}

/// `host.vm_check`: what this host can do for microVMs (contracts C3).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct VmCheck {
    pub qemu: Option<String>,
    pub assets: Option<String>,
    /// "usable", "unusable" or "absent".
    pub kvm: String,
    pub kvm_reason: String,
    /// "kvm", "tcg" or None (no VM can start without LOCKBOX_VM_ACCEL).
    pub default_accel: Option<String>,
    /// Why a microVM cannot start here, or what it will use.
    pub reason: String,
}

pub async fn vm_check(home: &Path) -> VmCheck {
    let qemu = host::qemu();
    let assets = host::assets();
    let mut c = VmCheck {
        qemu: qemu.as_ref().map(|p| p.to_string_lossy().into_owned()),
        assets: assets
            .as_ref()
            .ok()
            .map(|p| p.to_string_lossy().into_owned()),
        ..Default::default()
    };
    let probe = match (&qemu, &assets) {
        (Some(q), Ok(a)) => probe::kvm(home, q, a).await,
        _ if !Path::new("/dev/kvm").exists() => probe::Probe {
            key: String::new(),
            verdict: probe::Verdict::Absent,
            reason: "/dev/kvm does not exist".into(),
        },
        _ => probe::Probe {
            key: String::new(),
            verdict: probe::Verdict::Unusable,
            reason: "not probed: qemu or the VM assets are missing".into(),
        },
    };
    c.kvm = probe.verdict.name().into();
    c.kvm_reason = probe.reason;
    let env = host::accel_from_env();
    c.default_accel = match (&env, probe.verdict) {
        (Ok(Some(a)), _) => Some(a.name().into()),
        (_, probe::Verdict::Usable) => Some("kvm".into()),
        _ => None,
    };
    c.reason = if qemu.is_none() {
        "qemu-system-x86_64 is not installed (Debian: qemu-system-x86)".into()
    } else if let Err(m) = &assets {
        m.clone()
    } else if let Err(e) = &env {
        e.message.clone()
    } else if let Some(a) = &c.default_accel {
        format!("microVMs run here with {a}")
    } else {
        format!(
            "KVM is {}; set {}=tcg for software emulation",
            c.kvm,
            host::ACCEL_ENV
        )
    };
    c
}

/// Drops the cached erofs layers of images no longer stored (called where
/// images go: remove, prune, and the engine's open).
pub(crate) fn prune_layer_cache(home: &Path, stored: &std::collections::HashSet<String>) -> usize {
    disks::prune_layer_cache(&disks::cache_in(home), stored)
}
