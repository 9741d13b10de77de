//! Starts a microVM sandbox: its disks, qemu's command line (paths as qemu
//! sees them in its jail), and `lockbox-helper vmm`, which confines and
//! supervises qemu and reports one status line as `run` does.

use std::ffi::OsStr;
use std::io::Write;
use std::path::Path;
use std::time::Duration;

use lockbox_protocol::{LaunchSpec, Limits};
use serde_json::json;

use super::disks;
use super::host::{Accel, Host, INITRAMFS, KERNEL};
use super::volumes;
use crate::backend::process::{spawn_host_process, watch_exit, HostProcess, Started};
use crate::backend::{LaunchRequest, Launched};
use crate::error::{EngineError, Result};

/// The workload's memory when the caller set no limit: a VM has a size.
pub const DEFAULT_MEMORY_MIB: u64 = 512;
/// Added to the workload's memory for the guest kernel, its page tables
/// and the agent (the guest's cgroup holds the workload to its limit).
pub const GUEST_KERNEL_MIB: u64 = 96;
/// qemu's own memory beyond the guest's: with TCG, its translation cache
/// (`tb-size`) and the code around it; the cgroup around qemu allows it.
const TCG_CACHE_MIB: u64 = 64;
const VMM_OVERHEAD_MIB: u64 = 160;
/// qemu's threads (vCPUs, its I/O thread pool, RCU): a bound, not a need.
const VMM_PIDS: u64 = 256;
/// How long the helper may take to set up the jail and report.
const STATUS_TIMEOUT: Duration = Duration::from_secs(30);
pub const CMDLINE: &str =
    "console=ttyS0 quiet panic=-1 rdinit=/init tsc_early_khz=2000000 lpj=4000000";

/// The VM's size for a plan's limits: (guest MiB, vCPUs, workload MiB).
pub fn size(limits: &Limits) -> (u64, u32, u64) {
    let work = limits.memory_mib.unwrap_or(DEFAULT_MEMORY_MIB);
    let cpus = limits.cpus.map_or(1, |c| c.ceil().max(1.0) as u32);
    (work + GUEST_KERNEL_MIB, cpus, work)
}

/// qemu's arguments that do not depend on the sandbox's disks.
pub fn base_args(accel: Accel, guest_mib: u64, cpus: u32) -> Vec<String> {
    let mut a: Vec<String> = vec![
        "-M".into(),
        "microvm,x-option-roms=off,isa-serial=on,rtc=off".into(),
    ];
    match accel {
        Accel::Tcg => a.extend([
            "-accel".into(),
            format!("tcg,tb-size={TCG_CACHE_MIB}"),
            "-cpu".into(),
            "max".into(),
        ]),
        Accel::Kvm => a.extend(["-accel".into(), "kvm".into(), "-cpu".into(), "host".into()]),
    }
    a.extend([
        "-m".into(),
        guest_mib.to_string(),
        "-smp".into(),
        cpus.to_string(),
        "-nodefaults".into(),
        "-no-user-config".into(),
        "-display".into(),
        "none".into(),
        "-no-reboot".into(),
        "-sandbox".into(),
        "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny".into(),
        "-nic".into(),
        "none".into(),
        // The guest's console is dropped unless asked for (a debug switch:
        // it goes to helper.log, which the guest could then fill). `null`,
        // not `none`: without a serial port the guest has no console and
        // its init starts without stdin/stdout/stderr.
        "-serial".into(),
        if std::env::var_os("LOCKBOX_VM_CONSOLE").is_some() {
            "stdio".into()
        } else {
            "null".into()
        },
        "-kernel".into(),
        format!("/vm/{KERNEL}"),
        "-initrd".into(),
        format!("/vm/{INITRAMFS}"),
        "-append".into(),
        CMDLINE.into(),
        "-device".into(),
        "virtio-serial-device".into(),
        "-chardev".into(),
        "socket,id=agent,fd=3,server=on,wait=off".into(),
        "-device".into(),
        "virtserialport,chardev=agent,name=lockbox.agent".into(),
    ]);
    a
}

fn drive(args: &mut Vec<String>, id: &str, file: &str, read_only: bool) {
    let ro = if read_only { ",readonly=on" } else { "" };
    args.extend([
        "-drive".into(),
        format!("id={id},file={file},format=raw,if=none{ro}"),
        "-device".into(),
        format!("virtio-blk-device,drive={id},serial=lockbox-{id}"),
    ]);
}

/// Host paths of the cache of layer images, beside the sandboxes.
pub fn cache_dir(sandbox_dir: &Path) -> std::path::PathBuf {
    let home = sandbox_dir
        .parent()
        .and_then(Path::parent)
        .unwrap_or(sandbox_dir);
    disks::cache_in(home)
}

