//! The guest's disks: the image's layers as read-only erofs images (built
//! once per image digest and layer, cached under the engine's home), a
//! per-sandbox ext4 disk for the writable layer (sparse, sized by the disk
//! limit), and the config disk carrying the spec.
//!
//! A cached image is built from the image store's layer (never from a
//! path a sandbox can write), to a temporary name, fsync'ed, then renamed:
//! a reader sees a whole image or none.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::error::{EngineError, Result};

/// mkfs output kept for an error message: a bound, not the whole log.
const MAX_TOOL_OUTPUT: usize = 2048;

fn run(cmd: &mut Command, what: &str) -> Result<()> {
    let out = cmd
        .stdin(Stdio::null())
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .output()
        .map_err(|e| EngineError::io(format!("run {what}"), e))?;
    if out.status.success() {
        return Ok(());
    }
    let mut msg = String::from_utf8_lossy(&out.stderr).into_owned();
    msg.truncate(MAX_TOOL_OUTPUT);
    Err(EngineError::internal(format!(
        "{what} failed: {}",
        msg.trim()
    )))
}

fn fsync(path: &Path) -> Result<()> {
    std::fs::File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(|e| EngineError::io(path.display(), e))
}

fn mkfs_erofs(src: &str, out: &Path) -> Result<()> {
    if which("mkfs.erofs").is_none() {
        return Err(EngineError::unsupported(
            "microvm backend: mkfs.erofs is not installed (Debian: erofs-utils)",
        ));
    }
    run(
        Command::new("mkfs.erofs").arg("--quiet").arg(out).arg(src),
        "mkfs.erofs",
    )
}

fn which(tool: &str) -> Option<PathBuf> {
    ["/usr/sbin", "/usr/bin", "/sbin", "/bin"]
        .iter()
        .map(|d| Path::new(d).join(tool))
        .find(|p| p.is_file())
}

/// An erofs image of `layer`: from the cache when the layer belongs to an
/// image of the store (`digest`), else built into the sandbox's own
/// directory (a host `rootfs` directory may change between sandboxes).
pub fn layer_image(
    cache: &Path,
    dir: &Path,
    digest: Option<&str>,
    i: usize,
    layer: &str,
) -> Result<PathBuf> {
    let Some(digest) = digest else {
        let out = dir.join(format!("layer{i}.erofs"));
        mkfs_erofs(layer, &out)?;
        return Ok(out);
    };
    let key = sha256_hex(format!("{digest}\0{i}\0{layer}").as_bytes());
    let out = cache.join(format!("{key}.erofs"));
    if out.is_file() {
        return Ok(out);
    }
    std::fs::create_dir_all(cache).map_err(|e| EngineError::io(cache.display(), e))?;
    let tmp = cache.join(format!(".tmp-{key}-{}", crate::names::new_id()));
    let built = mkfs_erofs(layer, &tmp)
        .and_then(|_| fsync(&tmp))
        .and_then(|_| std::fs::rename(&tmp, &out).map_err(|e| EngineError::io(out.display(), e)));
    if built.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    built?;
    let _ = std::fs::File::open(cache).and_then(|d| d.sync_all());
    Ok(out)
}

pub fn sha256_hex(b: &[u8]) -> String {
    lockbox_images::Digest::of_bytes(b).hex().to_string()
}

/// A sparse file of `mib` MiB with an empty ext4 on it (no journal: the
/// layer dies with the sandbox, a crash loses nothing worth replaying).
pub fn writable(path: &Path, mib: u64) -> Result<()> {
    let f = std::fs::File::create(path).map_err(|e| EngineError::io(path.display(), e))?;
    f.set_len(mib << 20)
        .map_err(|e| EngineError::io(path.display(), e))?;
    drop(f);
    if which("mkfs.ext4").is_none() {
        return Err(EngineError::unsupported(
            "microvm backend: mkfs.ext4 is not installed (Debian: e2fsprogs)",
        ));
    }
    run(
        Command::new("mkfs.ext4")
            .args(["-q", "-F", "-m", "0", "-O", "^has_journal"])
            .args(["-E", "lazy_itable_init=1,nodiscard"])
            .arg(path),
        "mkfs.ext4",
    )
}

/// The config disk: the JSON, zero-padded to whole 4 KiB blocks (the
/// guest reads up to the first zero byte).
pub fn config(path: &Path, json: &[u8]) -> Result<()> {
    let mut bytes = json.to_vec();
    let padded = bytes.len().div_ceil(4096).max(1) * 4096;
    bytes.resize(padded, 0);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|e| EngineError::io(path.display(), e))?;
    f.write_all(&bytes)
        .map_err(|e| EngineError::io(path.display(), e))
}
