//! Image management for the API (`Images()` in Go): list, inspect, remove,
//! prune, import and pull over the image store (crate lockbox-images).
//! The store's calls block, so each runs on a blocking thread; dropping the
//! future sets the store's cancel flag, which stops an unpack between tar
//! entries.
//!
//! Images in use: a sandbox's `config.json` records the image digest it
//! was made from (`StoredConfig::image`). Configs written before that was
//! recorded have only the lower directories (`StoredConfig::lower`); a
//! lower inside the store is `<home>/images/<key>/rootfs`, and `<key>` is
//! the digest's hex (plus `-u<base>` for a shifted-ownership copy), so the
//! digest is read back from that path too. Every sandbox directory with a
//! config counts, running or stopped: a stopped one still has its upper dir
//! over that lower. Known gap: a create that has resolved its image but not
//! yet written `config.json` is not seen; a remove racing it can take the
//! image away and that create then fails to start.

use std::path::{Component, Path, PathBuf};

use lockbox_images::{Cancel, Digest, ImageError, ImageStore};
use lockbox_protocol::ErrorCode;

use crate::error::{EngineError, Result};
use crate::paths::Layout;
use crate::sandbox::StoredConfig;

pub use lockbox_images::{ImageInfo, PruneReport, PullOptions};

/// The store's error with its ABI code kept (`ImageError::code()` gives
/// the same strings `ErrorCode` serializes to). A registry that cannot be
/// reached or answers with a server error is `unavailable` (worth a
/// retry), not `internal`.
fn image_error(e: ImageError) -> EngineError {
    let mut code = serde_json::from_value::<ErrorCode>(serde_json::Value::from(e.code()))
        .unwrap_or(ErrorCode::Internal);
    if code == ErrorCode::Internal && matches!(&e, ImageError::Io { op: "http", .. }) {
        code = ErrorCode::Unavailable;
    }
    EngineError::new(code, format!("image: {e}"))
}

/// Sets the store's cancel flag unless the blocking call finished.
struct CancelOnDrop {
    cancel: Cancel,
    done: bool,
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if !self.done {
            self.cancel.cancel();
        }
    }
}

