//! The image store: `$LOCKBOX_HOME/images`.
//!
//! ```text
//! images/.lock                 shared by imports, exclusive for remove/prune
//! images/locks/<key>.lock      one unpack per image at a time
//! images/tmp/<unique>/         an unpack in progress (discarded on error)
//! images/<key>/rootfs/         the unpacked root file system (read-only use)
//! images/<key>/image.json      digest, config, stats, source
//! images/<key>/.complete       written last: no marker, no image
//! images/refs/<sha256(name)>.json   name -> digest
//! ```
//! `<key>` is the image digest's hex (the archive's sha256 for release
//! assets, the config digest for OCI images), plus `-u<base>` when files
//! are owned through a shifted id mapping.

use std::fs::Permissions;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::cancel::Cancel;
use crate::config::ImageConfig;
use crate::digest::Digest;
use crate::error::{ImageError, IoContext, Result};
use crate::fsutil::{syncfs, unique_suffix, write_atomic};
use crate::lock::{lock, FileLock};
use crate::options::StoreOptions;
use crate::refs::{self, Ref, SourceStamp};
use crate::unpack::{UnpackStats, Unpacker};

/// An image ready to be used as a sandbox's read-only lower dir.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResolvedImage {
    /// Never modify: every sandbox of this image shares it.
    pub rootfs: PathBuf,
    pub config: ImageConfig,
    pub digest: Digest,
}

/// One stored image, for `List`/`Inspect`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageInfo {
    pub digest: Digest,
    pub names: Vec<String>,
    pub rootfs: PathBuf,
    pub config: ImageConfig,
    pub stats: UnpackStats,
    /// Where it came from (an archive path, an OCI layout, a reference).
    pub source: String,
    pub created_unix: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PruneReport {
    pub removed: Vec<Digest>,
    pub kept_in_use: Vec<Digest>,
    pub removed_temp_dirs: u64,
}

#[derive(Serialize, Deserialize)]
struct ImageMeta {
    digest: Digest,
    config: ImageConfig,
    stats: UnpackStats,
    source: String,
    created_unix: u64,
}

/// What an import fills into a fresh root, returned to the store.
pub(crate) struct Filled {
    pub digest: Digest,
    pub config: ImageConfig,
    pub source: String,
}

pub struct ImageStore {
    root: PathBuf,
    opts: StoreOptions,
}

const COMPLETE: &str = ".complete";

impl ImageStore {
    /// Opens (creating if needed) the store under `home/images` with
    /// default options: ownership from the current user, 16 GiB budget.
    pub fn open(home: &Path) -> Result<Self> {
        Self::open_with(home, StoreOptions::default())
    }

