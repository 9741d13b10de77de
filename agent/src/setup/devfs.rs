//! A minimal /dev. A user namespace may not mknod, so the few harmless
//! character devices are bind-mounted from the host's /dev; ptys come from
//! a private devpts instance.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::Path;

use anyhow::{Context, Result};

use super::rootfs::{bind, old_root};
use crate::sys::mount;

const DEVICES: [&str; 6] = ["null", "zero", "full", "random", "urandom", "tty"];

pub fn populate() -> Result<()> {
    let dev = Path::new("/dev");
    fs::create_dir_all(dev)?;
    mount(
        Some("tmpfs"),
        dev,
        Some("tmpfs"),
        libc::MS_NOSUID | libc::MS_NOEXEC,
        Some("mode=0755,size=64k"),
    )?;
    for d in DEVICES {
        let target = dev.join(d);
        fs::File::create(&target)?;
        bind(&old_root().join("dev").join(d), &target, false)
            .with_context(|| format!("/dev/{d}"))?;
    }
    fs::create_dir(dev.join("pts"))?;
    mount(
        Some("devpts"),
        &dev.join("pts"),
        Some("devpts"),
        libc::MS_NOSUID | libc::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=0620"),
    )?;
    symlink("pts/ptmx", dev.join("ptmx"))?;
    fs::create_dir(dev.join("shm"))?;
    mount(
        Some("shm"),
        &dev.join("shm"),
        Some("tmpfs"),
        libc::MS_NOSUID | libc::MS_NODEV,
        Some("mode=1777,size=65536k"),
    )?;
    symlink("/proc/self/fd", dev.join("fd"))?;
    for (i, n) in ["stdin", "stdout", "stderr"].iter().enumerate() {
        symlink(format!("/proc/self/fd/{i}"), dev.join(n))?;
    }
    Ok(())
}
