//! Snapshot: a sandbox's filesystem (its writable layer over its image) as
//! a new stored image, named or not (Fork uses an unnamed one).
//!
//! Where the writable layer is:
//! - with a disk budget (the default) it is a tmpfs that only exists in the
//!   sandbox's mount namespace; PID 1 keeps it open at a fixed fd
//!   (`UPPER_FD`, agent/src/setup/rootfs.rs), and the engine reopens that
//!   through `/proc/<pid 1>/fd/`. The kernel allows this only to a
//!   process with CAP_SYS_PTRACE over PID 1 (host root): rootless, such a
//!   sandbox cannot be snapshotted (`unsupported`, saying so);
//! - with `WithDisk(0)` it is `<sandbox dir>/upper` on the host, opened
//!   without following links.
//!
//! The sandbox is frozen (when it has a freezer) for the copy, so the
//! layer is one consistent state; the copy itself treats every entry as
//! hostile (images/src/upper_copy.rs) either way. A sandbox that was
//! already paused stays paused.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use lockbox_images::{Cancel, Digest, ForkHold, IdShift, ImageInfo, ImageStore};
use lockbox_protocol::ErrorCode;

use crate::error::{EngineError, Result};
use crate::freezer;
use crate::sandbox::Sandbox;

/// Where PID 1 keeps the writable layer open (agent/src/setup/rootfs.rs).
const UPPER_FD: i32 = 1000;
/// Host id of sandbox id 0 as root (agent/src/supervisor.rs HOST_ID_BASE).
const HOST_ID_BASE: u32 = 100_000;
const ID_RANGE: u32 = 65_536;
const TMPFS_MAGIC: i64 = 0x0102_1994;

fn unsupported(m: impl Into<String>) -> EngineError {
    EngineError::new(ErrorCode::Unsupported, m)
}