    pub fn open_with(home: &Path, opts: StoreOptions) -> Result<Self> {
        let root = home.join("images");
        for d in [
            root.clone(),
            root.join("locks"),
            root.join("tmp"),
            root.join("refs"),
        ] {
            std::fs::create_dir_all(&d).ctx("mkdir", &d)?;
        }
        Ok(ImageStore { root, opts })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn options(&self) -> &StoreOptions {
        &self.opts
    }

    /// Resolves what `WithImage(..)` names:
    /// - `sha256:<hex>`: an image already in the store;
    /// - a plain name (`base`, `python`): the release asset
    ///   `images_dir/<name>.tar.zst`, unpacked on first use and found again
    ///   by a stat of the asset afterwards (no re-hash); if there is no
    ///   such asset, a stored image of that name (imported or pulled).
    ///
    /// Errors: `NotFound` when neither exists, `InvalidArgument` for a
    /// malformed name, `InvalidImage`/`DigestMismatch`/`TooLarge` for bad
    /// content, `Canceled`.
    pub fn resolve(
        &self,
        name_or_ref: &str,
        images_dir: &Path,
        cancel: &Cancel,
    ) -> Result<ResolvedImage> {
        if name_or_ref.starts_with("sha256:") {
            let digest = Digest::parse(name_or_ref)?;
            return self.stored(&digest);
        }
        validate_name(name_or_ref)?;
        let existing = refs::read(&self.refs_dir(), name_or_ref);
        if is_asset_name(name_or_ref) {
            let asset = images_dir.join(format!("{name_or_ref}.tar.zst"));
            if asset.is_file() {
                let stamp = SourceStamp::of(&asset)?;
                if let Some(r) = &existing {
                    if r.source.as_ref() == Some(&stamp) && self.is_complete(&r.digest) {
                        return self.stored(&r.digest);
                    }
                }
                return self.import_archive(&asset, Some(name_or_ref), None, cancel);
            }
        }
        match existing {
            Some(r) if self.is_complete(&r.digest) => self.stored(&r.digest),
            _ => Err(ImageError::NotFound(format!(
                "{name_or_ref:?}: no {name_or_ref}.tar.zst in {} and no stored image of that name",
                images_dir.display()
            ))),
        }
    }

    /// Every complete image with the names that point at it.
    pub fn list(&self) -> Result<Vec<ImageInfo>> {
        let refs = refs::all(&self.refs_dir())?;
        let mut out = Vec::new();
        for digest in self.stored_digests()? {
            if self.is_complete(&digest) {
                out.push(self.info(&digest, &refs)?);
            }
        }
        out.sort_by(|a, b| a.names.cmp(&b.names).then(a.digest.cmp(&b.digest)));
        Ok(out)
    }

    /// One image by name or `sha256:` digest.
    pub fn inspect(&self, name_or_digest: &str) -> Result<ImageInfo> {
        let digest = self.lookup(name_or_digest)?;
        self.info(&digest, &refs::all(&self.refs_dir())?)
    }

    /// Removes a name; the content goes when no name is left on it. With a
    /// digest, removes the content and every name on it. `in_use` (digests
    /// of images live sandboxes use, from the engine) are protected: the
    /// call fails with `InUse` and changes nothing.
    pub fn remove(&self, name_or_digest: &str, in_use: &[Digest]) -> Result<()> {
        let _g = self.store_lock(true, &Cancel::never())?;
        let digest = self.lookup(name_or_digest)?;
        let all = refs::all(&self.refs_dir())?;
        let by_digest = name_or_digest.starts_with("sha256:");
        let others: Vec<&Ref> = all
            .iter()
            .filter(|r| r.digest == digest && (by_digest || r.name != name_or_digest))
            .collect();
        let drop_content = by_digest || others.is_empty();
        if drop_content && in_use.contains(&digest) {
            return Err(ImageError::InUse(name_or_digest.to_string()));
        }
        for r in all
            .iter()
            .filter(|r| r.digest == digest && (by_digest || r.name == name_or_digest))
        {
            let p = refs::ref_path(&self.refs_dir(), &r.name);
            std::fs::remove_file(&p).ctx("remove", &p)?;
        }
        if drop_content {
            self.remove_content(&digest)?;
        }
        Ok(())
    }

    /// Removes images no name points at (except `in_use`), unfinished
    /// unpacks and leftovers of crashed ones.
    pub fn prune(&self, in_use: &[Digest]) -> Result<PruneReport> {
        let _g = self.store_lock(true, &Cancel::never())?;
        let mut report = PruneReport::default();
        let tmp = self.root.join("tmp");
        for ent in std::fs::read_dir(&tmp).ctx("readdir", &tmp)? {
            let ent = ent.ctx("readdir", &tmp)?;
            if ent.file_type().is_ok_and(|t| t.is_dir()) {
                make_writable(&ent.path());
                std::fs::remove_dir_all(ent.path()).ctx("remove", &ent.path())?;
                report.removed_temp_dirs += 1;
            } else {
                // A temp dir's claim (reclaim.rs); no install runs now.
                let _ = std::fs::remove_file(ent.path());
            }
        }
        // No unpack runs under the exclusive lock: every digest lock file
        // is free to go.
        let locks = self.root.join("locks");
        for ent in std::fs::read_dir(&locks).ctx("readdir", &locks)? {
            let ent = ent.ctx("readdir", &locks)?;
            let _ = std::fs::remove_file(ent.path());
        }
        let named: Vec<Digest> = refs::all(&self.refs_dir())?
            .into_iter()
            .map(|r| r.digest)
            .collect();
        for digest in self.stored_digests()? {
            if named.contains(&digest) {
                continue;
            }
            if in_use.contains(&digest) || self.fork_in_progress(&digest) {
                report.kept_in_use.push(digest);
                continue;
            }
            self.remove_content(&digest)?;
            report.removed.push(digest);
        }
        Ok(report)
    }

    // ---- internals ----

    /// Digests of every image directory of this store's ownership, complete
    /// or not (other entries: refs, tmp, locks, other ownerships, are skipped).
    pub(crate) fn stored_digests(&self) -> Result<Vec<Digest>> {
        let suffix = self.opts.ownership.dir_suffix();
        let mut out = Vec::new();
        for ent in std::fs::read_dir(&self.root).ctx("readdir", &self.root)? {
            let ent = ent.ctx("readdir", &self.root)?;
            let key = ent.file_name().to_string_lossy().into_owned();
            let Some(hex) = key.strip_suffix(suffix.as_str()) else {
                continue;
            };
            let Ok(digest) = Digest::parse(hex) else {
                continue;
            };
            if hex.len() == 64 {
                out.push(digest);
            }
        }
        Ok(out)
    }

    pub(crate) fn refs_dir(&self) -> PathBuf {
        self.root.join("refs")
    }

    pub(crate) fn key(&self, d: &Digest) -> String {
        format!("{}{}", d.hex(), self.opts.ownership.dir_suffix())
    }

    pub(crate) fn image_dir(&self, d: &Digest) -> PathBuf {
        self.root.join(self.key(d))
    }

    pub(crate) fn is_complete(&self, d: &Digest) -> bool {
        self.image_dir(d).join(COMPLETE).is_file()
    }

    fn store_lock(&self, exclusive: bool, cancel: &Cancel) -> Result<FileLock> {
        lock(&self.root.join(".lock"), exclusive, cancel)
    }

    fn lookup(&self, name_or_digest: &str) -> Result<Digest> {
        let digest = if name_or_digest.starts_with("sha256:") {
            Digest::parse(name_or_digest)?
        } else {
            refs::read(&self.refs_dir(), name_or_digest)
                .map(|r| r.digest)
                .ok_or_else(|| ImageError::NotFound(name_or_digest.to_string()))?
        };
        if self.is_complete(&digest) {
            Ok(digest)
        } else {
            Err(ImageError::NotFound(name_or_digest.to_string()))
        }
    }

    fn meta(&self, d: &Digest) -> Result<ImageMeta> {
        let p = self.image_dir(d).join("image.json");
        let data = std::fs::read(&p).ctx("read", &p)?;
        serde_json::from_slice(&data)
            .map_err(|e| ImageError::invalid_image(format!("{}: {e}", p.display())))
    }

    fn stored(&self, d: &Digest) -> Result<ResolvedImage> {
        if !self.is_complete(d) {
            return Err(ImageError::NotFound(d.to_string()));
        }
        let meta = self.meta(d)?;
        Ok(ResolvedImage {
            rootfs: self.image_dir(d).join("rootfs"),
            config: meta.config,
            digest: d.clone(),
        })
    }

    fn info(&self, d: &Digest, refs: &[Ref]) -> Result<ImageInfo> {
        let meta = self.meta(d)?;
        Ok(ImageInfo {
            digest: d.clone(),
            names: refs
                .iter()
                .filter(|r| &r.digest == d)
                .map(|r| r.name.clone())
                .collect(),
            rootfs: self.image_dir(d).join("rootfs"),
            config: meta.config,
            stats: meta.stats,
            source: meta.source,
            created_unix: meta.created_unix,
        })
    }

    pub(crate) fn set_ref(
        &self,
        name: &str,
        digest: &Digest,
        source: Option<SourceStamp>,
    ) -> Result<()> {
        refs::write(
            &self.refs_dir(),
            &Ref {
                name: name.to_string(),
                digest: digest.clone(),
                source,
            },
        )
    }

    pub(crate) fn remove_content(&self, d: &Digest) -> Result<()> {
        let dir = self.image_dir(d);
        // Marker first: a crash midway leaves an incomplete dir, never a
        // half-deleted image that still looks complete.
        let marker = dir.join(COMPLETE);
        match std::fs::remove_file(&marker) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(ImageError::io("remove", &marker, e)),
        }
        make_writable(&dir);
        std::fs::remove_dir_all(&dir).ctx("remove", &dir)
    }

