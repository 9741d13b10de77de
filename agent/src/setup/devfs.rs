//! A minimal /dev. A user namespace may not mknod, so the few harmless
//! character devices are bind mounts of the host's nodes, cloned as mount
//! fds while the host's /dev is still visible (`HostDevices::clone`) and
//! attached after the root changed; ptys come from a private devpts
//! instance.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;

use anyhow::{Context, Result};

use super::mountfd::{self, Kind, MOUNT_ATTR_NODEV, MOUNT_ATTR_NOEXEC, MOUNT_ATTR_NOSUID};

const DEVICES: [&str; 6] = ["null", "zero", "full", "random", "urandom", "tty"];

/// Detached clones of the host's device nodes, one per `DEVICES` entry.
pub struct HostDevices(Vec<OwnedFd>);

impl HostDevices {
    /// Runs before the root changes: the only moment the host's /dev is
    /// reachable. Each node must be a character device, so a host /dev
    /// that is not what it should be fails the setup instead of giving
    /// the sandbox something else.
    pub fn clone() -> Result<HostDevices> {
        let mut out = Vec::new();
        for d in DEVICES {
            let p = Path::new("/dev").join(d);
            let fd =
                crate::sys::clone_tree(&p).with_context(|| format!("clone {}", p.display()))?;
            let st = nix::sys::stat::fstat(fd.as_raw_fd())?;
            if st.st_mode & libc::S_IFMT != libc::S_IFCHR {
                anyhow::bail!("{} is not a character device", p.display());
            }
            crate::sys::set_tree_attrs(fd.as_raw_fd(), MOUNT_ATTR_NOSUID | MOUNT_ATTR_NOEXEC, None)
                .with_context(|| format!("mount flags for {}", p.display()))?;
            out.push(fd);
        }
        Ok(HostDevices(out))
    }
}

/// /dev/shm's size without a memory limit.
const SHM_MIB: u64 = 64;

/// Mounts a fresh tmpfs on the image's /dev (whatever the image had there
/// is covered) and fills it. Returns an O_PATH fd on /dev/null, which
/// /proc's masks are cloned from. `/dev/shm` takes at most half the memory
/// limit: its pages are charged to the sandbox, and a full one must leave
/// room for the processes (and the agent) that the OOM killer spares.
pub fn populate(root: &OwnedFd, devices: HostDevices, memory_mib: Option<u64>) -> Result<OwnedFd> {
    let target = mountfd::open_target(root, "/dev", Kind::Dir)?;
    let tmp = mountfd::new_fs(
        "tmpfs",
        &[],
        &[("mode", "0755"), ("size", "64k")],
        MOUNT_ATTR_NOSUID | MOUNT_ATTR_NOEXEC,
    )?;
    mountfd::attach(&tmp, &target).context("/dev")?;
    // Reopened: the fd from before the mount names the covered directory.
    let dev = mountfd::open_target(root, "/dev", Kind::Dir)?;
    for (name, node) in DEVICES.iter().zip(devices.0.iter()) {
        let t = mountfd::open_target(&dev, name, Kind::File)?;
        mountfd::attach(node, &t).with_context(|| format!("/dev/{name}"))?;
    }
    let pts = mountfd::open_target(&dev, "pts", Kind::Dir)?;
    let devpts = mountfd::new_fs(
        "devpts",
        &["newinstance"],
        &[("ptmxmode", "0666"), ("mode", "0620")],
        MOUNT_ATTR_NOSUID | MOUNT_ATTR_NOEXEC,
    )?;
    mountfd::attach(&devpts, &pts).context("/dev/pts")?;
    let shm = mountfd::open_target(&dev, "shm", Kind::Dir)?;
    let shm_mib = memory_mib.map_or(SHM_MIB, |m| (m / 2).clamp(1, SHM_MIB));
    let shm_size = format!("{shm_mib}m");
    let shmfs = mountfd::new_fs(
        "tmpfs",
        &[],
        &[("mode", "1777"), ("size", &shm_size)],
        MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV,
    )?;
    mountfd::attach(&shmfs, &shm).context("/dev/shm")?;
    for (link, to) in [
        ("ptmx", "pts/ptmx"),
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        symlink_at(&dev, to, link).with_context(|| format!("/dev/{link}"))?;
    }
    // The bound node, not the empty file it covers.
    let null = mountfd::open_existing(&dev, "null")?.context("/dev/null vanished")?;
    let st = nix::sys::stat::fstat(null.as_raw_fd())?;
    if st.st_mode & libc::S_IFMT != libc::S_IFCHR {
        anyhow::bail!("/dev/null is not the device it was bound to");
    }
    Ok(null)
}

fn symlink_at(dir: &OwnedFd, target: &str, name: &str) -> io::Result<()> {
    let t = crate::sys::cstr(target)?;
    let n = crate::sys::cstr(name)?;
    // SAFETY: valid dir fd and C strings.
    if unsafe { libc::symlinkat(t.as_ptr(), dir.as_raw_fd(), n.as_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
