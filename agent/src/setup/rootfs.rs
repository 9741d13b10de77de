//! The sandbox's root: an overlay of the read-only image layers and the
//! per-sandbox writable layer, assembled in a private staging tmpfs and
//! then made the root with pivot_root. The host's root is detached in the
//! same step, before a single image-controlled path is resolved: whatever
//! the host must provide (layers, volumes, device nodes) is taken as mount
//! fds beforehand, and every later mount goes onto a target found by an
//! fd walk that refuses symlinks (see `mountfd`).

use std::fs;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use lockbox_protocol::{LaunchSpec, MountSpec};

use super::mountfd::{self, Kind};
use super::plan::{Plan, Source};
use crate::report::Report;
use crate::sys::{attach_tree, mount, pivot_root};

/// Overlay option values separate entries with ':' and ','.
fn overlay_safe(p: &Path) -> Result<String> {
    let s = p.to_string_lossy().into_owned();
    if s.contains([':', ',', '\\']) {
        bail!("path {s} contains ':', ',' or '\\', which overlayfs cannot take");
    }
    Ok(s)
}

fn materialize(src: &Source, fds: &[OwnedFd], at: &Path) -> Result<PathBuf> {
    match src {
        Source::Path(p) => Ok(PathBuf::from(p)),
        Source::Fd(i) => {
            let fd = fds.get(*i).context("plan names a missing fd")?;
            fs::create_dir_all(at)?;
            attach_tree(fd.as_raw_fd(), at).with_context(|| format!("attach {}", at.display()))?;
            Ok(at.to_path_buf())
        }
    }
}

/// Where the staging tmpfs goes in our private mount namespace. Not under
/// the sandbox dir: as sandbox root we are an unmapped stranger to host
/// directories, and a private LOCKBOX_HOME (0700) would not let us through.
/// Covering /tmp here is invisible to the host (nothing propagates) and
/// ends when the old root is detached.
fn staging_point(spec: &LaunchSpec) -> PathBuf {
    ["/tmp", "/mnt", "/dev"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_dir())
        .unwrap_or_else(|| Path::new(&spec.dir).join("mnt"))
}

/// Turns every path source of the plan (rootless, or where the supervisor
/// could not prepare an fd) into a detached mount, while host paths are
/// still visible: the staging tmpfs covers /tmp next.
pub fn adopt_paths(spec: &LaunchSpec, plan: &mut Plan, fds: &mut Vec<OwnedFd>) -> Result<()> {
    use crate::sys::{clone_tree, set_tree_attrs};
    const RDONLY: u64 = 0x1;
    const NOSUID_NODEV: u64 = 0x2 | 0x4;
    let mut adopt = |src: &mut Source, attrs: u64| -> Result<()> {
        if let Source::Path(p) = src {
            let fd = clone_tree(Path::new(p)).with_context(|| format!("open {p}"))?;
            set_tree_attrs(fd.as_raw_fd(), attrs, None)
                .with_context(|| format!("mount flags for {p}"))?;
            fds.push(fd);
            *src = Source::Fd(fds.len() - 1);
        }
        Ok(())
    };
    for l in plan.lowers.iter_mut() {
        adopt(l, RDONLY | NOSUID_NODEV)?;
    }
    if spec.limits.disk_mib.is_none() {
        adopt(&mut plan.upper_base, NOSUID_NODEV)?;
    }
    let ro: Vec<bool> = spec
        .mounts
        .iter()
        .filter_map(|m| match m {
            MountSpec::Bind { read_only, .. } => Some(*read_only),
            _ => None,
        })
        .collect();
    for (b, ro) in plan.binds.iter_mut().zip(ro) {
        adopt(
            b,
            if ro {
                RDONLY | NOSUID_NODEV
            } else {
                NOSUID_NODEV
            },
        )?;
    }
    Ok(())
}

/// The fd number at which PID 1 keeps the tmpfs writable layer open: after
/// the pivot no path reaches it, and the host's snapshot reads it through
/// `/proc/<pid>/fd/UPPER_FD` (engine/src/snapshot.rs) while the sandbox is
/// frozen. O_PATH and close-on-exec: no workload inherits it.
pub const UPPER_FD: RawFd = 1000;

fn keep_upper(upper: &Path) -> Result<()> {
    let fd = nix::fcntl::open(
        upper,
        nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )?;
    // SAFETY: dup3 onto a number nothing else in setup uses; `fd` is ours.
    let r = unsafe { libc::dup3(fd, UPPER_FD, libc::O_CLOEXEC) };
    let e = io::Error::last_os_error();
    // SAFETY: `fd` was opened above and is closed once.
    unsafe { libc::close(fd) };
    if r < 0 {
        return Err(e).context("keep the writable layer open");
    }
    Ok(())
}

