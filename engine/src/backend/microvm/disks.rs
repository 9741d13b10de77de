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
//!
//! A layer is image content, and mkfs.erofs holds every entry of it in
//! memory (about 4.6 KiB each, erofs-utils 1.5) while the store accepts a
//! million entries per layer: a layer of empty files would cost the host
//! GBs (attack review s6, S6-VM-2). So a layer of more than
//! `MKFS_BOUNDS.entries` entries is refused before mkfs runs, and mkfs
//! runs under an address-space and a CPU-time limit for whatever the count
//! does not foresee (long names, xattrs); either way the create fails with
//! `ResourceExhausted` and nothing of the layer stays in the cache.

use std::io::Write;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use crate::error::{EngineError, Result};
use lockbox_protocol::ErrorCode;

/// mkfs output kept for an error message: a bound, not the whole log.
const MAX_TOOL_OUTPUT: usize = 2048;

/// What building one layer's erofs image may take.
#[derive(Clone, Copy, Debug)]
struct MkfsBounds {
    /// Entries (files, directories, links...) in the layer.
    entries: u64,
    /// mkfs.erofs's address space (RLIMIT_AS), bytes.
    address_space: u64,
    /// mkfs.erofs's CPU time (RLIMIT_CPU), seconds.
    cpu_secs: u64,
}

/// 100,000 entries (more than most images hold in all their layers) take
/// about 0.45 GiB in mkfs.erofs; the address-space bound leaves room above
/// that for long names and xattrs. Five minutes of CPU is many GiB of lz4.
const MKFS_BOUNDS: MkfsBounds = MkfsBounds {
    entries: 100_000,
    address_space: 1 << 30,
    cpu_secs: 300,
};

fn run_output(cmd: &mut Command, what: &str) -> Result<Output> {
    cmd.stdin(Stdio::null())
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .output()
        .map_err(|e| EngineError::io(format!("run {what}"), e))
}

fn stderr_of(out: &Output) -> String {
    let mut msg = String::from_utf8_lossy(&out.stderr).into_owned();
    msg.truncate(MAX_TOOL_OUTPUT);
    msg.trim().to_string()
}

fn run(cmd: &mut Command, what: &str) -> Result<()> {
    let out = run_output(cmd, what)?;
    if out.status.success() {
        return Ok(());
    }
    Err(EngineError::internal(format!(
        "{what} failed: {}",
        stderr_of(&out)
    )))
}

/// Counts the entries under `dir` (symlinks not followed), failing as
/// soon as there are more than `max`: the walk itself stays bounded.
fn count_entries(dir: &Path, max: u64) -> Result<u64> {
    let mut count = 0u64;
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let rd = std::fs::read_dir(&d).map_err(|e| EngineError::io(d.display(), e))?;
        for e in rd {
            let e = e.map_err(|e| EngineError::io(d.display(), e))?;
            count += 1;
            if count > max {
                return Err(EngineError::new(
                    ErrorCode::ResourceExhausted,
                    format!(
                        "microvm backend: an image layer holds more than {max} entries, \
                         the most it turns into a guest disk (mkfs.erofs keeps every \
                         entry in memory)"
                    ),
                ));
            }
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                todo.push(e.path());
            }
        }
    }
    Ok(count)
}

fn fsync(path: &Path) -> Result<()> {
    std::fs::File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(|e| EngineError::io(path.display(), e))
}

