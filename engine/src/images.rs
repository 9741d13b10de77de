//! `WithImage(name)`: named images come from the image store
//! (crate lockbox-images), which unpacks a release asset
//! `<image root>/<name>.tar.zst` once into `$LOCKBOX_HOME/images`,
//! content-addressed. A dev tree's plain `<image root>/<name>/rootfs`
//! directory is the fallback when no asset or stored image exists.

use std::path::{Path, PathBuf};

use lockbox_images::{Cancel, ImageError, ImageStore, StoreOptions};
use lockbox_protocol::ErrorCode;

use crate::error::{EngineError, Result};

fn from_image_error(e: ImageError) -> EngineError {
    let code = match e.code() {
        "not_found" => ErrorCode::NotFound,
        "invalid_argument" => ErrorCode::InvalidArgument,
        "resource_exhausted" => ErrorCode::ResourceExhausted,
        "unavailable" => ErrorCode::Unavailable,
        "canceled" => ErrorCode::Canceled,
        "permission_denied" => ErrorCode::PermissionDenied,
        _ => ErrorCode::Internal,
    };
    EngineError::new(code, format!("image: {e}"))
}

/// Sets the store's cancel flag if the resolving future is dropped.
struct CancelOnDrop(Cancel, bool);
impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if !self.1 {
            self.0.cancel();
        }
    }
}

/// Resolves `name` (or `sha256:<hex>`) to a read-only root directory,
/// unpacking on first use. Cancel-safe: dropping the future stops an unpack.
pub async fn resolve(home: &Path, name: &str) -> Result<PathBuf> {
    if !name.starts_with("sha256:") {
        crate::names::validate("image", name)?;
    }
    let roots = crate::paths::image_roots();
    let cancel = Cancel::never();
    let mut guard = CancelOnDrop(cancel.clone(), false);
    let (home, n, r) = (home.to_path_buf(), name.to_string(), roots.clone());
    let stored = tokio::task::spawn_blocking(move || {
        // Files keep the image's owners (host root as root, the caller
        // rootless): the helper maps them into the sandbox with an idmapped
        // mount, so the same unpacked copy serves every sandbox.
        let store =
            ImageStore::open_with(&home, StoreOptions::default()).map_err(from_image_error)?;
        // The first root holding the asset wins; with none, a stored
        // image of that name (imported or pulled) is looked up.
        let dir = r
            .iter()
            .find(|d| d.join(format!("{n}.tar.zst")).is_file())
            .or(r.first())
            .cloned()
            .unwrap_or_default();
        store
            .resolve(&n, &dir, &cancel)
            .map(|img| img.rootfs)
            .map_err(from_image_error)
    })
    .await
    .map_err(|e| EngineError::internal(format!("image task failed: {e}")))?;
    guard.1 = true;
    match stored {
        Ok(p) => Ok(p),
        Err(e) if e.code == ErrorCode::NotFound && !name.starts_with("sha256:") => {
            crate::paths::resolve_image(name).map_err(|dev| {
                EngineError::not_found(format!(
                    "image {name:?} not found ({}; {})",
                    e.message, dev.message
                ))
            })
        }
        Err(e) => Err(e),
    }
}
