//! Mounting by file descriptor, never by path string.
//!
//! Once the sandbox's root is in place, every mount target lies in
//! image-controlled territory: an image may put a symlink at `/proc`, at a
//! volume's parent, anywhere. So targets are found by a walk from a root
//! fd, one component at a time, with `openat2(RESOLVE_BENEATH |
//! RESOLVE_NO_SYMLINKS)`, and filesystems are attached with the new mount
//! API (`fsopen`/`fsmount`/`move_mount`) onto the fd the walk returned. No
//! path string is resolved by the kernel a second time, so nothing can be
//! swapped between the check and the mount.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use thiserror::Error;

const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;
const MOVE_MOUNT_T_EMPTY_PATH: libc::c_uint = 0x40;
const FSOPEN_CLOEXEC: libc::c_uint = 1;
const FSMOUNT_CLOEXEC: libc::c_uint = 1;
const FSCONFIG_SET_FLAG: libc::c_uint = 0;
const FSCONFIG_SET_STRING: libc::c_uint = 1;
const FSCONFIG_CMD_CREATE: libc::c_uint = 6;

pub const MOUNT_ATTR_RDONLY: u64 = 0x1;
pub const MOUNT_ATTR_NOSUID: u64 = 0x2;
pub const MOUNT_ATTR_NODEV: u64 = 0x4;
pub const MOUNT_ATTR_NOEXEC: u64 = 0x8;

/// Why a mount target could not be used. Kept apart from plain I/O errors
/// so the caller can say which guest path was refused and why.
#[derive(Debug, Error)]
pub enum TargetError {
    #[error(
        "{path}: {component:?} is a symlink; mount targets are never resolved through symlinks"
    )]
    Symlink { path: String, component: String },
    #[error("{path}: {component:?} exists and is not a {want}")]
    WrongKind {
        path: String,
        component: String,
        want: &'static str,
    },
    #[error("{path}: {component:?} is not a plain path component")]
    BadComponent { path: String, component: String },
    #[error("{path}: {op} {component:?}: {source}")]
    Io {
        path: String,
        component: String,
        op: &'static str,
        source: io::Error,
    },
}

impl TargetError {
    /// The errno behind the error, for the setup's error code.
    pub fn errno(&self) -> i32 {
        match self {
            TargetError::Symlink { .. } => libc::ELOOP,
            TargetError::WrongKind { .. } => libc::EINVAL,
            TargetError::BadComponent { .. } => libc::EINVAL,
            TargetError::Io { source, .. } => source.raw_os_error().unwrap_or(libc::EIO),
        }
    }
}

/// What the last component of a mount target must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File,
}

fn check(r: libc::c_long) -> io::Result<libc::c_long> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn owned(fd: libc::c_long) -> OwnedFd {
    // SAFETY: callers pass an fd the kernel just returned to us.
    unsafe { OwnedFd::from_raw_fd(fd as RawFd) }
}

fn cstring(s: &str) -> io::Result<CString> {
    CString::new(s).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

/// Opens one component of `dir` without following a symlink and without
/// leaving `dir`. The result is an O_PATH fd.
fn open_component(dir: RawFd, name: &str) -> io::Result<OwnedFd> {
    use crate::sys::{RESOLVE_BENEATH, RESOLVE_NO_MAGICLINKS, RESOLVE_NO_SYMLINKS};
    crate::sys::openat2(
        dir,
        &cstring(name)?,
        libc::O_PATH,
        RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS,
    )
}

fn file_type(fd: RawFd) -> io::Result<libc::mode_t> {
    // SAFETY: fstat into a zeroed struct on a valid fd.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(fd, &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st.st_mode & libc::S_IFMT)
}

/// Walks the absolute guest `path` from `root`, creating what is missing
/// (directories on the way, the last component as `kind`), and returns an
/// O_PATH fd on the last component. Refuses any symlink and any `.`/`..`
/// on the way: the engine normalizes paths, but this walk does not trust
/// that.
pub fn open_target(root: &OwnedFd, path: &str, kind: Kind) -> Result<OwnedFd, TargetError> {
    let parts: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
    let err_io = |component: &str, op: &'static str, source: io::Error| TargetError::Io {
        path: path.to_string(),
        component: component.to_string(),
        op,
        source,
    };
    let dup = |fd: &OwnedFd| fd.try_clone().map_err(|e| err_io("/", "dup", e));
    let mut cur = dup(root)?;
    for (i, name) in parts.iter().enumerate() {
        if *name == "." || *name == ".." {
            return Err(TargetError::BadComponent {
                path: path.to_string(),
                component: name.to_string(),
            });
        }
        let last = i + 1 == parts.len();
        let want_dir = !last || kind == Kind::Dir;
        let c = cstring(name).map_err(|e| err_io(name, "name", e))?;
        // Create first, then open: an existing entry of any kind makes the
        // create fail with EEXIST and the open below decides whether it fits.
        // SAFETY: valid dir fd and C string.
        let r = unsafe {
            if want_dir {
                libc::mkdirat(cur.as_raw_fd(), c.as_ptr(), 0o755)
            } else {
                libc::mknodat(cur.as_raw_fd(), c.as_ptr(), libc::S_IFREG | 0o644, 0)
            }
        };
        if r != 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EEXIST) {
                return Err(err_io(name, "create", e));
            }
        }
        let next = match open_component(cur.as_raw_fd(), name) {
            Ok(fd) => fd,
            Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
                return Err(TargetError::Symlink {
                    path: path.to_string(),
                    component: name.to_string(),
                })
            }
            Err(e) => return Err(err_io(name, "open", e)),
        };
        let t = file_type(next.as_raw_fd()).map_err(|e| err_io(name, "stat", e))?;
        let fits = if want_dir {
            t == libc::S_IFDIR
        } else {
            t == libc::S_IFREG
        };
        if !fits {
            return Err(TargetError::WrongKind {
                path: path.to_string(),
                component: name.to_string(),
                want: if want_dir {
                    "directory"
                } else {
                    "regular file"
                },
            });
        }
        cur = next;
    }
    Ok(cur)
}