fn mkfs_erofs(src: &str, out: &Path, bounds: MkfsBounds) -> Result<()> {
    if which("mkfs.erofs").is_none() {
        return Err(EngineError::unsupported(
            "microvm backend: mkfs.erofs is not installed (Debian: erofs-utils)",
        ));
    }
    count_entries(Path::new(src), bounds.entries)?;
    // lz4, not lz4hc: about as small for a typical image and 5x faster to
    // build; the guest kernel has EROFS_FS_ZIP with lz4 built in.
    let mut cmd = Command::new("mkfs.erofs");
    cmd.args(["--quiet", "-zlz4"]).arg(out).arg(src);
    let (space, cpu) = (bounds.address_space, bounds.cpu_secs);
    // SAFETY: the closure runs in the forked child before exec and only
    // calls setrlimit (async-signal-safe) on values copied in.
    unsafe {
        cmd.pre_exec(move || {
            for (res, v) in [(libc::RLIMIT_AS, space), (libc::RLIMIT_CPU, cpu)] {
                let lim = libc::rlimit {
                    rlim_cur: v,
                    rlim_max: v,
                };
                if libc::setrlimit(res, &lim) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let res = run_output(&mut cmd, "mkfs.erofs")?;
    if res.status.success() {
        return Ok(());
    }
    let msg = stderr_of(&res);
    // Out of address space: malloc fails (ENOMEM, or an abort where it is
    // not checked); out of CPU: SIGXCPU, then SIGKILL at the hard limit.
    let bound = msg.contains("Cannot allocate memory")
        || matches!(
            res.status.signal(),
            Some(libc::SIGXCPU | libc::SIGKILL | libc::SIGSEGV | libc::SIGABRT | libc::SIGBUS)
        );
    if bound {
        return Err(EngineError::new(
            ErrorCode::ResourceExhausted,
            format!(
                "microvm backend: an image layer is too large to turn into a guest disk: \
                 mkfs.erofs exceeded its bounds ({} MiB of memory, {} s of CPU): {}",
                space >> 20,
                cpu,
                if msg.is_empty() {
                    res.status.to_string()
                } else {
                    msg
                }
            ),
        ));
    }
    Err(EngineError::internal(format!("mkfs.erofs failed: {msg}")))
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
    layer_image_within(cache, dir, digest, i, layer, MKFS_BOUNDS)
}

fn layer_image_within(
    cache: &Path,
    dir: &Path,
    digest: Option<&str>,
    i: usize,
    layer: &str,
    bounds: MkfsBounds,
) -> Result<PathBuf> {
    let Some(digest) = digest else {
        let out = dir.join(format!("layer{i}.erofs"));
        let built = mkfs_erofs(layer, &out, bounds);
        if built.is_err() {
            let _ = std::fs::remove_file(&out);
        }
        return built
            .map(|_| out)
            .map_err(|e| e.context(format!("layer {i}")));
    };
    let image_dir = cache.join(digest_dir(digest)?);
    let key = sha256_hex(format!("{digest}\0{i}\0{layer}").as_bytes());
    let out = image_dir.join(format!("{key}.erofs"));
    if out.is_file() {
        return Ok(out);
    }
    std::fs::create_dir_all(&image_dir).map_err(|e| EngineError::io(image_dir.display(), e))?;
    let tmp = image_dir.join(format!(".tmp-{key}-{}", crate::names::new_id()));
    let built = mkfs_erofs(layer, &tmp, bounds)
        .and_then(|_| fsync(&tmp))
        .and_then(|_| std::fs::rename(&tmp, &out).map_err(|e| EngineError::io(out.display(), e)));
    if built.is_err() {
        let _ = std::fs::remove_file(&tmp);
        // Only when empty: another layer of the image may be cached there.
        let _ = std::fs::remove_dir(&image_dir);
    }
    built.map_err(|e| e.context(format!("layer {i}")))?;
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

    /// A layer directory of `n` empty files, 1000 to a directory.
    fn many_files(root: &Path, n: usize) -> PathBuf {
        let layer = root.join("layer");
        for i in 0..n {
            let d = layer.join(format!("d{}", i / 1000));
            if i % 1000 == 0 {
                std::fs::create_dir_all(&d).unwrap();
            }
            std::fs::File::create(d.join(format!("f{i}"))).unwrap();
        }
        layer
    }

    fn cached_files(cache: &Path) -> Vec<PathBuf> {
        let mut found = Vec::new();
        for d in std::fs::read_dir(cache).into_iter().flatten().flatten() {
            found.push(d.path());
            for f in std::fs::read_dir(d.path()).into_iter().flatten().flatten() {
                found.push(f.path());
            }
        }
        found
    }

    // S6-VM-2: a layer of more entries than the bound is refused before
    // mkfs.erofs runs, with a typed error naming the reason, and leaves
    // nothing in the cache; the same layer builds under a bound above its
    // count (the control).
    #[test]
    fn a_layer_over_the_entry_bound_is_refused_and_leaves_nothing() {
        if which("mkfs.erofs").is_none() {
            eprintln!("skipped: mkfs.erofs is not installed (Debian: erofs-utils)");
            return;
        }
        let t = tempfile::tempdir().unwrap();
        let layer = many_files(t.path(), 2000);
        let l = layer.to_str().unwrap();
        let (cache, sandbox) = (t.path().join("cache"), t.path().join("sb"));
        std::fs::create_dir(&sandbox).unwrap();
        let tight = MkfsBounds {
            entries: 1000,
            ..MKFS_BOUNDS
        };
        let e = layer_image_within(&cache, &sandbox, Some(DIGEST_A), 0, l, tight).unwrap_err();
        assert_eq!(e.code, ErrorCode::ResourceExhausted, "{e}");
        assert!(e.message.contains("more than 1000 entries"), "{e}");
        assert_eq!(cached_files(&cache), Vec::<PathBuf>::new());
        let e = layer_image_within(&cache, &sandbox, None, 0, l, tight).unwrap_err();
        assert_eq!(e.code, ErrorCode::ResourceExhausted, "{e}");
        assert!(!sandbox.join("layer0.erofs").exists());

        let roomy = MkfsBounds {
            entries: 2002,
            ..MKFS_BOUNDS
        };
        let a = layer_image_within(&cache, &sandbox, Some(DIGEST_A), 0, l, roomy).unwrap();
        assert!(a.is_file());
    }

    // S6-VM-2, the backstop: mkfs.erofs past its address-space bound fails
    // the build with the same typed error and leaves no temporary file;
    // with the default bounds the same layer builds (the control: the
    // bound, not the layer, failed it).
    #[test]
    fn mkfs_over_its_memory_bound_fails_typed_and_leaves_nothing() {
        if which("mkfs.erofs").is_none() {
            eprintln!("skipped: mkfs.erofs is not installed (Debian: erofs-utils)");
            return;
        }
        let t = tempfile::tempdir().unwrap();
        // ~4.6 KiB each in mkfs.erofs: 20,000 entries need ~90 MiB.
        let layer = many_files(t.path(), 20_000);
        let l = layer.to_str().unwrap();
        let (cache, sandbox) = (t.path().join("cache"), t.path().join("sb"));
        std::fs::create_dir(&sandbox).unwrap();
        let small = MkfsBounds {
            address_space: 48 << 20,
            ..MKFS_BOUNDS
        };
        let e = layer_image_within(&cache, &sandbox, Some(DIGEST_A), 0, l, small).unwrap_err();
        assert_eq!(e.code, ErrorCode::ResourceExhausted, "{e}");
        assert!(e.message.contains("exceeded its bounds"), "{e}");
        assert_eq!(cached_files(&cache), Vec::<PathBuf>::new());

        let a = layer_image_within(&cache, &sandbox, Some(DIGEST_A), 0, l, MKFS_BOUNDS).unwrap();
        assert!(a.is_file());
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