fn open_dir(dir: libc::c_int, path: &std::ffi::CStr, follow: bool) -> std::io::Result<OwnedFd> {
    let nofollow = if follow { 0 } else { libc::O_NOFOLLOW };
    // SAFETY: a valid dir fd (or AT_FDCWD) and C string.
    let fd = unsafe {
        libc::openat(
            dir,
            path.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC | nofollow,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: just opened; owned here only.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn cpath(p: &Path) -> Result<std::ffi::CString> {
    std::ffi::CString::new(std::os::unix::ffi::OsStrExt::as_bytes(p.as_os_str()))
        .map_err(|_| EngineError::invalid("NUL in a path"))
}

/// The host pids of the helper's children: PID 1 of the sandbox is one.
fn helper_children(helper: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{helper}/task/{helper}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|s| s.parse().ok())
        .collect()
}

/// A pidfd on `pid`: names that one process, whatever later takes its pid.
fn pidfd_open(pid: u32) -> Option<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags; the fd returned is ours.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    // SAFETY: just opened, owned here only.
    (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Whether the process behind `pidfd` has not exited (signal 0 checks
/// only that it exists).
fn pidfd_alive(pidfd: &OwnedFd) -> bool {
    // SAFETY: a valid pidfd; signal 0 sends nothing.
    (unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            0,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    }) == 0
}

fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Field 4, after the command name, which may hold spaces and `)`.
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn is_tmpfs(fd: &OwnedFd) -> bool {
    // SAFETY: zeroed statfs is a valid out buffer; valid fd.
    let mut s: libc::statfs = unsafe { std::mem::zeroed() };
    (unsafe { libc::fstatfs(fd.as_raw_fd(), &mut s) }) == 0 && s.f_type as i64 == TMPFS_MAGIC
}

/// Opens the sandbox's writable layer (see the module doc).
fn open_upper(sb: &Sandbox, budget: Option<u64>) -> Result<OwnedFd> {
    if budget.is_none() {
        let dir = open_dir(libc::AT_FDCWD, &cpath(&sb.dir)?, false)
            .map_err(|e| EngineError::io(sb.dir.display(), e))?;
        return open_dir(dir.as_raw_fd(), c"upper", false)
            .map_err(|e| EngineError::io("the sandbox's upper dir", e));
    }
    let st = sb.state();
    if !st.helper_alive() {
        return Err(EngineError::unavailable(format!(
            "sandbox {:?} is not running",
            sb.name
        )));
    }
    let mut last = None;
    for pid in helper_children(st.helper_pid) {
        // Pinned first: if the child exits and its pid is reused (by
        // another sandbox's PID 1, say) the checks below see it.
        let Some(pidfd) = pidfd_open(pid) else {
            continue;
        };
        let p = PathBuf::from(format!("/proc/{pid}/fd/{UPPER_FD}"));
        // The magic link is the one link followed on purpose: it is the
        // kernel's handle on PID 1's fd, not a path the sandbox wrote.
        match open_dir(libc::AT_FDCWD, &cpath(&p)?, true) {
            Ok(fd) if is_tmpfs(&fd) => {
                // The pinned process still lives (so it is the one whose fd
                // was opened) and is this helper's child, and the helper is
                // still this sandbox's: not a recycled pid at any step.
                if parent_of(pid) != Some(st.helper_pid)
                    || !pidfd_alive(&pidfd)
                    || !sb.state().helper_alive()
                {
                    break;
                }
                return Ok(fd);
            }
            Ok(_) => {}
            Err(e) => last = Some(e),
        }
    }
    match last {
        Some(e) if e.raw_os_error() == Some(libc::EACCES) || e.raw_os_error() == Some(libc::EPERM) => {
            Err(unsupported(format!(
                "snapshot of sandbox {:?}: its writable layer is a tmpfs inside the sandbox, which only root may read from the host ({e}); rootless, create it WithDisk(0) to snapshot it",
                sb.name
            )))
        }
        Some(e) => Err(EngineError::io("open the writable layer", e)),
        None => Err(EngineError::unavailable(format!(
            "sandbox {:?}: no writable layer found (an older helper, or the sandbox is stopping)",
            sb.name
        ))),
    }
}

fn id_shift() -> IdShift {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        IdShift::FromHost {
            base: HOST_ID_BASE,
            size: ID_RANGE,
        }
    } else {
        IdShift::Keep
    }
}

fn store_error(e: lockbox_images::ImageError) -> EngineError {
    let code = serde_json::from_value::<ErrorCode>(serde_json::Value::from(e.code()))
        .unwrap_or(ErrorCode::Internal);
    EngineError::new(code, format!("snapshot: {e}"))
}

/// Captures the sandbox's filesystem as a stored image (named `name` when
/// given) and returns it. The image's config is its parent image's.
pub async fn snapshot(sb: &Sandbox, home: &Path, name: Option<String>) -> Result<ImageInfo> {
    let (info, _) = capture(sb, home, Capture::Snapshot(name)).await?;
    Ok(info)
}

/// Fork's unnamed image of the sandbox's filesystem: its data copied by
/// the kernel (reflinked where the store's filesystem can), not hashed,
/// synced only when `durable`. The hold keeps it from Prune and from the
/// next open's reclaim until the children's configs name it.
pub async fn fork_point(sb: &Sandbox, home: &Path, durable: bool) -> Result<(ImageInfo, ForkHold)> {
    let (info, hold) = capture(sb, home, Capture::Fork { durable }).await?;
    Ok((info, hold.expect("a fork capture is held")))
}

enum Capture {
    Snapshot(Option<String>),
    Fork { durable: bool },
}

async fn capture(sb: &Sandbox, home: &Path, how: Capture) -> Result<(ImageInfo, Option<ForkHold>)> {
    // A VM's writable layer is a disk only its guest reads (docs/microvm.md).
    if sb.stored.backend != crate::backend::NATIVE {
        return Err(unsupported(format!(
            "{} backend: snapshots and forks are not supported yet",
            sb.stored.backend
        )));
    }
    let parent = sb.stored.image.as_ref().ok_or_else(|| {
        unsupported(format!(
            "sandbox {:?} was not made from a stored image (WithRootfs or a development image tree): there is nothing to layer a snapshot on",
            sb.name
        ))
    })?;
    let parent = Digest::parse(&parent.digest).map_err(store_error)?;
    let budget = sb.info()?.disk_mib;
    let cg = sb.state().report.cgroup;
    // Shared with Pause/Resume (freezer.rs): a Pause made during the copy
    // outlives it, and concurrent snapshots do not thaw each other.
    let guard = tokio::task::spawn_blocking(move || freezer::hold_for_snapshot(&cg))
        .await
        .map_err(|e| EngineError::internal(format!("freeze task: {e}")))??;
    let upper = open_upper(sb, budget)?;
    // The copy may take no more than the sandbox could hold (sparse files
    // count at their apparent size, hard links once).
    let max_bytes = budget.map(|mib| mib.saturating_mul(1 << 20));
    let home = home.to_path_buf();
    let source = match &how {
        Capture::Snapshot(_) => format!("snapshot of sandbox {} ({})", sb.name, sb.id()),
        Capture::Fork { .. } => format!("fork of sandbox {} ({})", sb.name, sb.id()),
    };
    let cancel = Cancel::never();
    let c2 = cancel.clone();
    let mut on_drop = CancelOnDrop(cancel, false);
    let r = tokio::task::spawn_blocking(move || {
        let store = ImageStore::open(&home).map_err(store_error)?;
        let (r, hold) = match how {
            Capture::Snapshot(name) => {
                let r = store
                    .install_layer(
                        &parent,
                        upper,
                        id_shift(),
                        max_bytes,
                        name.as_deref(),
                        source,
                        &c2,
                    )
                    .map_err(store_error)?;
                (r, None)
            }
            Capture::Fork { durable } => {
                let (r, hold) = store
                    .install_fork_layer(&parent, upper, id_shift(), max_bytes, source, durable, &c2)
                    .map_err(store_error)?;
                (r, Some(hold))
            }
        };
        let info = store.inspect(&r.digest.to_string()).map_err(store_error)?;
        Ok::<_, EngineError>((info, hold))
    })
    .await
    .map_err(|e| EngineError::internal(format!("snapshot task: {e}")))?;
    on_drop.1 = true;
    drop(guard);
    r
}

struct CancelOnDrop(Cancel, bool);
impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if !self.1 {
            self.0.cancel();
        }
    }
}