    /// Unpacks into a private temp dir, then publishes it with a rename and
    /// writes the completion marker last. Concurrent installs of the same
    /// digest: one unpacks, the others wait on its lock and reuse it.
    pub(crate) fn install(
        &self,
        known: Option<&Digest>,
        cancel: &Cancel,
        fill: impl FnOnce(&mut Unpacker) -> Result<Filled>,
    ) -> Result<ResolvedImage> {
        self.install_with(known, cancel, true, fill)
    }

    /// As `install`; `durable: false` skips the `syncfs` before publishing
    /// (Fork's unnamed layer for sandboxes that do not outlive their
    /// engine: reclaim.rs removes it at the next open after a crash).
    pub(crate) fn install_with(
        &self,
        known: Option<&Digest>,
        cancel: &Cancel,
        durable: bool,
        fill: impl FnOnce(&mut Unpacker) -> Result<Filled>,
    ) -> Result<ResolvedImage> {
        let _store = self.store_lock(false, cancel)?;
        let mut digest_lock = None;
        if let Some(d) = known {
            if self.is_complete(d) {
                return self.stored(d);
            }
            digest_lock = Some(self.digest_lock(d, cancel)?);
            if self.is_complete(d) {
                return self.stored(d);
            }
        }
        let tmp = self.root.join("tmp").join(unique_suffix());
        // Claimed before it exists: a reclaim at another engine's open
        // removes only unclaimed (crashed) temp dirs.
        let _claim = crate::reclaim::TempClaim::take(&tmp)?;
        std::fs::create_dir(&tmp).ctx("mkdir", &tmp)?;
        std::fs::set_permissions(&tmp, Permissions::from_mode(0o700)).ctx("chmod", &tmp)?;
        let rootfs = tmp.join("rootfs");
        let filled = (|| {
            std::fs::create_dir(&rootfs).ctx("mkdir", &rootfs)?;
            let mut unpacker = Unpacker::new(&rootfs, &self.opts, cancel);
            let filled = fill(&mut unpacker)?;
            let stats = unpacker.finish()?;
            let meta = ImageMeta {
                digest: filled.digest.clone(),
                config: filled.config.clone(),
                stats,
                source: filled.source.clone(),
                created_unix: std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0),
            };
            write_atomic(
                &tmp.join("image.json"),
                &serde_json::to_vec_pretty(&meta).expect("meta serializes"),
            )?;
            Ok(filled)
        })();
        let filled = match filled {
            Ok(f) => f,
            Err(e) => {
                make_writable(&tmp);
                let _ = std::fs::remove_dir_all(&tmp);
                return Err(e);
            }
        };
        let d = filled.digest;
        if digest_lock.is_none() {
            digest_lock = Some(self.digest_lock(&d, cancel)?);
        }
        let dest = self.image_dir(&d);
        if self.is_complete(&d) {
            make_writable(&tmp);
            let _ = std::fs::remove_dir_all(&tmp);
        } else {
            if dest.exists() {
                // Leftover of a crash between rename and marker.
                make_writable(&dest);
                std::fs::remove_dir_all(&dest).ctx("remove", &dest)?;
            }
            if durable {
                syncfs(&tmp)?;
            }
            std::fs::set_permissions(&tmp, Permissions::from_mode(0o755)).ctx("chmod", &tmp)?;
            std::fs::rename(&tmp, &dest).ctx("rename", &dest)?;
            write_atomic(&dest.join(COMPLETE), d.to_string().as_bytes())?;
        }
        drop(digest_lock);
        self.stored(&d)
    }

    fn digest_lock(&self, d: &Digest, cancel: &Cancel) -> Result<FileLock> {
        lock(
            &self
                .root
                .join("locks")
                .join(format!("{}.lock", self.key(d))),
            true,
            cancel,
        )
    }
}

/// Rootless unpacks may leave directories without write permission (as
/// the image asked); removal needs it back.
fn make_writable(dir: &Path) {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return;
    }
    fn walk(p: &Path) {
        if let Ok(m) = std::fs::symlink_metadata(p) {
            if m.is_dir() {
                let _ = std::fs::set_permissions(
                    p,
                    Permissions::from_mode(m.permissions().mode() | 0o700),
                );
                if let Ok(list) = std::fs::read_dir(p) {
                    for e in list.flatten() {
                        walk(&e.path());
                    }
                }
            }
        }
    }
    walk(dir);
}

/// Names and references: printable, no NUL, at most 255 bytes.
pub(crate) fn validate_name(name: &str) -> Result<()> {
    if name.is_empty()
        || name.len() > 255
        || name.chars().any(|c| c.is_control() || c.is_whitespace())
    {
        return Err(ImageError::InvalidArgument(format!(
            "bad image name {name:?}"
        )));
    }
    Ok(())
}

/// Names that may be a release asset file name.
fn is_asset_name(name: &str) -> bool {
    name.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        && !name.starts_with('.')
}
