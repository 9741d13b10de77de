//! The sandbox's root: an overlay of the read-only image layers and the
//! per-sandbox writable layer, assembled in a private staging tmpfs and
//! then made the root with pivot_root. The host's root stays reachable at
//! /.oldroot only until /dev is populated and volumes are attached.

use std::fs;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use lockbox_protocol::{LaunchSpec, MountSpec};

use super::plan::{Plan, Source};
use crate::report::Report;
use crate::sys::{attach_tree, mount, pivot_root};

const OLD_ROOT: &str = "/.oldroot";

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

/// Mounts the overlay and pivots into it. Afterwards "/" is the sandbox
/// root and the host root is at /.oldroot.
pub fn enter(spec: &LaunchSpec, plan: &Plan, fds: &[OwnedFd], report: &mut Report) -> Result<()> {
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

    std::env::set_current_dir(&root)?;
    fs::create_dir_all(root.join(&OLD_ROOT[1..]))?;
    pivot_root(Path::new("."), Path::new(&OLD_ROOT[1..])).context("pivot_root")?;
    std::env::set_current_dir("/")?;
    Ok(())
}

/// Remount flags that must be kept when remounting a bind in a user
/// namespace (the kernel refuses to clear flags locked by a more
/// privileged namespace).
fn locked_flags(p: &Path) -> libc::c_ulong {
    let Ok(c) = crate::sys::cstr(p) else { return 0 };
    // SAFETY: statvfs into a zeroed struct.
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut s) } != 0 {
        return 0;
    }
    let mut f = 0;
    for (st, ms) in [
        (libc::ST_NOSUID, libc::MS_NOSUID),
        (libc::ST_NODEV, libc::MS_NODEV),
        (libc::ST_NOEXEC, libc::MS_NOEXEC),
        (libc::ST_NOATIME, libc::MS_NOATIME),
        (libc::ST_NODIRATIME, libc::MS_NODIRATIME),
        (libc::ST_RELATIME, libc::MS_RELATIME),
    ] {
        if s.f_flag & st != 0 {
            f |= ms;
        }
    }
    f
}

/// Bind `src` over `target` (both inside the current root), read-only if asked.
pub fn bind(src: &Path, target: &Path, read_only: bool) -> io::Result<()> {
    mount(
        Some(&src.to_string_lossy()),
        target,
        None,
        libc::MS_BIND | libc::MS_REC,
        None,
    )?;
    if read_only {
        let flags = libc::MS_BIND
            | libc::MS_REMOUNT
            | libc::MS_RDONLY
            | libc::MS_NOSUID
            | libc::MS_NODEV
            | locked_flags(target);
        mount(None, target, None, flags, None)?;
    }
    Ok(())
}

/// Makes the mount point: a directory, or an empty file when the source is
/// a file. Paths resolve inside the new root, so image symlinks cannot
/// steer a mount point outside it.
fn mount_point(target: &Path, is_dir: bool) -> io::Result<()> {
    if is_dir {
        fs::create_dir_all(target)
    } else {
        if let Some(p) = target.parent() {
            fs::create_dir_all(p)?;
        }
        if !target.exists() {
            fs::File::create(target)?;
        }
        Ok(())
    }
}

/// Attaches the volumes and tmpfs mounts of the spec.
pub fn volumes(spec: &LaunchSpec, plan: &Plan, fds: &[OwnedFd], report: &mut Report) -> Result<()> {
    let mut binds = plan.binds.iter();
    for m in &spec.mounts {
        match m {
            MountSpec::Bind {
                target, read_only, ..
            } => {
                let src = binds.next().context("plan lacks a bind source")?;
                let t = Path::new(target);
                match src {
                    Source::Fd(i) => {
                        let fd = fds.get(*i).context("plan names a missing fd")?;
                        // The fd's own type decides the mount point kind.
                        let st = nix::sys::stat::fstat(fd.as_raw_fd())?;
                        let dir = (st.st_mode & libc::S_IFMT) == libc::S_IFDIR;
                        mount_point(t, dir)?;
                        attach_tree(fd.as_raw_fd(), t)
                            .with_context(|| format!("attach volume at {target}"))?;
                    }
                    Source::Path(p) => {
                        let host = Path::new(OLD_ROOT).join(p.trim_start_matches('/'));
                        let dir = fs::metadata(&host)
                            .with_context(|| format!("volume source {p}"))?
                            .is_dir();
                        mount_point(t, dir)?;
                        bind(&host, t, *read_only)
                            .with_context(|| format!("volume {p} at {target}"))?;
                    }
                }
                report.ok("volumes");
            }
            MountSpec::Tmpfs { target, size_mib } => {
                let t = Path::new(target);
                fs::create_dir_all(t)?;
                mount(
                    Some("tmpfs"),
                    t,
                    Some("tmpfs"),
                    libc::MS_NOSUID | libc::MS_NODEV,
                    Some(&format!("mode=1777,size={size_mib}m")),
                )?;
                report.ok("tmpfs");
            }
        }
    }
    Ok(())
}

/// Detaches the host root: from here on nothing of the host is reachable
/// by path.
pub fn drop_old_root() -> Result<()> {
    // SAFETY: valid C string.
    let r = unsafe { libc::umount2(c"/.oldroot".as_ptr(), libc::MNT_DETACH) };
    if r != 0 {
        return Err(io::Error::last_os_error()).context("detach old root");
    }
    let _ = fs::remove_dir(OLD_ROOT);
    Ok(())
}

pub fn old_root() -> &'static Path {
    Path::new(OLD_ROOT)
}
