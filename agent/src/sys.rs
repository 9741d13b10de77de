//! Thin wrappers over the Linux system calls the setup needs and that
//! neither std nor nix exposes (new mount API, raw fork-style clone).

use std::ffi::CString;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::path::Path;

const OPEN_TREE_CLONE: libc::c_uint = 1;
const AT_RECURSIVE: libc::c_uint = 0x8000;
const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;

#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

pub fn cstr(p: impl AsRef<Path>) -> io::Result<CString> {
    use std::os::unix::ffi::OsStrExt;
    CString::new(p.as_ref().as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))
}

fn check(r: libc::c_long) -> io::Result<libc::c_long> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}
pub const RESOLVE_NO_MAGICLINKS: u64 = 0x02;
pub const RESOLVE_NO_SYMLINKS: u64 = 0x04;
pub const RESOLVE_BENEATH: u64 = 0x08;
pub const RESOLVE_IN_ROOT: u64 = 0x10;

/// openat2(2): `path` relative to `dir`, with `flags` (O_*) and `resolve`
/// (RESOLVE_*) restrictions.
pub fn openat2(
    dir: RawFd,
    path: &std::ffi::CStr,
    flags: libc::c_int,
    resolve: u64,
) -> io::Result<OwnedFd> {
    let how = OpenHow {
        flags: (flags | libc::O_CLOEXEC) as u64,
        mode: 0,
        resolve,
    };
    // SAFETY: valid fd, C string and struct of the size passed.
    let fd = check(unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dir,
            path.as_ptr(),
            &how as *const OpenHow,
            std::mem::size_of::<OpenHow>(),
        )
    })?;
    // SAFETY: the kernel just gave us this fd.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// A detached copy of the mount `fd` (an O_PATH fd) refers to, with its
/// submounts.
pub fn clone_mount(fd: RawFd) -> io::Result<OwnedFd> {
    let empty = c"";
    // SAFETY: valid fd and empty C string.
    let m = check(unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            fd,
            empty.as_ptr(),
            OPEN_TREE_CLONE
                | AT_RECURSIVE
                | libc::AT_EMPTY_PATH as libc::c_uint
                | libc::O_CLOEXEC as libc::c_uint,
        )
    })?;
    // SAFETY: the kernel just gave us this fd.
    Ok(unsafe { OwnedFd::from_raw_fd(m as RawFd) })
}

/// A detached copy of the mount tree at `path` (nothing appears in any
/// mount table until it is moved somewhere). The path is opened refusing
/// every symlink on it: the engine hands over link-free paths, and a link
/// there now was planted after it looked (a sandbox racing a shared
/// volume), so following it would bind something else into a sandbox.
pub fn clone_tree(path: &Path) -> io::Result<OwnedFd> {
    let at = openat2(
        libc::AT_FDCWD,
        &cstr(path)?,
        libc::O_PATH,
        RESOLVE_NO_SYMLINKS,
    )
    .map_err(|e| {
        if e.raw_os_error() == Some(libc::ELOOP) {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} passes through a symlink", path.display()),
            )
        } else {
            e
        }
    })?;
    clone_mount(std::os::fd::AsRawFd::as_raw_fd(&at))
}

/// Sets mount attributes (MOUNT_ATTR_*) on a detached tree, and an id
/// mapping through `userns_fd`'s user namespace when given.
pub fn set_tree_attrs(tree: RawFd, attrs: u64, userns_fd: Option<RawFd>) -> io::Result<()> {
    let mut attr = MountAttr {
        attr_set: attrs
            | if userns_fd.is_some() {
                MOUNT_ATTR_IDMAP
            } else {
                0
            },
        attr_clr: 0,
        propagation: 0,
        userns_fd: userns_fd.unwrap_or(0) as u64,
    };
    let empty = c"";
    // SAFETY: attr lives across the call; size matches the struct.
    check(unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree,
            empty.as_ptr(),
            (libc::AT_EMPTY_PATH as libc::c_uint) | AT_RECURSIVE,
            &mut attr as *mut MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    })?;
    Ok(())
}

