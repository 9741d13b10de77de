//! The guest's disks: the image's layers as read-only erofs images (built
//! once per image digest and layer, cached under the engine's home), a
//! per-sandbox ext4 disk for the writable layer (sparse, sized by the disk
//! limit), and the config disk carrying the spec.
//!
//! A cached image is built from the image store's layer (never from a
//! path a sandbox can write), to a temporary name, fsync'ed, then renamed:
//! a reader sees a whole image or none. The cache holds one directory per
//! image digest, so it goes with its image (`prune_layer_cache`, run when
//! images are removed or pruned and when the engine opens), and its
//! images are lz4-compressed: a layer's long runs of zeros (a sparse file
//! the unpacker kept sparse) cost a few KiB instead of their apparent size.

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
    // lz4, not lz4hc: about as small for a typical image and 5x faster to
    // build; the guest kernel has EROFS_FS_ZIP with lz4 built in.
    run(
        Command::new("mkfs.erofs")
            .args(["--quiet", "-zlz4"])
            .arg(out)
            .arg(src),
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
    let image_dir = cache.join(digest_dir(digest)?);
    let key = sha256_hex(format!("{digest}\0{i}\0{layer}").as_bytes());
    let out = image_dir.join(format!("{key}.erofs"));
    if out.is_file() {
        return Ok(out);
    }
    std::fs::create_dir_all(&image_dir).map_err(|e| EngineError::io(image_dir.display(), e))?;
    let tmp = image_dir.join(format!(".tmp-{key}-{}", crate::names::new_id()));
    let built = mkfs_erofs(layer, &tmp)
        .and_then(|_| fsync(&tmp))
        .and_then(|_| std::fs::rename(&tmp, &out).map_err(|e| EngineError::io(out.display(), e)));
    if built.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    built?;
    let _ = std::fs::File::open(&image_dir).and_then(|d| d.sync_all());
    Ok(out)
}

/// Where the cached layer images of the engine's home live.
pub fn cache_in(home: &Path) -> PathBuf {
    home.join("vm").join("erofs")
}

/// The cache directory of an image: its digest's hex. The digest comes
/// from the store, but it becomes a path, so it is checked to be one.
fn digest_dir(digest: &str) -> Result<String> {
    let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(EngineError::internal(format!(
            "image digest {digest:?} is not a sha256"
        )));
    }
    Ok(hex.to_ascii_lowercase())
}

/// Removes the cached layer images of every image not in `stored` (digest
/// hexes), and files of the older flat layout. Best effort: what cannot be
/// removed now is tried again at the next call. Returns the entries
/// removed. A VM that is running keeps its disks open (qemu opened them at
/// start) and a checkpoint holds hard links of its own, so neither needs
/// the cache entry to stay.
pub fn prune_layer_cache(cache: &Path, stored: &std::collections::HashSet<String>) -> usize {
    let Ok(entries) = std::fs::read_dir(cache) else {
        return 0;
    };
    let mut removed = 0;
    for e in entries.flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        let Ok(ft) = e.file_type() else { continue };
        let gone = if ft.is_dir() {
            !stored.contains(name.as_ref()) && std::fs::remove_dir_all(e.path()).is_ok()
        } else {
            // The flat layout of earlier versions: nothing refers to it.
            std::fs::remove_file(e.path()).is_ok()
        };
        removed += usize::from(gone);
    }
    removed
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    const DIGEST_A: &str =
        "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const DIGEST_B: &str =
        "sha256:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

    fn allocated(p: &Path) -> u64 {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(p).unwrap().blocks() * 512
    }

    // A layer holding a 64 MiB file of zeros (what a few KiB of gzip in
    // an image unpack to) costs the cache little, and the cache of an
    // image goes when the image is no longer stored; another image's
    // stays (the control).
    #[test]
    fn cached_layers_are_compressed_and_go_with_their_image() {
        if which("mkfs.erofs").is_none() {
            eprintln!("skipped: mkfs.erofs is not installed (Debian: erofs-utils)");
            return;
        }
        let t = tempfile::tempdir().unwrap();
        let layer = t.path().join("layer");
        std::fs::create_dir(&layer).unwrap();
        let f = std::fs::File::create(layer.join("zeros")).unwrap();
        std::io::Write::write_all(&mut &f, &vec![0u8; 64 << 20]).unwrap();
        drop(f);
        let cache = t.path().join("cache");
        let sandbox = t.path().join("sb");
        std::fs::create_dir(&sandbox).unwrap();
        let l = layer.to_str().unwrap();

        let a = layer_image(&cache, &sandbox, Some(DIGEST_A), 0, l).unwrap();
        let b = layer_image(&cache, &sandbox, Some(DIGEST_B), 0, l).unwrap();
        assert!(a.starts_with(cache.join(&DIGEST_A[7..])), "{a:?}");
        let size = std::fs::metadata(&a).unwrap().len();
        assert!(
            size < 4 << 20 && allocated(&a) < 4 << 20,
            "64 MiB of zeros took {size} bytes in the cache"
        );
        // Cached: the second call returns the same file.
        assert_eq!(
            layer_image(&cache, &sandbox, Some(DIGEST_A), 0, l).unwrap(),
            a
        );

        // A file of the flat layout of earlier versions goes too.
        std::fs::write(cache.join("0123.erofs"), b"old").unwrap();
        let stored: HashSet<String> = [DIGEST_B[7..].to_string()].into();
        assert_eq!(prune_layer_cache(&cache, &stored), 2);
        assert!(!a.exists() && !cache.join(&DIGEST_A[7..]).exists());
        assert!(b.is_file(), "the stored image's layer was removed");
        assert!(!cache.join("0123.erofs").exists());
        // A digest that is not one never becomes a path.
        assert!(layer_image(&cache, &sandbox, Some("sha256:../../x"), 0, l).is_err());
    }
}
