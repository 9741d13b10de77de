//! The mounts a kernel leaves to init. The initramfs is the root (rootfs,
//! writable); /proc, /sys and /dev are what the agent and module loading
//! read, /run and /tmp are scratch space for workloads.

use std::ffi::CStr;
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;

fn mount(
    fstype: &CStr,
    target: &CStr,
    flags: libc::c_ulong,
    data: Option<&CStr>,
) -> io::Result<()> {
    let data = data.map_or(std::ptr::null(), |d| d.as_ptr().cast());
    // SAFETY: every pointer is a NUL-terminated string that outlives the call.
    let r = unsafe {
        libc::mount(
            fstype.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            flags,
            data,
        )
    };
    if r == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    // A kernel with CONFIG_DEVTMPFS_MOUNT mounts /dev itself.
    if e.raw_os_error() == Some(libc::EBUSY) {
        return Ok(());
    }
    Err(io::Error::new(
        e.kind(),
        format!("mount {fstype:?} on {target:?}: {e}"),
    ))
}

pub fn early() -> io::Result<()> {
    let nodev = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    mount(c"proc", c"/proc", nodev, None)?;
    mount(c"sysfs", c"/sys", nodev, None)?;
    mount(
        c"devtmpfs",
        c"/dev",
        libc::MS_NOSUID | libc::MS_NOEXEC,
        Some(c"mode=0755"),
    )?;
    mount(
        c"tmpfs",
        c"/run",
        libc::MS_NOSUID | libc::MS_NODEV,
        Some(c"mode=0755,size=16m"),
    )?;
    mount(
        c"tmpfs",
        c"/tmp",
        libc::MS_NOSUID | libc::MS_NODEV,
        Some(c"mode=1777,size=64m"),
    )?;
    Ok(())
}

/// What init sets in the guest kernel before any workload runs. A core
/// dump goes to a plain file in the dumping process's directory (never a
/// pipe: the kernel would run the program as root with every
/// capability), and no module is ever requested (an empty modprobe path
/// makes `request_module` return ENOENT; init loaded every module
/// already).
const KERNEL_SETTINGS: [(&str, &str); 2] = [
    ("/proc/sys/kernel/core_pattern", "core"),
    ("/proc/sys/kernel/modprobe", "\n"),
];

/// Locks the guest kernel's knobs before any workload runs (S6-VM-1b):
/// a workload is root in the guest, and sysctls check only euid 0, so a
/// writable /proc/sys would let it make the kernel run a program of its
/// own as full root (core_pattern "|prog", modprobe), with none of the
/// agent's filters. As in a native sandbox (setup/procfs.rs), /proc/sys,
/// /proc/sysrq-trigger and the other tunables are read-only bind mounts,
/// and /sys (with the guest's cgroup below it: the workload's own
/// limits) is read-only. A workload cannot lift them: it has no
/// CAP_SYS_ADMIN, and its seccomp filter refuses mount, umount,
/// mount_setattr and new user namespaces.
pub fn lock_kernel() -> io::Result<()> {
    for (knob, value) in KERNEL_SETTINGS {
        std::fs::write(knob, value)
            .map_err(|e| io::Error::new(e.kind(), format!("{knob}: {e}")))?;
    }
    let proc_ = crate::setup::procfs::READ_ONLY.map(|p| format!("/proc/{p}"));
    for p in proc_.iter().map(String::as_str).chain(["/sys"]) {
        let path = Path::new(p);
        // /proc/bus and /proc/irq exist only with their drivers.
        if !path.exists() {
            continue;
        }
        read_only(path).map_err(|e| io::Error::new(e.kind(), format!("read-only {p}: {e}")))?;
    }
    Ok(())
}

/// Covers `path` with a read-only copy of itself (submounts included).
fn read_only(path: &Path) -> io::Result<()> {
    use crate::setup::mountfd::{
        MOUNT_ATTR_NODEV, MOUNT_ATTR_NOEXEC, MOUNT_ATTR_NOSUID, MOUNT_ATTR_RDONLY,
    };
    let tree = crate::sys::clone_tree(path)?;
    crate::sys::set_tree_attrs(
        tree.as_raw_fd(),
        MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV | MOUNT_ATTR_NOEXEC,
        None,
    )?;
    crate::sys::attach_tree(tree.as_raw_fd(), path)
}
