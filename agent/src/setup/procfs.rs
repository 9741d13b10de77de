//! /proc for the sandbox's pid namespace, with the kernel-wide files that
//! leak host information or poke the host kernel masked, and the tunables
//! read-only. /sys is read-only.

use std::fs;
use std::path::Path;

use anyhow::Result;

use super::rootfs::bind;
use crate::sys::mount;

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
const READ_ONLY: [&str; 5] = ["sys", "sysrq-trigger", "bus", "fs", "irq"];

const NOSUID_NODEV_NOEXEC: libc::c_ulong = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;

/// Needs /dev/null in place first.
pub fn mount_proc() -> Result<()> {
    let proc_ = Path::new("/proc");
    fs::create_dir_all(proc_)?;
    mount(Some("proc"), proc_, Some("proc"), NOSUID_NODEV_NOEXEC, None)?;
    for f in MASKED_FILES {
        let p = proc_.join(f);
        if p.exists() {
            // Not remounted read-only: that would add nodev and turn reads
            // into EACCES; /dev/null reads empty and swallows writes anyway.
            bind(Path::new("/dev/null"), &p, false)?;
        }
    }
    for d in MASKED_DIRS {
        let p = proc_.join(d);
        if p.is_dir() {
            mount(
                Some("tmpfs"),
                &p,
                Some("tmpfs"),
                NOSUID_NODEV_NOEXEC | libc::MS_RDONLY,
                Some("size=0"),
            )?;
        }
    }
    for d in READ_ONLY {
        let p = proc_.join(d);
        if p.exists() {
            bind(&p, &p, true)?;
        }
    }
    Ok(())
}

/// sysfs for the sandbox's network namespace, read-only; absent when the
/// kernel refuses it (the caller records that).
pub fn mount_sys() -> Result<()> {
    let sys = Path::new("/sys");
    fs::create_dir_all(sys)?;
    mount(
        Some("sysfs"),
        sys,
        Some("sysfs"),
        NOSUID_NODEV_NOEXEC | libc::MS_RDONLY,
        None,
    )?;
    let fw = sys.join("firmware");
    if fw.is_dir() {
        let _ = mount(
            Some("tmpfs"),
            &fw,
            Some("tmpfs"),
            NOSUID_NODEV_NOEXEC | libc::MS_RDONLY,
            Some("size=0"),
        );
    }
    Ok(())
}
