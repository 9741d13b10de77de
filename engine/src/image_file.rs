//! Reading a small file out of an image's root filesystem on the host.
//!
//! The image is the attacker's: its /etc/passwd may be a symlink to a host
//! file, to /dev/zero or to a FIFO. So the file is opened with
//! `openat2(RESOLVE_IN_ROOT)` beneath the layer's directory (a symlink
//! resolves inside the image, as it would in the sandbox, never on the
//! host), non-blocking, must be a regular file, and is read up to a bound.

use std::ffi::CString;
use std::io::{self, Read};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Larger than any real passwd or group file.
pub const MAX_IMAGE_FILE: u64 = 4 << 20;

const RESOLVE_NO_MAGICLINKS: u64 = 0x02;
const RESOLVE_IN_ROOT: u64 = 0x10;

#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

/// The content of `rel` inside the image root `root`, or None when it does
/// not exist there. Errors for anything but a regular file of at most
/// `MAX_IMAGE_FILE` bytes.
pub fn read(root: &Path, rel: &str) -> io::Result<Option<Vec<u8>>> {
    let r = CString::new(root.as_os_str().as_bytes())?;
    // SAFETY: valid C string.
    let dir = unsafe {
        libc::open(
            r.as_ptr(),
            libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if dir < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fresh fd.
    let dir = unsafe { OwnedFd::from_raw_fd(dir) };
    let c = CString::new(rel)?;
    // O_PATH first: opening a device node for reading runs its driver's
    // open (a watchdog arms, a tape rewinds) before any type check could.
    let how = OpenHow {
        flags: (libc::O_PATH | libc::O_CLOEXEC) as u64,
        mode: 0,
        resolve: RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS,
    };
    // SAFETY: valid fd, C string and struct of the size passed.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            std::os::fd::AsRawFd::as_raw_fd(&dir),
            c.as_ptr(),
            &how as *const OpenHow,
            std::mem::size_of::<OpenHow>(),
        )
    };
    if fd < 0 {
        let e = io::Error::last_os_error();
        if matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::ENOTDIR)) {
            return Ok(None);
        }
        return Err(e);
    }
    // SAFETY: fresh fd.
    let at = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd as i32) });
    let m = at.metadata()?;
    if !m.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("/{rel} in the image is not a regular file"),
        ));
    }
    // Reopened through the O_PATH fd: the same inode, now known to be a
    // regular file, whatever the path names by now.
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(format!(
            "/proc/self/fd/{}",
            std::os::fd::AsRawFd::as_raw_fd(&at)
        ))?;
    if m.len() > MAX_IMAGE_FILE {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("/{rel} in the image is larger than {MAX_IMAGE_FILE} bytes"),
        ));
    }
    let mut out = Vec::new();
    f.take(MAX_IMAGE_FILE).read_to_end(&mut out)?;
    Ok(Some(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_inside_the_image_only() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("passwd"), "host:x:7:7::/:/bin/sh\n").unwrap();
        let img = tempfile::tempdir().unwrap();
        let etc = img.path().join("etc");
        std::fs::create_dir(&etc).unwrap();
        std::fs::write(etc.join("group"), "g:x:5:\n").unwrap();
        assert_eq!(read(img.path(), "etc/group").unwrap().unwrap(), b"g:x:5:\n");
        assert!(read(img.path(), "etc/missing").unwrap().is_none());
        // An absolute link resolves inside the image: here to nothing.
        std::os::unix::fs::symlink(outside.path().join("passwd"), etc.join("passwd")).unwrap();
        assert!(read(img.path(), "etc/passwd").unwrap().is_none());
        // Devices and FIFOs are refused, without blocking.
        std::fs::remove_file(etc.join("passwd")).unwrap();
        std::os::unix::fs::symlink("../../../../dev/zero", etc.join("passwd")).unwrap();
        assert!(read(img.path(), "etc/passwd").unwrap().is_none());
        std::fs::remove_file(etc.join("passwd")).unwrap();
        let p = CString::new(etc.join("passwd").as_os_str().as_bytes()).unwrap();
        // SAFETY: valid C string.
        assert_eq!(unsafe { libc::mkfifo(p.as_ptr(), 0o644) }, 0);
        assert!(read(img.path(), "etc/passwd").is_err());
        // A device node is refused without being opened for reading: a
        // copy of /dev/null is harmless to open, and still refused.
        std::fs::remove_file(etc.join("passwd")).unwrap();
        if unsafe { libc::mknod(p.as_ptr(), libc::S_IFCHR | 0o644, libc::makedev(1, 3)) } == 0 {
            assert!(read(img.path(), "etc/passwd").is_err());
        }
    }
}