/// Whether `name` exists in `dir` (opened without following symlinks).
pub fn open_existing(dir: &OwnedFd, name: &str) -> io::Result<Option<OwnedFd>> {
    match open_component(dir.as_raw_fd(), name) {
        Ok(fd) => Ok(Some(fd)),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Directory fd type check for callers of `open_existing`.
pub fn is_dir(fd: &OwnedFd) -> bool {
    file_type(fd.as_raw_fd()).is_ok_and(|t| t == libc::S_IFDIR)
}

/// A new, detached filesystem instance of `fstype`, configured with
/// `flags` (boolean options) and `opts` (key=value options), carrying
/// mount attributes `attrs` (MOUNT_ATTR_*).
pub fn new_fs(
    fstype: &str,
    flags: &[&str],
    opts: &[(&str, &str)],
    attrs: u64,
) -> io::Result<OwnedFd> {
    let t = cstring(fstype)?;
    // SAFETY: valid C string.
    let fsfd = owned(check(unsafe {
        libc::syscall(libc::SYS_fsopen, t.as_ptr(), FSOPEN_CLOEXEC)
    })?);
    let ctx = |e: io::Error, what: &str| io::Error::new(e.kind(), format!("{fstype} {what}: {e}"));
    for f in flags {
        let k = cstring(f)?;
        // SAFETY: valid fd and C string; a flag takes no value.
        check(unsafe {
            libc::syscall(
                libc::SYS_fsconfig,
                fsfd.as_raw_fd(),
                FSCONFIG_SET_FLAG,
                k.as_ptr(),
                std::ptr::null::<libc::c_char>(),
                0,
            )
        })
        .map_err(|e| ctx(e, f))?;
    }
    for (k, v) in opts {
        let kc = cstring(k)?;
        let vc = cstring(v)?;
        // SAFETY: valid fd and C strings.
        check(unsafe {
            libc::syscall(
                libc::SYS_fsconfig,
                fsfd.as_raw_fd(),
                FSCONFIG_SET_STRING,
                kc.as_ptr(),
                vc.as_ptr(),
                0,
            )
        })
        .map_err(|e| ctx(e, k))?;
    }
    // SAFETY: valid fd; create takes no key or value.
    check(unsafe {
        libc::syscall(
            libc::SYS_fsconfig,
            fsfd.as_raw_fd(),
            FSCONFIG_CMD_CREATE,
            std::ptr::null::<libc::c_char>(),
            std::ptr::null::<libc::c_char>(),
            0,
        )
    })
    .map_err(|e| ctx(e, "create"))?;
    // SAFETY: valid fs context fd.
    let m = check(unsafe {
        libc::syscall(
            libc::SYS_fsmount,
            fsfd.as_raw_fd(),
            FSMOUNT_CLOEXEC,
            attrs as libc::c_uint,
        )
    })
    .map_err(|e| ctx(e, "mount"))?;
    Ok(owned(m))
}

/// A detached copy of the mount at `fd` (an O_PATH fd on its root or a
/// file within), with its submounts.
pub fn clone_at(fd: &OwnedFd) -> io::Result<OwnedFd> {
    crate::sys::clone_mount(fd.as_raw_fd())
}

/// Attaches the detached mount `mnt` on the object `target` refers to.
pub fn attach(mnt: &OwnedFd, target: &OwnedFd) -> io::Result<()> {
    let empty = c"";
    // SAFETY: valid fds and empty C strings.
    check(unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            mnt.as_raw_fd(),
            empty.as_ptr(),
            target.as_raw_fd(),
            empty.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH,
        )
    })?;
    Ok(())
}

/// The current root as an O_PATH directory fd: where every walk starts.
pub fn open_root() -> io::Result<OwnedFd> {
    // SAFETY: constant C string.
    let fd = unsafe {
        libc::open(
            c"/".as_ptr(),
            libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(owned(fd as libc::c_long))
}
