//! The workloads' /dev (S6-VM-4). Init mounts the guest kernel's whole
//! devtmpfs to find its port and disks; a workload (root in the guest)
//! given that /dev could open anything the kernel offers, e.g.
//! /dev/userfaultfd, a userfaultfd without the system call its filter
//! refuses. Once init's own opens are done, devtmpfs goes and /dev holds
//! exactly a native sandbox's list (setup/devfs.rs: the same nodes, a
//! private devpts for the agent's ptys, a sized /dev/shm).

use std::io;
use std::os::fd::OwnedFd;

use anyhow::{Context, Result};

use crate::setup::devfs;

/// Replaces devtmpfs on /dev with native's minimal /dev. Runs after the
/// agent's port is open and every disk is mounted (their open files do
/// not need the nodes) and before any workload. devtmpfs is detached,
/// not covered: no path leads back to it, and a workload has neither
/// CAP_MKNOD to recreate a node nor CAP_SYS_ADMIN (nor the mount system
/// calls, which its filter refuses) to mount it again.
pub fn replace(memory_mib: Option<u64>) -> Result<()> {
    // Cloned while devtmpfs is still there: the only nodes that outlive it.
    let nodes = devfs::HostDevices::clone().context("clone the allowed nodes")?;
    // SAFETY: umount2 with a constant C string.
    if unsafe { libc::umount2(c"/dev".as_ptr(), libc::MNT_DETACH) } != 0 {
        return Err(io::Error::last_os_error()).context("detach devtmpfs");
    }
    let root = open_root().context("open /")?;
    devfs::populate(&root, nodes, memory_mib).context("populate /dev")?;
    Ok(())
}

fn open_root() -> io::Result<OwnedFd> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC)
        .open("/")?;
    Ok(f.into())
}