/// The overlay lowers for a sandbox of `image`: a layered image brings its
/// parents' roots under its own.
pub fn lowers_of(home: &Path, image: &crate::images::Resolved) -> Result<Vec<String>> {
    let own = vec![image.rootfs.to_string_lossy().into_owned()];
    let Some(d) = &image.digest else {
        return Ok(own);
    };
    let store = ImageStore::open(home).map_err(store_error)?;
    if store.parents(d).map_err(store_error)?.is_empty() {
        return Ok(own);
    }
    Ok(store
        .lowers(d)
        .map_err(store_error)?
        .into_iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect())
}

/// Writes the stored image `name_or_digest` (a snapshot or any other) as an
/// OCI image layout in the new host directory `dir`, named `ref_name` in
/// its index when given; returns the manifest digest. `dir` must not exist
/// and its parent must be reachable without a symlink (as for CopyToHost).
pub async fn export(
    home: &Path,
    name_or_digest: String,
    dir: String,
    ref_name: Option<String>,
) -> Result<String> {
    let p = Path::new(&dir);
    let (Some(parent), Some(leaf)) = (p.parent(), p.file_name()) else {
        return Err(EngineError::invalid(format!(
            "export: {dir:?} is not a directory path"
        )));
    };
    if !p.is_absolute() {
        return Err(EngineError::invalid(format!(
            "export: {dir:?} must be absolute"
        )));
    }
    let parent = crate::fs::host_path_without_links(&parent.to_string_lossy())
        .map_err(|e| e.context(format!("export to {dir:?}")))?;
    let dest = parent.join(leaf);
    let home = home.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let store = ImageStore::open(&home).map_err(store_error)?;
        let d = store
            .export_oci_layout(&name_or_digest, &dest, ref_name.as_deref())
            .map_err(store_error)?;
        Ok(d.to_string())
    })
    .await
    .map_err(|e| EngineError::internal(format!("export task: {e}")))?
}
