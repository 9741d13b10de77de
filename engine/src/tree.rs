//! Removing a directory tree whose content a sandbox wrote (a writable
//! layer, a named volume).
//!
//! std's `remove_dir_all` is safe against symlinks but recursive: a sandbox
//! can build a directory chain deep enough to overflow the stack of the
//! thread that removes it, which would abort the host process. This walk is
//! iterative, holds at most `MAX_DEPTH` directory streams, and flattens
//! anything deeper by renaming it up to the top, so neither the stack nor
//! the fd count grows with what the sandbox made. Every step is relative to
//! a directory fd and never follows a symlink; directories the sandbox made
//! unreadable are opened up with `fchmod` on the fd, never by path.

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Directory streams held at once; deeper subtrees are moved up instead.
const MAX_DEPTH: usize = 32;

fn last() -> io::Error {
    io::Error::last_os_error()
}

fn open_dir_at(dir: RawFd, name: &CStr) -> io::Result<OwnedFd> {
    match open_at(dir, name, libc::O_RDONLY) {
        Err(e) if e.raw_os_error() == Some(libc::EACCES) => open_unreadable_dir(dir, name),
        r => r,
    }
}

fn open_at(dir: RawFd, name: &CStr, mode: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: valid fd and C string.
    let fd = unsafe {
        libc::openat(
            dir,
            name.as_ptr(),
            mode | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(last());
    }
    // SAFETY: fresh fd.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A directory its owner cannot read (overlayfs leaves `work/work` at mode
/// 000; a sandbox can chmod its own dirs so): without CAP_DAC_OVERRIDE, as
/// rootless, the plain open fails. The directory is pinned with O_PATH (no
/// link followed), opened up to 0700 through that fd's /proc magic link
/// (fchmod refuses O_PATH fds), and reopened through the same link, so a
/// swap of the name in between changes nothing.
fn open_unreadable_dir(dir: RawFd, name: &CStr) -> io::Result<OwnedFd> {
    let pinned = open_at(dir, name, libc::O_PATH)?;
    let via = CString::new(format!("/proc/self/fd/{}", pinned.as_raw_fd()))?;
    // SAFETY: valid C string.
    if unsafe { libc::chmod(via.as_ptr(), 0o700) } != 0 {
        return Err(last());
    }
    // SAFETY: valid C string.
    let fd = unsafe {
        libc::open(
            via.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(last());
    }
    // SAFETY: fresh fd.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// One open directory: its fd, its stream, and its name in the parent.
struct Frame {
    fd: OwnedFd,
    stream: *mut libc::DIR,
    name: CString,
}

impl Frame {
    fn new(fd: OwnedFd, name: CString) -> io::Result<Frame> {
        // Owner rwx on the directory itself, so its entries can go.
        // SAFETY: valid fd.
        unsafe { libc::fchmod(fd.as_raw_fd(), 0o700) };
        // A fresh open of ".", not a dup: a dup would share its read
        // position with every other stream on the same directory.
        let own = open_dir_at(fd.as_raw_fd(), c".")?;
        // SAFETY: the fd is handed to the stream, which owns it.
        let stream = unsafe { libc::fdopendir(own.into_raw_fd()) };
        if stream.is_null() {
            return Err(last());
        }
        Ok(Frame { fd, stream, name })
    }

    /// The next entry other than `.` and `..`, or None at the end.
    fn next(&mut self) -> Option<(CString, u8)> {
        loop {
            // SAFETY: the stream is valid until drop.
            let e = unsafe { libc::readdir64(self.stream) };
            if e.is_null() {
                return None;
            }
            // SAFETY: readdir returned a valid entry.
            let (name, ty) = unsafe { (CStr::from_ptr((*e).d_name.as_ptr()), (*e).d_type) };
            let b = name.to_bytes();
            if b != b"." && b != b".." {
                return Some((name.to_owned(), ty));
            }
        }
    }

    fn rewind(&mut self) {
        // SAFETY: valid stream.
        unsafe { libc::rewinddir(self.stream) };
    }
}

impl Drop for Frame {
    fn drop(&mut self) {
        // SAFETY: valid stream, closed once.
        unsafe { libc::closedir(self.stream) };
    }
}

/// Removes `path` and everything below it. `path` itself is not followed
/// if it is a symlink (the link is removed). Missing is success.
pub fn remove_tree(path: &Path) -> io::Result<()> {
    let c = CString::new(path.as_os_str().as_bytes())?;
    let top = match open_dir_at(libc::AT_FDCWD, &c) {
        Ok(fd) => fd,
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
        Err(e) if matches!(e.raw_os_error(), Some(libc::ELOOP) | Some(libc::ENOTDIR)) => {
            return std::fs::remove_file(path);
        }
        Err(e) => return Err(e),
    };
    empty(&top)?;
    drop(top);
    match std::fs::remove_dir(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Empties the directory `top` without following any link.
fn empty(top: &OwnedFd) -> io::Result<()> {
    let mut moved = 0u64;
    let mut stack = vec![Frame::new(top.try_clone()?, CString::default())?];
    // Entries removed or moved so far, and at the last look at the top.
    let mut progress = 0u64;
    let mut progress_at_top = 0u64;
    while let Some(frame) = stack.last_mut() {
        let Some((name, ty)) = frame.next() else {
            // End of stream: the directory should now be empty.
            let done = stack.pop().expect("non-empty");
            let Some(parent) = stack.last_mut() else {
                // The top: anything left (added while we walked, or skipped
                // by readdir) means another pass.
                let mut again = Frame::new(top.try_clone()?, CString::default())?;
                if again.next().is_some() {
                    if progress == progress_at_top {
                        return Err(io::Error::other("directory entries that cannot be removed"));
                    }
                    progress_at_top = progress;
                    again.rewind();
                    stack.push(again);
                    continue;
                }
                return Ok(());
            };
            let (pfd, dname) = (parent.fd.as_raw_fd(), done.name.clone());
            drop(done);
            progress += 1;
            // SAFETY: valid fd and C string.
            if unsafe { libc::unlinkat(pfd, dname.as_ptr(), libc::AT_REMOVEDIR) } != 0 {
                let e = last();
                if e.raw_os_error() == Some(libc::ENOTEMPTY) {
                    // readdir may skip entries removed under it: go again.
                    parent.rewind();
                } else if e.raw_os_error() != Some(libc::ENOENT) {
                    return Err(e);
                }
            }
            continue;
        };
        let dir = frame.fd.as_raw_fd();
        let is_dir = match ty {
            libc::DT_DIR => true,
            libc::DT_UNKNOWN => {
                // SAFETY: fstatat without following links into a zeroed struct.
                let mut st: libc::stat = unsafe { std::mem::zeroed() };
                let r = unsafe {
                    libc::fstatat(dir, name.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW)
                };
                r == 0 && st.st_mode & libc::S_IFMT == libc::S_IFDIR
            }
            _ => false,
        };
        progress += 1;
        if !is_dir {
            // SAFETY: valid fd and C string.
            if unsafe { libc::unlinkat(dir, name.as_ptr(), 0) } != 0 {
                let e = last();
                if e.raw_os_error() != Some(libc::ENOENT) {
                    return Err(e);
                }
            }
            continue;
        }
        if stack.len() >= MAX_DEPTH {
            // Too deep to hold another stream: move this subtree up to the
            // top, where a later pass reaches it at depth 1. The new name is
            // random and never replaces anything: the sandbox wrote this
            // tree and could have planted any predictable name.
            moved += 1;
            let mut tries = 0;
            loop {
                let to = CString::new(format!(".lockbox-deep-{moved}-{}", crate::names::new_id()))?;
                // SAFETY: valid fds and C strings.
                let r = unsafe {
                    libc::renameat2(
                        dir,
                        name.as_ptr(),
                        top.as_raw_fd(),
                        to.as_ptr(),
                        libc::RENAME_NOREPLACE,
                    )
                };
                if r == 0 {
                    break;
                }
                let e = last();
                tries += 1;
                if e.raw_os_error() != Some(libc::EEXIST) || tries >= 8 {
                    return Err(e);
                }
            }
            continue;
        }
        match open_dir_at(dir, &name) {
            Ok(fd) => stack.push(Frame::new(fd, name)?),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// Makes `depth` nested directories under `top` without ever using a
    /// long path; returns the deepest one.
    fn deep_chain(top: &Path, depth: usize) -> OwnedFd {
        let c = CString::new(top.as_os_str().as_bytes()).unwrap();
        let mut fd = open_dir_at(libc::AT_FDCWD, &c).unwrap();
        for _ in 0..depth {
            let name = c"a";
            // SAFETY: valid fd and C string.
            assert_eq!(
                unsafe { libc::mkdirat(fd.as_raw_fd(), name.as_ptr(), 0o755) },
                0
            );
            fd = open_dir_at(fd.as_raw_fd(), name).unwrap();
        }
        fd
    }

    /// As rootless (no CAP_DAC_OVERRIDE), a directory at mode 000, as
    /// overlayfs leaves `work/work`, must still be removed. The removal runs
    /// in this test binary re-executed as uid 65534.
    #[test]
    fn removes_mode_000_dirs_without_dac_override() {
        use std::os::unix::process::CommandExt;
        if let Ok(dir) = std::env::var("LOCKBOX_TREE_TEST_AS_USER") {
            remove_tree(Path::new(&dir)).unwrap();
            return;
        }
        // SAFETY: no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: switching to another uid needs root");
            return;
        }
        let base = tempfile::tempdir().unwrap();
        // The user owns the parent too, as rootless owns its sandboxes dir.
        std::os::unix::fs::lchown(base.path(), Some(65534), Some(65534)).unwrap();
        let t = base.path().join("layer");
        std::fs::create_dir_all(t.join("work/work/inner")).unwrap();
        std::fs::write(t.join("work/work/inner/f"), b"x").unwrap();
        for p in [
            "",
            "work",
            "work/work",
            "work/work/inner",
            "work/work/inner/f",
        ] {
            std::os::unix::fs::lchown(t.join(p), Some(65534), Some(65534)).unwrap();
        }
        std::fs::set_permissions(
            t.join("work/work/inner"),
            std::fs::Permissions::from_mode(0o000),
        )
        .unwrap();
        std::fs::set_permissions(t.join("work/work"), std::fs::Permissions::from_mode(0o000))
            .unwrap();
        let run = || {
            std::process::Command::new(std::env::current_exe().unwrap())
                .args([
                    "--exact",
                    "tree::tests::removes_mode_000_dirs_without_dac_override",
                ])
                .env("LOCKBOX_TREE_TEST_AS_USER", &t)
                .uid(65534)
                .gid(65534)
                .output()
                .unwrap()
        };
        // Control: as that user, a plain open of the mode-000 dir is refused.
        let probe = std::process::Command::new("ls")
            .arg(t.join("work/work"))
            .uid(65534)
            .gid(65534)
            .output()
            .unwrap();
        assert!(
            !probe.status.success(),
            "the control could read a mode-000 dir"
        );
        let out = run();
        assert!(
            out.status.success(),
            "removal as uid 65534 failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        assert!(!t.exists(), "the tree is still there");
    }

    #[test]
    fn removes_deep_unreadable_trees_without_following_links() {
        let d = tempfile::tempdir().unwrap();
        let outside = d.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("keep"), "x").unwrap();
        let t = d.path().join("t");
        std::fs::create_dir(&t).unwrap();
        // A chain far deeper than MAX_DEPTH, with a link and files at the
        // bottom too.
        let bottom = deep_chain(&t, 3000);
        let target = CString::new(outside.as_os_str().as_bytes()).unwrap();
        // SAFETY: valid fd and C strings.
        let r = unsafe { libc::symlinkat(target.as_ptr(), bottom.as_raw_fd(), c"link".as_ptr()) };
        assert_eq!(r, 0);
        std::os::unix::fs::symlink(&outside, t.join("link")).unwrap();
        std::fs::create_dir(t.join("locked")).unwrap();
        std::fs::write(t.join("locked/f"), "y").unwrap();
        std::fs::set_permissions(t.join("locked"), std::fs::Permissions::from_mode(0o000)).unwrap();
        for i in 0..100 {
            std::fs::write(t.join(format!("f{i}")), "z").unwrap();
        }
        remove_tree(&t).unwrap();
        assert!(!t.exists());
        assert_eq!(std::fs::read_to_string(outside.join("keep")).unwrap(), "x");
        // A symlink as the named path is removed, not followed.
        let l = d.path().join("l");
        std::os::unix::fs::symlink(&outside, &l).unwrap();
        remove_tree(&l).unwrap();
        assert!(outside.join("keep").exists());
        remove_tree(&d.path().join("missing")).unwrap();
    }

    #[test]
    fn a_deep_tree_does_not_overflow_a_small_stack() {
        let d = tempfile::tempdir().unwrap();
        let t = d.path().join("t");
        std::fs::create_dir(&t).unwrap();
        drop(deep_chain(&t, 5000));
        // A recursive walk needs a frame per level (std's remove_dir_all
        // overflowed a 2 MiB stack on a 20000-deep chain here); this one
        // needs the same few KiB at any depth.
        let t2 = t.clone();
        std::thread::Builder::new()
            .stack_size(256 << 10)
            .spawn(move || remove_tree(&t2))
            .unwrap()
            .join()
            .unwrap()
            .inspect_err(|_| {
                // Keep the test's own cleanup (a recursive remove) off the
                // tree if this failed.
                std::mem::forget(d);
            })
            .unwrap();
        assert!(!t.exists());
    }
}
