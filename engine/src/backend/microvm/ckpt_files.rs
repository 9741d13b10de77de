//! The files of a checkpoint, reached through directory fds: created with
//! `O_EXCL`, opened with `O_NOFOLLOW`, mode 0600 in 0700 directories, so
//! nothing follows a link another party placed and nothing is readable
//! by anyone but the engine's uid (the state file is guest memory).

use std::ffi::CString;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::error::{EngineError, Result};

fn cstr(name: &str) -> Result<CString> {
    CString::new(name).map_err(|_| EngineError::invalid("NUL in a checkpoint file name"))
}

fn last(what: &str) -> EngineError {
    EngineError::io(what, io::Error::last_os_error())
}

/// `<home>/checkpoints`, made 0700 if absent, opened without following a
/// link and checked to be the engine's own directory.
pub fn open_root(home: &Path) -> Result<OwnedFd> {
    let p = home.join(super::checkpoint::DIR);
    match std::fs::create_dir(&p) {
        Ok(()) => {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o700));
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(EngineError::io(p.display(), e)),
    }
    let c = CString::new(p.as_os_str().as_encoded_bytes())
        .map_err(|_| EngineError::invalid("NUL in the home path"))?;
    // SAFETY: open with a valid C string.
    let fd = unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(last(&p.display().to_string()));
    }
    // SAFETY: a fresh fd.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let m = File::from(fd.try_clone().map_err(|e| EngineError::io("dup", e))?)
        .metadata()
        .map_err(|e| EngineError::io(p.display(), e))?;
    // SAFETY: geteuid.
    if m.uid() != unsafe { libc::geteuid() } || m.mode() & 0o077 != 0 {
        return Err(EngineError::new(
            lockbox_protocol::ErrorCode::PermissionDenied,
            format!("{} must be the engine's own 0700 directory", p.display()),
        ));
    }
    Ok(fd)
}

pub fn exists_at(dir: &OwnedFd, name: &str) -> Result<bool> {
    let c = cstr(name)?;
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstatat into a local struct.
    let r = unsafe {
        libc::fstatat(
            dir.as_raw_fd(),
            c.as_ptr(),
            &mut st,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if r == 0 {
        return Ok(true);
    }
    match io::Error::last_os_error().raw_os_error() {
        Some(libc::ENOENT) => Ok(false),
        _ => Err(last(name)),
    }
}

pub fn mkdir_at(dir: &OwnedFd, name: &str) -> Result<OwnedFd> {
    let c = cstr(name)?;
    // SAFETY: mkdirat with a valid C string.
    if unsafe { libc::mkdirat(dir.as_raw_fd(), c.as_ptr(), 0o700) } < 0 {
        return Err(last(name));
    }
    open_dir_at(dir, name)
}

pub fn open_dir_at(dir: &OwnedFd, name: &str) -> Result<OwnedFd> {
    let c = cstr(name)?;
    // SAFETY: openat with a valid C string.
    let fd = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            c.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        let e = io::Error::last_os_error();
        return Err(if e.raw_os_error() == Some(libc::ENOENT) {
            EngineError::not_found(format!("no checkpoint named {name:?}"))
        } else {
            EngineError::io(name, e)
        });
    }
    // SAFETY: a fresh fd.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A new file, 0600, that did not exist.
pub fn create_at(dir: &OwnedFd, name: &str) -> Result<File> {
    let c = cstr(name)?;
    // SAFETY: openat with a valid C string.
    let fd = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            c.as_ptr(),
            libc::O_RDWR | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            0o600,
        )
    };
    if fd < 0 {
        return Err(last(name));
    }
    // SAFETY: a fresh fd.
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// An existing regular file, read-only, not through a link.
pub fn open_at(dir: &OwnedFd, name: &str) -> Result<File> {
    let c = cstr(name)?;
    // SAFETY: openat with a valid C string.
    let fd = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            c.as_ptr(),
            libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(last(name));
    }
    // SAFETY: a fresh fd.
    let f = unsafe { File::from_raw_fd(fd) };
    let m = f.metadata().map_err(|e| EngineError::io(name, e))?;
    if !m.is_file() {
        return Err(EngineError::invalid(format!(
            "checkpoint file {name:?} is not a regular file"
        )));
    }
    Ok(f)
}

