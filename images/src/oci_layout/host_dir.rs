//! A host directory the caller named whose content may be hostile (an OCI
//! layout a sandbox wrote into a volume; the parent of an export that a
//! sandbox can rename things in). The directory is opened once, without
//! following any symlink on its path, and everything below it is reached
//! relative to that fd: a name swapped for a link, a FIFO or a device
//! after the caller looked is refused, never followed, opened or waited on.

use std::ffi::CString;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::error::{ImageError, Result};

const RESOLVE_NO_MAGICLINKS: u64 = 0x02;
const RESOLVE_NO_SYMLINKS: u64 = 0x04;
const RESOLVE_BENEATH: u64 = 0x08;

#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

fn openat2(dir: RawFd, path: &Path, flags: libc::c_int, resolve: u64) -> io::Result<OwnedFd> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in a path"))?;
    let how = OpenHow {
        flags: (flags | libc::O_CLOEXEC) as u64,
        mode: 0,
        resolve,
    };
    // SAFETY: valid fd, C string and struct of the size passed.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dir,
            c.as_ptr(),
            &how as *const OpenHow,
            std::mem::size_of::<OpenHow>(),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just gave us this fd.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

fn refused(path: &Path, e: io::Error) -> ImageError {
    if e.raw_os_error() == Some(libc::ELOOP) || e.raw_os_error() == Some(libc::EXDEV) {
        ImageError::InvalidArgument(format!(
            "{}: a symlink on the path; lockbox never follows host symlinks (resolve the path yourself if you trust every link on it)",
            path.display()
        ))
    } else {
        ImageError::io("open", path, e)
    }
}

/// Opens the regular file the caller named (a tarball to import, which a
/// sandbox may have written), refusing a symlink anywhere on its path and
/// a FIFO or device by its type (opened without blocking).
pub(crate) fn open_host_file(path: &Path) -> Result<File> {
    let fd = openat2(
        libc::AT_FDCWD,
        path,
        libc::O_RDONLY | libc::O_NONBLOCK | libc::O_NOCTTY,
        RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS,
    )
    .map_err(|e| refused(path, e))?;
    regular(File::from(fd), path)
}

fn regular(f: File, path: &Path) -> Result<File> {
    let m = f.metadata().map_err(|e| ImageError::io("stat", path, e))?;
    if !m.file_type().is_file() {
        return Err(ImageError::invalid_image(format!(
            "{} is not a regular file",
            path.display()
        )));
    }
    Ok(f)
}

/// An open host directory; see the module doc.
pub(crate) struct HostDir {
    fd: OwnedFd,
    path: PathBuf,
}

impl HostDir {
    /// Opens `path` (absolute or relative to the working directory)
    /// refusing a symlink anywhere on it.
    pub(crate) fn open(path: &Path) -> Result<Self> {
        let fd = openat2(
            libc::AT_FDCWD,
            path,
            libc::O_PATH | libc::O_DIRECTORY,
            RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS,
        )
        .map_err(|e| refused(path, e))?;
        Ok(Self {
            fd,
            path: path.to_path_buf(),
        })
    }

    pub(crate) fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Opens the regular file `rel` beneath the directory: no link on the
    /// way, no `..` out of it, and opened without blocking, so a FIFO or a
    /// device is refused by its type, never waited on.
    pub(crate) fn open_file(&self, rel: &Path) -> Result<File> {
        let full = self.path.join(rel);
        let fd = openat2(
            self.fd(),
            rel,
            libc::O_RDONLY | libc::O_NONBLOCK | libc::O_NOCTTY,
            RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS,
        )
        .map_err(|e| refused(&full, e))?;
        regular(File::from(fd), &full)
    }

    /// The whole of the regular file `rel`, refused past `max` bytes
    /// (read through a bound, whatever its size says).
    pub(crate) fn read_bounded(&self, rel: &Path, max: u64) -> Result<Vec<u8>> {
        let full = self.path.join(rel);
        let mut body = Vec::new();
        self.open_file(rel)?
            .take(max + 1)
            .read_to_end(&mut body)
            .map_err(|e| ImageError::io("read", &full, e))?;
        if body.len() as u64 > max {
            return Err(ImageError::invalid_image(format!(
                "{} is more than {max} bytes",
                full.display()
            )));
        }
        Ok(body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // A FIFO, a link (to a readable file outside) and an oversized file
    // beneath the directory are refused; the control file reads. The
    // directory named through a link is refused too.
    #[test]
    fn hostile_entries_are_refused_not_followed() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("d");
        std::fs::create_dir(&d).unwrap();
        std::fs::write(d.join("ok"), "fine").unwrap();
        std::fs::write(t.path().join("outside"), "secret").unwrap();
        std::os::unix::fs::symlink(t.path().join("outside"), d.join("link")).unwrap();
        let fifo = CString::new(d.join("fifo").as_os_str().as_bytes()).unwrap();
        // SAFETY: valid path.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
        std::fs::write(d.join("big"), vec![b'x'; 100]).unwrap();
        std::os::unix::fs::symlink(&d, t.path().join("dirlink")).unwrap();

        let h = HostDir::open(&d).unwrap();
        assert_eq!(h.read_bounded(Path::new("ok"), 10).unwrap(), b"fine");
        // Control: the link does lead to a readable file.
        assert_eq!(std::fs::read(d.join("link")).unwrap(), b"secret");
        assert!(h.read_bounded(Path::new("link"), 10).is_err());
        assert!(h.read_bounded(Path::new("fifo"), 10).is_err());
        assert!(h.read_bounded(Path::new("big"), 10).is_err());
        assert!(h.read_bounded(Path::new("../outside"), 10).is_err());
        assert!(HostDir::open(&t.path().join("dirlink")).is_err());
        assert!(open_host_file(&d.join("ok")).is_ok());
        assert!(open_host_file(&d.join("fifo")).is_err());
        assert!(open_host_file(&d.join("link")).is_err());
        assert!(open_host_file(&t.path().join("dirlink/ok")).is_err());
    }
}