/// Runs `f` over the store of `home` on a blocking thread.
async fn with_store<T, F>(home: &Path, f: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce(&ImageStore, &Cancel) -> Result<T> + Send + 'static,
{
    let cancel = Cancel::never();
    let mut guard = CancelOnDrop {
        cancel: cancel.clone(),
        done: false,
    };
    let home = home.to_path_buf();
    let r = tokio::task::spawn_blocking(move || {
        let store = ImageStore::open(&home).map_err(image_error)?;
        f(&store, &cancel)
    })
    .await
    .map_err(|e| EngineError::internal(format!("image task failed: {e}")))?;
    guard.done = true;
    r
}

/// Every stored image with its names.
pub async fn list(home: &Path) -> Result<Vec<ImageInfo>> {
    with_store(home, |s, _| s.list().map_err(image_error)).await
}

/// One image by name or `sha256:` digest; `not_found` if there is none.
pub async fn inspect(home: &Path, name_or_digest: &str) -> Result<ImageInfo> {
    let n = name_or_digest.to_string();
    with_store(home, move |s, _| s.inspect(&n).map_err(image_error)).await
}

/// Drops a name (the content goes with its last name) or, given a digest,
/// the content and all its names. `unavailable` if a sandbox uses content
/// that would go.
pub async fn remove(home: &Path, name_or_digest: &str) -> Result<()> {
    let n = name_or_digest.to_string();
    let sandboxes = Layout::new(home.to_path_buf()).sandboxes();
    let h = home.to_path_buf();
    with_store(home, move |s, _| {
        let mut used = in_use(&sandboxes, s.root());
        used.extend(s.referenced_parents().map_err(image_error)?);
        s.remove(&n, &used).map_err(image_error)?;
        prune_vm_cache(&h, s);
        Ok(())
    })
    .await
}

/// Removes unnamed images no sandbox uses and leftovers of failed unpacks.
pub async fn prune(home: &Path) -> Result<PruneReport> {
    let sandboxes = Layout::new(home.to_path_buf()).sandboxes();
    let h = home.to_path_buf();
    with_store(home, move |s, _| {
        let mut used = in_use(&sandboxes, s.root());
        used.extend(s.referenced_parents().map_err(image_error)?);
        let report = s.prune(&used).map_err(image_error)?;
        prune_vm_cache(&h, s);
        Ok(report)
    })
    .await
}

/// The microVM backend's erofs copies of layers go with their images:
/// they are outside the store's budget, so nothing else would bound them.
pub fn prune_vm_cache(home: &Path, s: &ImageStore) {
    let Ok(images) = s.list() else { return };
    let stored = images.iter().map(|i| i.digest.hex().to_string()).collect();
    crate::backend::microvm::prune_layer_cache(home, &stored);
}

/// Imports an OCI image layout directory. `reference` picks a manifest by
/// its ref-name annotation; the image is recorded under `name`, else under
/// that reference.
pub async fn import_oci_layout(
    home: &Path,
    dir: PathBuf,
    reference: Option<String>,
    name: Option<String>,
) -> Result<ImageInfo> {
    with_store(home, move |s, c| {
        let img = s
            .import_oci_layout(&dir, reference.as_deref(), name.as_deref(), c)
            .map_err(image_error)?;
        info_of(s, &img.digest)
    })
    .await
}

/// Imports a `docker save` tarball. `reference` picks an image by RepoTag.
pub async fn import_docker_archive(
    home: &Path,
    path: PathBuf,
    reference: Option<String>,
    name: Option<String>,
) -> Result<ImageInfo> {
    with_store(home, move |s, c| {
        let img = s
            .import_docker_archive(&path, reference.as_deref(), name.as_deref(), c)
            .map_err(image_error)?;
        info_of(s, &img.digest)
    })
    .await
}

/// Pulls `reference` from its registry; recorded under the reference.
pub async fn pull(home: &Path, reference: &str, opts: PullOptions) -> Result<ImageInfo> {
    let r = reference.to_string();
    with_store(home, move |s, c| {
        let img = s.pull(&r, &opts, c).map_err(image_error)?;
        info_of(s, &img.digest)
    })
    .await
}

fn info_of(s: &ImageStore, d: &Digest) -> Result<ImageInfo> {
    s.inspect(&format!("sha256:{}", d.hex()))
        .map_err(image_error)
}

/// Digests of store images that sandboxes under `sandboxes` are made from.
/// Unreadable configs are skipped: they belong to a sandbox being made or
/// torn down, or to a leftover the engine's cleanup removes.
pub fn in_use(sandboxes: &Path, store_root: &Path) -> Vec<Digest> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir(sandboxes) else {
        return out;
    };
    for ent in dir.flatten() {
        let Ok(cfg) = crate::state::read_json::<StoredConfig>(&ent.path().join("config.json"))
        else {
            continue;
        };
        if let Some(d) = cfg
            .image
            .as_ref()
            .and_then(|i| Digest::parse(&i.digest).ok())
        {
            if !out.contains(&d) {
                out.push(d);
            }
        }
        for lower in &cfg.lower {
            if let Some(d) = digest_of_lower(Path::new(lower), store_root) {
                if !out.contains(&d) {
                    out.push(d);
                }
            }
        }
    }
    out
}

/// `<store_root>/<hex>[-u<base>]/rootfs` -> the digest, else None.
fn digest_of_lower(lower: &Path, store_root: &Path) -> Option<Digest> {
    let rest = lower.strip_prefix(store_root).ok()?;
    let mut parts = rest.components();
    let (Some(Component::Normal(key)), Some(Component::Normal(leaf)), None) =
        (parts.next(), parts.next(), parts.next())
    else {
        return None;
    };
    if leaf != "rootfs" {
        return None;
    }
    let key = key.to_str()?;
    let hex = key.split_once("-u").map_or(key, |(h, _)| h);
    Digest::parse(hex).ok()
}

/// The image store of this engine's home, as the engine's API.
impl crate::Engine {
    pub async fn image_list(&self) -> Result<Vec<ImageInfo>> {
        list(self.home()).await
    }

    pub async fn image_inspect(&self, name_or_digest: &str) -> Result<ImageInfo> {
        inspect(self.home(), name_or_digest).await
    }