/// Mounts the overlay, pivots into it and detaches the host's root in the
/// same breath. Afterwards "/" is the sandbox root and nothing of the host
/// is reachable by any path; the returned fd is that root, where every
/// later mount-target walk starts.
pub fn enter(
    spec: &LaunchSpec,
    plan: &Plan,
    fds: &[OwnedFd],
    report: &mut Report,
) -> Result<OwnedFd> {
    // Nothing we mount may propagate back to the host.
    mount(
        None,
        Path::new("/"),
        None,
        libc::MS_REC | libc::MS_PRIVATE,
        None,
    )?;
    let stage = staging_point(spec);
    mount(
        Some("lockbox-stage"),
        &stage,
        Some("tmpfs"),
        libc::MS_NOSUID | libc::MS_NODEV,
        Some("mode=0700,size=64k"),
    )?;
    let mut lowers = Vec::new();
    for (i, l) in plan.lowers.iter().enumerate() {
        let p = materialize(l, fds, &stage.join(format!("l{i}")))?;
        lowers.push(overlay_safe(&p)?);
    }
    let (upper, work) = match spec.limits.disk_mib {
        Some(mib) => {
            // The writable layer lives on a tmpfs of exactly the budget: the
            // kernel enforces it, and its pages are charged to the sandbox's
            // memory cgroup. The price: writes do not outlive the sandbox.
            let rw = stage.join("rw");
            fs::create_dir_all(&rw)?;
            mount(
                Some("lockbox-rw"),
                &rw,
                Some("tmpfs"),
                libc::MS_NOSUID | libc::MS_NODEV,
                Some(&format!("mode=0755,size={mib}m")),
            )?;
            fs::create_dir_all(rw.join("upper"))?;
            fs::create_dir_all(rw.join("work"))?;
            keep_upper(&rw.join("upper"))?;
            report.ok("disk");
            (rw.join("upper"), rw.join("work"))
        }
        None => {
            let base = materialize(&plan.upper_base, fds, &stage.join("u"))?;
            (base.join(&plan.upper_name), base.join(&plan.work_name))
        }
    };
    let root = stage.join("root");
    fs::create_dir_all(&root)?;
    let opts = format!(
        "lowerdir={},upperdir={},workdir={},userxattr",
        lowers.join(":"),
        overlay_safe(&upper)?,
        overlay_safe(&work)?
    );
    mount(
        Some("lockbox"),
        &root,
        Some("overlay"),
        libc::MS_NOSUID,
        Some(&opts),
    )?;
    report.ok("overlay");

    // pivot_root(".", "."): the old root ends up stacked on top of the new
    // one at "/", and is detached at once. No directory of the image is
    // used as the put-old point, and no host mount stays reachable while
    // image paths are resolved.
    std::env::set_current_dir(&root)?;
    pivot_root(Path::new("."), Path::new(".")).context("pivot_root")?;
    // SAFETY: constant C string.
    if unsafe { libc::umount2(c".".as_ptr(), libc::MNT_DETACH) } != 0 {
        return Err(io::Error::last_os_error()).context("detach the host's root");
    }
    std::env::set_current_dir("/")?;
    mountfd::open_root().context("open the new root")
}

/// Attaches the volumes and tmpfs mounts of the spec, each on a target
/// walked from `root` without following symlinks. Volume sources arrive
/// as mount fds only: the host's paths are gone by now.
pub fn volumes(
    spec: &LaunchSpec,
    root: &OwnedFd,
    plan: &Plan,
    fds: &[OwnedFd],
    report: &mut Report,
) -> Result<()> {
    let mut binds = plan.binds.iter();
    for m in &spec.mounts {
        match m {
            MountSpec::Bind { target, .. } => {
                let src = binds.next().context("plan lacks a bind source")?;
                let Source::Fd(i) = src else {
                    bail!("volume at {target}: source was not opened before the root changed");
                };
                let fd = fds.get(*i).context("plan names a missing fd")?;
                // The fd's own type decides the mount point kind.
                let st = nix::sys::stat::fstat(fd.as_raw_fd())?;
                let kind = if (st.st_mode & libc::S_IFMT) == libc::S_IFDIR {
                    Kind::Dir
                } else {
                    Kind::File
                };
                let t = mountfd::open_target(root, target, kind)?;
                mountfd::attach(fd, &t).with_context(|| format!("attach volume at {target}"))?;
                report.ok("volumes");
            }
            MountSpec::Tmpfs { target, size_mib } => {
                let t = mountfd::open_target(root, target, Kind::Dir)?;
                let size = format!("{size_mib}m");
                let m = mountfd::new_fs(
                    "tmpfs",
                    &[],
                    &[("mode", "1777"), ("size", &size)],
                    mountfd::MOUNT_ATTR_NOSUID | mountfd::MOUNT_ATTR_NODEV,
                )?;
                mountfd::attach(&m, &t).with_context(|| format!("tmpfs at {target}"))?;
                report.ok("tmpfs");
            }
        }
    }
    Ok(())
}
