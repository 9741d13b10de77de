//! /proc for the sandbox's pid namespace, with the kernel-wide files that
//! leak host information or poke the host kernel masked, and the tunables
//! read-only. /sys is read-only.

use std::os::fd::{AsRawFd, OwnedFd};

use anyhow::{Context, Result};

use super::mountfd::{
    self, Kind, MOUNT_ATTR_NODEV, MOUNT_ATTR_NOEXEC, MOUNT_ATTR_NOSUID, MOUNT_ATTR_RDONLY,
};

/// Files hidden behind /dev/null.
const MASKED_FILES: [&str; 12] = [
    "kcore",
    "kallsyms",
    "keys",
    "key-users",
    "timer_list",
    "sched_debug",
    "latency_stats",
    "kpagecount",
    "kpageflags",
    "kpagecgroup",
    "config.gz",
    "vmallocinfo",
];
/// Directories hidden behind an empty read-only tmpfs.
const MASKED_DIRS: [&str; 3] = ["acpi", "scsi", "asound"];
/// Left visible but read-only.
pub const READ_ONLY: [&str; 5] = ["sys", "sysrq-trigger", "bus", "fs", "irq"];

const NOSUID_NODEV_NOEXEC: u64 = MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV | MOUNT_ATTR_NOEXEC;

/// New procfs and sysfs instances for the sandbox's pid and network
/// namespaces, made while the host's own /proc and /sys are still in the
/// mount namespace: in a user namespace the kernel only grants a new proc
/// or sysfs mount when an unobstructed one is visible ("mount too
/// revealing"), and once the root changed none is.
pub struct KernelMounts {
    proc_: OwnedFd,
    /// The kernel may refuse sysfs (the caller reports why).
    sys: Result<OwnedFd>,
}

impl KernelMounts {
    pub fn create() -> Result<KernelMounts> {
        Ok(KernelMounts {
            proc_: mountfd::new_fs("proc", &[], &[], NOSUID_NODEV_NOEXEC).context("new procfs")?,
            sys: mountfd::new_fs("sysfs", &[], &[], NOSUID_NODEV_NOEXEC | MOUNT_ATTR_RDONLY)
                .context("new sysfs"),
        })
    }
}

/// Mounts the sandbox's procfs on the image's /proc (whatever the image
/// had there is covered) and masks it. `dev_null` is the sandbox's
/// /dev/null, whose mount is cloned over each masked file.
pub fn mount_proc(root: &OwnedFd, kernel: &KernelMounts, dev_null: &OwnedFd) -> Result<()> {
    let target = mountfd::open_target(root, "/proc", Kind::Dir)?;
    mountfd::attach(&kernel.proc_, &target).context("mount proc")?;
    // The kernel's own tree from here on: no image content below /proc.
    let proc_ = mountfd::open_target(root, "/proc", Kind::Dir)?;
    for f in MASKED_FILES {
        if let Some(t) = mountfd::open_existing(&proc_, f)? {
            // Not remounted read-only: that would add nodev and turn reads
            // into EACCES; /dev/null reads empty and swallows writes anyway.
            let null = mountfd::clone_at(dev_null)?;
            mountfd::attach(&null, &t).with_context(|| format!("mask /proc/{f}"))?;
        }
    }
    for d in MASKED_DIRS {
        if let Some(t) = mountfd::open_existing(&proc_, d)? {
            if mountfd::is_dir(&t) {
                let empty = mountfd::new_fs(
                    "tmpfs",
                    &[],
                    &[("size", "0")],
                    NOSUID_NODEV_NOEXEC | MOUNT_ATTR_RDONLY,
                )?;
                mountfd::attach(&empty, &t).with_context(|| format!("mask /proc/{d}"))?;
            }
        }
    }
    for d in READ_ONLY {
        if let Some(t) = mountfd::open_existing(&proc_, d)? {
            let ro = mountfd::clone_at(&t)?;
            crate::sys::set_tree_attrs(
                ro.as_raw_fd(),
                MOUNT_ATTR_RDONLY | NOSUID_NODEV_NOEXEC,
                None,
            )
            .with_context(|| format!("read-only /proc/{d}"))?;
            mountfd::attach(&ro, &t).with_context(|| format!("read-only /proc/{d}"))?;
        }
    }
    Ok(())
}

/// sysfs for the sandbox's network namespace, read-only. Returns why it is
/// absent when the kernel refused it (the caller reports that); a mount
/// target the image made unusable (a symlink at /sys) is an error like any
/// other, never a quiet absence.
pub fn mount_sys(root: &OwnedFd, kernel: KernelMounts) -> Result<Option<String>> {
    let target = mountfd::open_target(root, "/sys", Kind::Dir)?;
    let m = match kernel.sys {
        Ok(m) => m,
        Err(e) => return Ok(Some(format!("{e:#}"))),
    };
    mountfd::attach(&m, &target).context("mount sysfs")?;
    let sys = mountfd::open_target(root, "/sys", Kind::Dir)?;
    if let Some(fw) = mountfd::open_existing(&sys, "firmware")? {
        if mountfd::is_dir(&fw) {
            if let Ok(empty) = mountfd::new_fs(
                "tmpfs",
                &[],
                &[("size", "0")],
                NOSUID_NODEV_NOEXEC | MOUNT_ATTR_RDONLY,
            ) {
                let _ = mountfd::attach(&empty, &fw);
            }
        }
    }
    Ok(None)
}
