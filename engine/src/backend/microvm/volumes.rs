//! Volumes and tmpfs mounts of a VM sandbox (docs/microvm.md, "Volumes").
//!
//! A volume reaches the guest as a virtio-fs share: one `virtiofsd` per
//! volume, run by `lockbox-helper vmm` in its own jail (agent/src/vmm/
//! share.rs) that shows it only that directory, read-only when the volume
//! is; qemu's `vhost-user-fs-device` is its other end, over a socket the
//! helper connects before either process starts, so neither names a path.
//! vhost-user needs the guest's RAM in shared memory (a memfd), which
//! virtiofsd maps. A tmpfs mount is made by the guest itself, in guest
//! RAM. The guest mounts both in the plan's order (agent/src/guest/
//! volumes.rs), from the list this module puts in the config disk.

use lockbox_protocol::MountSpec;
use serde_json::{json, Value};

use crate::error::{EngineError, Result};

/// Where Debian's qemu-system-common puts the C virtiofsd (qemu 7.2);
/// the second is where the Rust one installs itself.
const VIRTIOFSD_CANDIDATES: &[&str] = &["/usr/lib/qemu/virtiofsd", "/usr/libexec/virtiofsd"];
/// Each share is a virtio-mmio device and a process: a bound, not a need.
const MAX_SHARES: usize = 8;
/// qemu's fd for share i is SHARE_FD_BASE + i (the helper puts the
/// connected vhost-user socket there).
const SHARE_FD_BASE: usize = 40;
/// Added to the VMM cgroup's memory per share: virtiofsd itself (its
/// mapping of guest RAM is the memfd qemu's cgroup already pays for).
pub const SHARE_OVERHEAD_MIB: u64 = 32;
/// The memfd backend's id in qemu's command line.
const MEM_ID: &str = "lbmem";

/// What launch.rs adds for the sandbox's mounts.
#[derive(Debug, Default)]
pub struct Shares {
    /// qemu arguments: the shared memory backend and one device per share.
    pub qemu_args: Vec<String>,
    /// For `lockbox-helper vmm` (VmmSpec::shares).
    pub vmm: Vec<Value>,
    /// For the guest (config disk `mounts`), in the plan's order.
    pub guest: Vec<Value>,
}

impl Shares {
    /// The VMM cgroup's extra memory for the virtiofsd processes.
    pub fn overhead_mib(&self) -> u64 {
        self.vmm.len() as u64 * SHARE_OVERHEAD_MIB
    }
}

pub fn virtiofsd() -> Option<&'static str> {
    VIRTIOFSD_CANDIDATES
        .iter()
        .copied()
        .find(|p| std::path::Path::new(p).is_file())
}

fn unsupported(what: &str) -> EngineError {
    EngineError::unsupported(format!("microvm backend: {what}"))
}

/// Refuses what a VM cannot share, before anything is made.
pub fn check(mounts: &[MountSpec]) -> Result<()> {
    let binds = mounts
        .iter()
        .filter(|m| matches!(m, MountSpec::Bind { .. }))
        .count();
    if binds == 0 {
        return Ok(());
    }
    if binds > MAX_SHARES {
        return Err(EngineError::invalid(format!(
            "microvm backend: at most {MAX_SHARES} volumes"
        )));
    }
    if virtiofsd().is_none() {
        return Err(unsupported(
            "volumes need virtiofsd, which is not installed (Debian: qemu-system-common)",
        ));
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(unsupported(
            "volumes need root: virtiofsd writes as the guest's users, which needs a range of host ids",
        ));
    }
    for m in mounts {
        if let MountSpec::Bind { source, .. } = m {
            // The engine resolved the path without links; a file volume
            // has no directory to share.
            let meta = std::fs::symlink_metadata(source)
                .map_err(|e| EngineError::io(source.as_str(), e))?;
            if !meta.is_dir() {
                return Err(unsupported(&format!(
                    "a volume of a single file ({source}): share its directory"
                )));
            }
        }
    }
    Ok(())
}

/// The devices, helper entries and guest mounts for `mounts`; `guest_mib`
/// sizes the shared memory backend (it replaces the guest's RAM).
pub fn plan(mounts: &[MountSpec], guest_mib: u64) -> Shares {
    let mut s = Shares::default();
    let daemon = virtiofsd().unwrap_or(VIRTIOFSD_CANDIDATES[0]);
    for m in mounts {
        match m {
            MountSpec::Bind {
                source,
                target,
                read_only,
            } => {
                let i = s.vmm.len();
                let tag = format!("lockbox-v{i}");
                let fd = SHARE_FD_BASE + i;
                s.qemu_args.extend([
                    "-chardev".into(),
                    format!("socket,id=vfs{i},fd={fd}"),
                    "-device".into(),
                    format!("vhost-user-fs-device,chardev=vfs{i},tag={tag}"),
                ]);
                s.vmm.push(json!({
                    "src": source,
                    "read_only": read_only,
                    "qemu_fd": fd,
                    "virtiofsd": daemon,
                }));
                s.guest.push(json!({
                    "kind": "share",
                    "tag": tag,
                    "target": target,
                    "read_only": read_only,
                }));
            }
            MountSpec::Tmpfs { target, size_mib } => s.guest.push(json!({
                "kind": "tmpfs",
                "target": target,
                "size_mib": size_mib,
            })),
        }
    }
    if !s.vmm.is_empty() {
        // vhost-user: the daemon maps the guest's RAM, so it must be a
        // shareable memfd rather than qemu's private anonymous memory; and
        // libvhost-user serves virtio 1.0 only, while microvm's virtio-mmio
        // transports default to legacy.
        s.qemu_args.splice(
            0..0,
            [
                "-global".into(),
                "virtio-mmio.force-legacy=false".into(),
                "-object".into(),
                format!("memory-backend-memfd,id={MEM_ID},size={guest_mib}M,share=on"),
                "-machine".into(),
                format!("memory-backend={MEM_ID}"),
            ],
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tmpfs_only_needs_no_device() {
        let s = plan(
            &[MountSpec::Tmpfs {
                target: "/scratch".into(),
                size_mib: 8,
            }],
            608,
        );
        assert!(s.qemu_args.is_empty() && s.vmm.is_empty());
        assert_eq!(s.guest.len(), 1);
        assert_eq!(s.overhead_mib(), 0);
    }

    #[test]
    fn shares_get_memfd_ram_and_one_device_each() {
        let bind = |t: &str, ro| MountSpec::Bind {
            source: "/srv/x".into(),
            target: t.into(),
            read_only: ro,
        };
        let s = plan(&[bind("/a", false), bind("/b", true)], 608);
        let a = s.qemu_args.join(" ");
        assert!(a.starts_with("-global virtio-mmio.force-legacy=false -object memory-backend-memfd,id=lbmem,size=608M,share=on"));
        assert!(a.contains("socket,id=vfs1,fd=41"));
        assert!(a.contains("vhost-user-fs-device,chardev=vfs1,tag=lockbox-v1"));
        assert_eq!(s.vmm[1]["qemu_fd"], 41);
        assert_eq!(s.guest[1]["read_only"], true);
        assert_eq!(s.overhead_mib(), 2 * SHARE_OVERHEAD_MIB);
    }
}