    /// Refused for an image a sandbox (or a snapshot) still uses.
    pub async fn image_remove(&self, name_or_digest: &str) -> Result<()> {
        remove(self.home(), name_or_digest).await
    }

    pub async fn image_prune(&self) -> Result<PruneReport> {
        prune(self.home()).await
    }

    pub async fn image_import_oci_layout(
        &self,
        dir: PathBuf,
        reference: Option<String>,
        name: Option<String>,
    ) -> Result<ImageInfo> {
        import_oci_layout(self.home(), dir, reference, name).await
    }

    pub async fn image_import_docker_archive(
        &self,
        path: PathBuf,
        reference: Option<String>,
        name: Option<String>,
    ) -> Result<ImageInfo> {
        import_docker_archive(self.home(), path, reference, name).await
    }

    pub async fn image_pull(&self, reference: &str, opts: PullOptions) -> Result<ImageInfo> {
        pull(self.home(), reference, opts).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn lower_paths_map_to_digests() {
        let root = Path::new("/h/images");
        let want = Digest::parse(HEX).unwrap();
        let plain = format!("/h/images/{HEX}/rootfs");
        let shifted = format!("/h/images/{HEX}-u100000/rootfs");
        assert_eq!(digest_of_lower(Path::new(&plain), root), Some(want.clone()));
        assert_eq!(digest_of_lower(Path::new(&shifted), root), Some(want));
        for other in [
            "/elsewhere/rootfs".to_string(),
            format!("/h/images/{HEX}"),
            format!("/h/images/{HEX}/rootfs/etc"),
            "/h/images/nothex/rootfs".to_string(),
        ] {
            assert_eq!(digest_of_lower(Path::new(&other), root), None, "{other}");
        }
    }

    #[test]
    fn in_use_reads_sandbox_configs() {
        let d = tempfile::tempdir().unwrap();
        let sandboxes = d.path().join("sandboxes");
        let root = d.path().join("images");
        for (name, lower) in [
            ("a", root.join(HEX).join("rootfs")),
            ("b", PathBuf::from("/some/dev/rootfs")),
        ] {
            let dir = sandboxes.join(name);
            std::fs::create_dir_all(&dir).unwrap();
            let cfg = StoredConfig {
                lower: vec![lower.to_string_lossy().into_owned()],
                ..Default::default()
            };
            crate::state::write_json(&dir.join("config.json"), &cfg).unwrap();
        }
        std::fs::create_dir_all(sandboxes.join("half-made")).unwrap();
        assert_eq!(in_use(&sandboxes, &root), vec![Digest::parse(HEX).unwrap()]);
        // A recorded digest counts even when the lower is not a store path.
        let other = "fedcba9876543210".repeat(4);
        let dir = sandboxes.join("c");
        std::fs::create_dir_all(&dir).unwrap();
        let cfg = StoredConfig {
            lower: vec!["/moved/rootfs".into()],
            image: Some(crate::sandbox::ImageUsed {
                digest: format!("sha256:{other}"),
                ..Default::default()
            }),
            ..Default::default()
        };
        crate::state::write_json(&dir.join("config.json"), &cfg).unwrap();
        let mut got = in_use(&sandboxes, &root);
        got.sort_by(|a, b| a.hex().cmp(b.hex()));
        assert_eq!(
            got,
            vec![Digest::parse(HEX).unwrap(), Digest::parse(&other).unwrap()]
        );
        assert!(in_use(&d.path().join("none"), &root).is_empty());
    }

    #[test]
    fn store_errors_keep_their_codes() {
        let e = image_error(ImageError::InUse("x".into()));
        assert_eq!(e.code, ErrorCode::Unavailable);
        let e = image_error(ImageError::NotFound("x".into()));
        assert_eq!(e.code, ErrorCode::NotFound);
        let e = image_error(ImageError::TooLarge("x".into()));
        assert_eq!(e.code, ErrorCode::ResourceExhausted);
        let e = image_error(ImageError::Io {
            op: "http",
            path: "http://127.0.0.1:1/v2/".into(),
            source: std::io::Error::other("connection refused"),
        });
        assert_eq!(e.code, ErrorCode::Unavailable);
    }
}
