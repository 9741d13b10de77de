//! Crash-safe small-file writes and unique temp names.

use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{IoContext, Result};

/// Writes to a sibling temp file, fsyncs, renames over `path`.
pub(crate) fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("tmp"),
        unique_suffix()
    ));
    let mut f = File::create(&tmp).ctx("create", &tmp)?;
    f.write_all(data).ctx("write", &tmp)?;
    f.sync_all().ctx("fsync", &tmp)?;
    drop(f);
    std::fs::rename(&tmp, path).ctx("rename", path)?;
    sync_dir(dir)
}

pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).ctx("fsync", dir)
}

pub(crate) fn unique_suffix() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{}-{}-{}",
        std::process::id(),
        nanos,
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Flushes the whole file system holding `dir` (one call instead of an
/// fsync per unpacked file).
pub(crate) fn syncfs(dir: &Path) -> Result<()> {
    use std::os::fd::AsRawFd;
    let f = File::open(dir).ctx("open", dir)?;
    // SAFETY: valid fd for the life of f.
    if unsafe { libc::syncfs(f.as_raw_fd()) } != 0 {
        return Err(crate::error::ImageError::io(
            "syncfs",
            dir,
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}
