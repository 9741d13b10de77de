//! Durable file-system steps (fsync of files and directories, atomic
//! replace, hashing a file) and the rule for reading a release directory:
//! no link followed, no FIFO blocked on, nothing that a user other than
//! the caller (or root) could have changed.

use std::fs::{self, File, Metadata, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

const NO_FOLLOW: i32 = libc::O_NOFOLLOW | libc::O_CLOEXEC;

fn unsafe_path(path: &Path, why: String) -> Error {
    Error::Unsafe(format!(
        "{} {why} (a release is checked only from files owned by this user or root \
         and not writable by others)",
        path.display()
    ))
}

fn trusted_owner(uid: u32) -> bool {
    // SAFETY: geteuid has no preconditions.
    uid == 0 || uid == unsafe { libc::geteuid() }
}

/// The ownership rule for one fstat'ed file: a regular file (never a link)
/// owned by this user or root, with no group/other write bit.
fn check_file(path: &Path, m: &Metadata) -> Result<()> {
    let ft = m.file_type();
    let mode = m.mode();
    if ft.is_symlink() {
        return Err(unsafe_path(path, "is a symbolic link".into()));
    }
    if !ft.is_file() {
        return Err(unsafe_path(path, "is not a regular file".into()));
    }
    if !trusted_owner(m.uid()) {
        return Err(unsafe_path(
            path,
            format!("is owned by uid {}, not by this user or root", m.uid()),
        ));
    }
    if mode & 0o022 != 0 {
        return Err(unsafe_path(
            path,
            format!(
                "is writable by group or others (mode {:04o})",
                mode & 0o7777
            ),
        ));
    }
    Ok(())
}

fn open_no_follow(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(NO_FOLLOW | libc::O_NONBLOCK)
        .open(path)
}

/// Opens a file of a release directory for reading: no link followed, no
/// blocking on a FIFO, refused unless `check_file` accepts it.
pub fn open_trusted(path: &Path) -> Result<(File, Metadata)> {
    let f = open_no_follow(path).map_err(|e| {
        if e.raw_os_error() == Some(libc::ELOOP) {
            unsafe_path(path, "is a symbolic link".into())
        } else {
            Error::io_at("open", path, e)
        }
    })?;
    let m = f.metadata().map_err(|e| Error::io_at("stat", path, e))?;
    check_file(path, &m)?;
    Ok((f, m))
}

/// A small file of a release directory (manifest, signature), at most `limit` bytes.
pub fn read_trusted(path: &Path, limit: u64) -> Result<Vec<u8>> {
    let (f, m) = open_trusted(path)?;
    if m.len() > limit {
        return Err(Error::Verification(format!(
            "{} is larger than {limit} bytes",
            path.display()
        )));
    }
    let mut out = Vec::new();
    f.take(limit)
        .read_to_end(&mut out)
        .map_err(|e| Error::io_at("read", path, e))?;
    Ok(out)
}

/// A new file under an unpredictable name in `dir`: O_EXCL|O_NOFOLLOW,
/// so nothing planted there is ever opened.
fn create_exclusive(dir: &Path, prefix: &str) -> Result<(File, PathBuf)> {
    let nonce: u128 = rand::random();
    let path = dir.join(format!("{prefix}{nonce:032x}"));
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(NO_FOLLOW)
        .open(&path)
        .map_err(|e| Error::io_at("create", &path, e))?;
    Ok((f, path))
}

pub fn sync_dir(dir: &Path) -> Result<()> {
    OpenOptions::new()
        .read(true)
        .custom_flags(NO_FOLLOW | libc::O_DIRECTORY)
        .open(dir)
        .and_then(|f| f.sync_all())
        .map_err(|e| Error::io_at("fsync directory", dir, e))
}

/// Writes `bytes` to `path` through a temp file + fsync + rename, so a
/// reader sees either the old content or the new, never a torn file.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let prefix = format!(".{}.tmp-", path.file_name().unwrap().to_string_lossy());
    let (mut f, tmp) = create_exclusive(dir, &prefix)?;
    let done = f
        .write_all(bytes)
        .and_then(|_| f.set_permissions(fs::Permissions::from_mode(mode)))
        .and_then(|_| f.sync_all())
        .map_err(|e| Error::io_at("write", &tmp, e))
        .and_then(|_| fs::rename(&tmp, path).map_err(|e| Error::io_at("rename into", path, e)));
    if done.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    done?;
    sync_dir(dir)
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Size and sha256 of what `f` (opened from `path`) holds, in one pass.
pub fn hash_reader(mut f: File, path: &Path) -> Result<(u64, String)> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 18];
    let mut size = 0u64;
    loop {
        let n = f
            .read(&mut buf)
            .map_err(|e| Error::io_at("read", path, e))?;
        if n == 0 {
            return Ok((size, hex::encode(h.finalize())));
        }
        h.update(&buf[..n]);
        size += n as u64;
    }
}

/// Removes a directory tree if present; a missing path is not an error.
pub fn remove_tree(path: &Path) -> Result<()> {
    match fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io_at("remove", path, e)),
    }
}
