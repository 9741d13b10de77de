//! The sandbox's root inside the guest: the image's layers (read-only
//! erofs disks) under an overlay whose upper layer is on the per-sandbox
//! ext4 disk, then a switch into it (initramfs is rootfs, which cannot be
//! pivot_root'ed away: the new root is moved over `/` and chroot'ed into,
//! as switch_root does). /proc, /sys and /dev move along.

use std::io;
use std::path::Path;
use std::time::Duration;

use super::config::{wait_disk, GuestConfig};
use crate::sys;

const DISK_WAIT: Duration = Duration::from_secs(10);
const NEW_ROOT: &str = "/newroot";

fn mount(
    src: &str,
    target: &str,
    fstype: &str,
    flags: libc::c_ulong,
    data: &str,
) -> io::Result<()> {
    sys::mount(
        Some(src),
        Path::new(target),
        Some(fstype),
        flags,
        Some(data),
    )
}

fn move_mount(from: &str, to: &str) -> io::Result<()> {
    let none: Option<&str> = None;
    sys::mount(Some(from), Path::new(to), none, libc::MS_MOVE, none)
}

pub fn enter(cfg: &GuestConfig) -> io::Result<()> {
    if cfg.layers.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "no root layers",
        ));
    }
    let mut lower = Vec::new();
    for (i, serial) in cfg.layers.iter().enumerate() {
        let dev = wait_disk(serial, DISK_WAIT)?;
        let at = format!("/lb/l{i}");
        std::fs::create_dir_all(&at)?;
        mount(&dev, &at, "erofs", libc::MS_RDONLY | libc::MS_NODEV, "")?;
        lower.push(at);
    }
    let dev = wait_disk(&cfg.upper, DISK_WAIT)?;
    std::fs::create_dir_all("/lb/rw")?;
    mount(&dev, "/lb/rw", "ext4", libc::MS_NODEV, "")?;
    for d in ["/lb/rw/upper", "/lb/rw/work"] {
        match std::fs::create_dir(d) {
            Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(e),
            _ => {}
        }
    }
    std::fs::create_dir_all(NEW_ROOT)?;
    let opts = format!(
        "lowerdir={},upperdir=/lb/rw/upper,workdir=/lb/rw/work",
        lower.join(":")
    );
    mount("overlay", NEW_ROOT, "overlay", 0, &opts)?;
    for d in ["proc", "sys", "dev"] {
        let to = format!("{NEW_ROOT}/{d}");
        std::fs::create_dir_all(&to)?;
        move_mount(&format!("/{d}"), &to)?;
    }
    std::env::set_current_dir(NEW_ROOT)?;
    move_mount(".", "/")?;
    own_fs_root()?;
    // SAFETY: chroot to the cwd (the moved root), then cd into it.
    unsafe {
        if libc::chroot(c".".as_ptr()) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    std::env::set_current_dir("/")?;
    Ok(())
}

/// PID 1 starts sharing its root and cwd (one fs_struct) with the
/// kernel's own threads, and the programs the kernel runs as full root
/// (modprobe, a core dump pipe, request-key, poweroff) resolve their paths
/// in that root. Unshared before the chroot, those stay in the initramfs,
/// which no workload can reach or write, instead of the image's root,
/// where a workload as guest root could plant them.
fn own_fs_root() -> io::Result<()> {
    // SAFETY: unshare with a flag constant.
    if unsafe { libc::unshare(libc::CLONE_FS) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

pub fn set_hostname(name: &str) {
    // SAFETY: sethostname with a valid buffer.
    unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) };
}