/// Attaches a detached mount at `target`.
pub fn attach_tree(tree: RawFd, target: &Path) -> io::Result<()> {
    let t = cstr(target)?;
    let empty = c"";
    // SAFETY: valid fd and C strings.
    check(unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree,
            empty.as_ptr(),
            libc::AT_FDCWD,
            t.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        )
    })?;
    Ok(())
}

pub fn pivot_root(new_root: &Path, put_old: &Path) -> io::Result<()> {
    let a = cstr(new_root)?;
    let b = cstr(put_old)?;
    // SAFETY: valid C strings.
    check(unsafe { libc::syscall(libc::SYS_pivot_root, a.as_ptr(), b.as_ptr()) })?;
    Ok(())
}

/// fork() with namespace flags: the child continues on a copy of this
/// stack. Only sound while the process is single-threaded.
pub fn clone_fork(flags: libc::c_int) -> io::Result<libc::pid_t> {
    // SAFETY: no stack given, so this behaves like fork(); we are
    // single-threaded here (checked by the caller's design).
    let r = check(unsafe {
        libc::syscall(
            libc::SYS_clone,
            (flags | libc::SIGCHLD) as libc::c_ulong,
            0usize,
            0usize,
            0usize,
            0usize,
        )
    })?;
    Ok(r as libc::pid_t)
}

pub fn pidfd_open(pid: libc::pid_t) -> io::Result<OwnedFd> {
    // SAFETY: plain syscall.
    let fd = check(unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) })?;
    // SAFETY: fresh fd.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

pub fn mount(
    src: Option<&str>,
    target: &Path,
    fstype: Option<&str>,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> io::Result<()> {
    let s = src.map(CString::new).transpose()?;
    let t = cstr(target)?;
    let f = fstype.map(CString::new).transpose()?;
    let d = data.map(CString::new).transpose()?;
    let p = |c: &Option<CString>| c.as_ref().map_or(std::ptr::null(), |c| c.as_ptr());
    // SAFETY: all pointers are valid C strings or null.
    let r = unsafe {
        libc::mount(
            p(&s),
            t.as_ptr(),
            p(&f),
            flags,
            p(&d) as *const libc::c_void,
        )
    };
    if r < 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(
            e.kind(),
            format!("mount {:?} on {}: {e}", fstype.or(src), target.display()),
        ));
    }
    Ok(())
}

/// Sends fds over a unix socket with one byte of payload.
pub fn send_fds(sock: RawFd, fds: &[RawFd]) -> io::Result<()> {
    let buf = [0u8; 1];
    let iov = [std::io::IoSlice::new(&buf)];
    let cmsg = [nix::sys::socket::ControlMessage::ScmRights(fds)];
    nix::sys::socket::sendmsg::<()>(sock, &iov, &cmsg, nix::sys::socket::MsgFlags::empty(), None)
        .map_err(io::Error::from)?;
    Ok(())
}

/// Receives up to 64 fds sent by `send_fds`.
pub fn recv_fds(sock: RawFd) -> io::Result<Vec<OwnedFd>> {
    let mut buf = [0u8; 1];
    let mut iov = [std::io::IoSliceMut::new(&mut buf)];
    let mut space = nix::cmsg_space!([RawFd; 64]);
    let msg = nix::sys::socket::recvmsg::<()>(
        sock,
        &mut iov,
        Some(&mut space),
        nix::sys::socket::MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .map_err(io::Error::from)?;
    if msg.bytes == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "supervisor went away",
        ));
    }
    let mut out = Vec::new();
    for c in msg.cmsgs().map_err(io::Error::from)? {
        if let nix::sys::socket::ControlMessageOwned::ScmRights(fds) = c {
            // SAFETY: fds received via SCM_RIGHTS are ours now.
            out.extend(fds.into_iter().map(|f| unsafe { OwnedFd::from_raw_fd(f) }));
        }
    }
    Ok(out)
}