pub async fn launch(helper: &Path, host: &Host, req: &LaunchRequest<'_>) -> Result<Launched> {
    let plan = req.plan;
    let dir = req.dir;
    let (guest_mib, cpus, work_mib) = size(&plan.limits);
    let mut args = base_args(host.accel, guest_mib, cpus);
    args.extend(super::qmp::args());
    let s = |p: &Path| p.to_string_lossy().into_owned();
    let mut binds =
        vec![json!({"src": s(&host.assets), "dst": "/vm", "writable": false, "own": false})];

    // Disks: built off the async threads (mkfs of a large image takes a while).
    let digest = plan.image.as_ref().map(|i| i.digest.clone());
    let layers = plan.layers.clone();
    let cache = cache_dir(dir);
    let d = dir.to_path_buf();
    let disk_mib = plan
        .limits
        .disk_mib
        .unwrap_or(crate::plan::DEFAULT_DISK_MIB);
    let images = tokio::task::spawn_blocking(move || -> Result<Vec<std::path::PathBuf>> {
        let imgs = layers
            .iter()
            .enumerate()
            .map(|(i, l)| disks::layer_image(&cache, &d, digest.as_deref(), i, l))
            .collect::<Result<Vec<_>>>()?;
        disks::writable(&d.join("rw.img"), disk_mib)?;
        Ok(imgs)
    })
    .await
    .map_err(|e| EngineError::internal(format!("disk task: {e}")))??;

    let mut serials = Vec::new();
    for (i, img) in images.iter().enumerate() {
        let id = format!("l{i}");
        let at = format!("/layers/{i}.erofs");
        drive(&mut args, &id, &at, true);
        binds.push(json!({"src": s(img), "dst": at, "writable": false, "own": false}));
        serials.push(format!("lockbox-{id}"));
    }
    drive(&mut args, "rw", "/disk/rw.img", false);
    binds.push(json!({"src": s(&dir.join("rw.img")), "dst": "/disk/rw.img", "writable": true, "own": true}));

    let spec = LaunchSpec {
        name: plan.name.clone(),
        id: req.id.to_string(),
        hostname: plan.hostname.clone(),
        env: plan.env.clone(),
        workdir: plan.workdir.clone(),
        user: plan.user.clone(),
        limits: Limits {
            memory_mib: Some(work_mib),
            ..plan.limits.clone()
        },
        ..Default::default()
    };
    let shares = volumes::plan(&req.mounts, guest_mib);
    args.extend(shares.qemu_args.iter().cloned());
    let network = super::net::wanted(plan);
    if network {
        args.extend(super::net::qemu_args());
    }
    let cfg = json!({"spec": spec, "layers": serials, "upper": "lockbox-rw", "mounts": shares.guest, "network": network, "clock_unix_ms": now_unix_ms()});
    let cfg_path = dir.join("config.img");
    disks::config(&cfg_path, &serde_json::to_vec(&cfg).unwrap_or_default())?;
    drive(&mut args, "cfg", "/disk/config.img", true);
    // The guest waits for the config disk only when told it is coming.
    if let Some(i) = args.iter().position(|a| a == CMDLINE) {
        args[i] = format!("{CMDLINE} lockbox.config=disk");
    }
    binds.push(
        json!({"src": s(&cfg_path), "dst": "/disk/config.img", "writable": false, "own": true}),
    );

    let vmm_mib = guest_mib
        + VMM_OVERHEAD_MIB
        + shares.overhead_mib()
        + if host.accel == Accel::Tcg {
            TCG_CACHE_MIB
        } else {
            0
        };
    let vmm = json!({
        "id": req.id,
        "qemu": s(&host.qemu),
        "args": args,
        "binds": binds,
        "socket": s(&dir.join("agent.sock")),
        "limits": Limits {
            memory_mib: Some(vmm_mib),
            cpus: plan.limits.cpus,
            pids: Some(VMM_PIDS),
            disk_mib: None,
            nofile: None,
        },
        "kvm": host.accel == Accel::Kvm,
        "qmp": s(&dir.join(super::qmp::SOCKET)),
        "shares": shares.vmm,
        "net": network.then(|| super::net::vmm(dir, plan)),
    });
    spawn_helper(helper, dir, &vmm, plan.detached).await
}

/// Starts `lockbox-helper vmm` and reads its status line.
pub async fn spawn_helper(
    helper: &Path,
    dir: &Path,
    vmm: &serde_json::Value,
    detached: bool,
) -> Result<Launched> {
    let path = dir.join("vmm.json");
    std::fs::File::create(&path)
        .and_then(|mut f| f.write_all(&serde_json::to_vec(vmm).unwrap_or_default()))
        .map_err(|e| EngineError::io(path.display(), e))?;
    let Started {
        child,
        lifeline,
        status,
        ..
    } = spawn_host_process(HostProcess {
        helper,
        args: &[OsStr::new("vmm"), path.as_os_str()],
        dir,
        detached,
        who: "lockbox-helper vmm",
        what: "microvm",
        timeout: STATUS_TIMEOUT,
    })
    .await?;
    let child_pid = child.id();
    Ok(Launched {
        pid: child_pid,
        report: status.report.unwrap_or_default(),
        lifeline,
        exited: watch_exit(child_pid, Some(child)),
    })
}

/// The guest sets its clock from this (it has no RTC: agent/src/guest/clock.rs).
fn now_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