/// A second open file description of the same file (its own offset):
/// each restored qemu reads the state from the start on its own.
pub fn reopen(f: &File) -> Result<File> {
    File::open(format!("/proc/self/fd/{}", f.as_raw_fd()))
        .map_err(|e| EngineError::io("reopen checkpoint state", e))
}

/// `src` (an engine-made file: a layer image) hard-linked as `name`.
pub fn link_into(src: &Path, dir: &OwnedFd, name: &str) -> Result<()> {
    let s = CString::new(src.as_os_str().as_encoded_bytes())
        .map_err(|_| EngineError::invalid("NUL in a layer path"))?;
    let c = cstr(name)?;
    // SAFETY: linkat with valid C strings; flags 0: a link at src is not
    // followed (it would be linked itself, and then refused at restore).
    if unsafe { libc::linkat(libc::AT_FDCWD, s.as_ptr(), dir.as_raw_fd(), c.as_ptr(), 0) } < 0 {
        return Err(last(&src.display().to_string()));
    }
    Ok(())
}

/// `from` renamed to `to` in `dir`, refused if `to` exists.
pub fn rename_new(dir: &OwnedFd, from: &str, to: &str) -> Result<()> {
    let (f, t) = (cstr(from)?, cstr(to)?);
    // SAFETY: renameat2 with valid C strings.
    let r = unsafe {
        libc::renameat2(
            dir.as_raw_fd(),
            f.as_ptr(),
            dir.as_raw_fd(),
            t.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    if r < 0 {
        let e = io::Error::last_os_error();
        return Err(if e.raw_os_error() == Some(libc::EEXIST) {
            EngineError::already_exists(format!("a checkpoint named {to:?} already exists"))
        } else {
            EngineError::io(to, e)
        });
    }
    Ok(())
}

/// An exclusive flock on a directory, waited for.
pub fn lock(dir: &OwnedFd) -> Result<()> {
    // SAFETY: flock on an fd we hold.
    if unsafe { libc::flock(dir.as_raw_fd(), libc::LOCK_EX) } < 0 {
        return Err(last("lock checkpoint dir"));
    }
    Ok(())
}

/// Whether the flock could be taken at once (its holder is gone).
pub fn try_lock(dir: &OwnedFd) -> Result<bool> {
    // SAFETY: flock on an fd we hold.
    Ok(unsafe { libc::flock(dir.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0)
}

pub fn fsync_dir(dir: &OwnedFd) {
    // SAFETY: fsync of an fd we hold.
    unsafe { libc::fsync(dir.as_raw_fd()) };
}

/// sha256 of a whole file, read from its start through its fd.
pub fn sha256(f: &mut File) -> Result<(String, u64)> {
    f.seek(SeekFrom::Start(0))
        .map_err(|e| EngineError::io("seek", e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        match f.read(&mut buf) {
            Ok(0) => break,
            Ok(k) => {
                h.update(&buf[..k]);
                n += k as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(EngineError::io("hash checkpoint file", e)),
        }
    }
    f.seek(SeekFrom::Start(0))
        .map_err(|e| EngineError::io("seek", e))?;
    let hex: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
    Ok((hex, n))
}

/// `FICLONE`: `_IOW(0x94, 9, int)`.
const FICLONE: libc::c_ulong = 0x4004_9409;

/// Copies a disk image (sparse: holes stay holes) by the kernel: a
/// reflink where the filesystem shares extents, else `copy_file_range`
/// per data segment, else `sendfile`. Bounded by the source's size as
/// taken when the copy starts (the source is a stopped VM's disk).
pub fn copy_disk(src: &File, dst: &File) -> Result<u64> {
    let size = src
        .metadata()
        .map_err(|e| EngineError::io("disk image", e))?
        .len();
    let (s, d) = (src.as_raw_fd(), dst.as_raw_fd());
    // SAFETY: ioctl with two fds we hold.
    if unsafe { libc::ioctl(d, FICLONE, s) } == 0 {
        dst.set_len(size)
            .map_err(|e| EngineError::io("disk copy", e))?;
        return Ok(size);
    }
    dst.set_len(size)
        .map_err(|e| EngineError::io("disk copy", e))?;
    let mut pos: i64 = 0;
    while (pos as u64) < size {
        // SAFETY: lseek on our fd.
        let data = unsafe { libc::lseek(s, pos, libc::SEEK_DATA) };
        if data < 0 {
            if io::Error::last_os_error().raw_os_error() == Some(libc::ENXIO) {
                break; // only a hole is left
            }
            return Err(last("SEEK_DATA"));
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(s, data, libc::SEEK_HOLE) };
        if hole < 0 {
            return Err(last("SEEK_HOLE"));
        }
        let end = (hole as u64).min(size) as i64;
        copy_range(s, d, data, end)?;
        pos = end;
    }
    Ok(size)
}

fn copy_range(s: RawFd, d: RawFd, mut at: i64, end: i64) -> Result<()> {
    let mut use_cfr = true;
    while at < end {
        let want = ((end - at) as usize).min(1 << 30);
        let (mut si, mut di) = (at, at);
        // SAFETY: copy_file_range/sendfile with fds we hold and local offsets.
        let n = unsafe {
            if use_cfr {
                libc::copy_file_range(s, &mut si, d, &mut di, want, 0)
            } else {
                libc::lseek(d, at, libc::SEEK_SET);
                libc::sendfile(d, s, &mut si, want)
            }
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if use_cfr
                && matches!(
                    e.raw_os_error(),
                    Some(libc::EXDEV | libc::EOPNOTSUPP | libc::ENOSYS | libc::EINVAL)
                )
            {
                use_cfr = false;
                continue;
            }
            return Err(EngineError::io("disk copy", e));
        }
        if n == 0 {
            break; // the source shrank: the rest stays a hole
        }
        at += n as i64;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::fs::{FileExt, PermissionsExt};

    #[test]
    fn a_disk_copy_keeps_data_and_holes() {
        let d = tempfile::tempdir().unwrap();
        let src = File::create(d.path().join("a")).unwrap();
        src.set_len(64 << 20).unwrap();
        src.write_all_at(b"head", 0).unwrap();
        src.write_all_at(b"tail", (64 << 20) - 4).unwrap();
        let dst = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(d.path().join("b"))
            .unwrap();
        let src = File::open(d.path().join("a")).unwrap();
        assert_eq!(copy_disk(&src, &dst).unwrap(), 64 << 20);
        let mut b = [0u8; 4];
        dst.read_exact_at(&mut b, 0).unwrap();
        assert_eq!(&b, b"head");
        dst.read_exact_at(&mut b, (64 << 20) - 4).unwrap();
        assert_eq!(&b, b"tail");
        // Sparse: far less than 64 MiB allocated.
        let blocks = std::os::unix::fs::MetadataExt::blocks(&dst.metadata().unwrap());
        assert!(blocks * 512 < 8 << 20, "{blocks} blocks");
    }

    #[test]
    fn the_root_must_be_private_and_not_a_link() {
        let d = tempfile::tempdir().unwrap();
        let root = open_root(d.path()).unwrap();
        let m = std::fs::metadata(d.path().join(super::super::checkpoint::DIR)).unwrap();
        assert_eq!(m.permissions().mode() & 0o777, 0o700);
        // A new file is 0600 and O_EXCL.
        let mut f = create_at(&root, "x").unwrap();
        f.write_all(b"1").unwrap();
        assert_eq!(f.metadata().unwrap().permissions().mode() & 0o777, 0o600);
        assert!(create_at(&root, "x").is_err());
        // A symlink in a checkpoint is not followed.
        std::os::unix::fs::symlink("/etc/passwd", d.path().join("checkpoints/l")).unwrap();
        assert!(open_at(&root, "l").is_err());
        // Opened to others: refused (control above: the same dir at 0700).
        std::fs::set_permissions(
            d.path().join("checkpoints"),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        assert!(open_root(d.path()).is_err());
        // A link in place of the directory: refused.
        let e = tempfile::tempdir().unwrap();
        std::fs::create_dir(e.path().join("real")).unwrap();
        std::os::unix::fs::symlink(e.path().join("real"), e.path().join("checkpoints")).unwrap();
        assert!(open_root(e.path()).is_err());
    }
}
