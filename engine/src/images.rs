//! `WithImage(..)`: what a sandbox's root comes from, resolved through the
//! image store (crate lockbox-images).
//!
//! - `sha256:<hex>`: an image already in the store;
//! - a plain name (`base`, `python`, `[A-Za-z0-9_.-]`): the release asset
//!   `<image root>/<name>.tar.zst`, unpacked once into `$LOCKBOX_HOME/images`,
//!   else a stored image of that name (imported or pulled); a dev tree's
//!   plain `<image root>/<name>/rootfs` directory is the last fallback;
//! - an OCI reference (`127.0.0.1:5000/repo:tag`, `name@sha256:..`): an
//!   image already stored under that reference or name, by an import or an
//!   earlier `Images().Pull`. No pull happens on create: a create does not
//!   reach the network unasked, and registry credentials/plain-http are
//!   options of `Pull`, not of a sandbox.

use std::path::{Path, PathBuf};

use lockbox_images::{Cancel, Digest, ImageConfig, ImageError, ImageStore, Reference};
use lockbox_protocol::ErrorCode;

use crate::error::{EngineError, Result};

/// Which of the three forms an image string is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageForm {
    Digest,
    Name,
    Reference,
}

/// Classifies and validates what `WithImage` was given.
pub fn form_of(image: &str) -> Result<ImageForm> {
    if image.starts_with("sha256:") {
        Digest::parse(image).map_err(|e| EngineError::invalid(format!("image {image:?}: {e}")))?;
        return Ok(ImageForm::Digest);
    }
    if crate::names::validate("image", image).is_ok() {
        return Ok(ImageForm::Name);
    }
    let r = Reference::parse(image).map_err(|e| {
        EngineError::invalid(format!(
            "image {image:?} is neither a name ([A-Za-z0-9_.-]) nor an OCI reference: {e}"
        ))
    })?;
    if !registry_ok(&r.registry) {
        return Err(EngineError::invalid(format!(
            "image {image:?}: registry {:?} is not a host[:port]",
            r.registry
        )));
    }
    Ok(ImageForm::Reference)
}

/// `host[:port]`: dot-separated labels of `[A-Za-z0-9-]`, not starting or
/// ending with '-', so `..` or an empty label never reads as a registry.
fn registry_ok(registry: &str) -> bool {
    let (host, port) = match registry.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (registry, None),
    };
    let port_ok = port.is_none_or(|p| p.parse::<u16>().is_ok_and(|n| n > 0));
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    port_ok && host.len() <= 253 && host.split('.').all(label_ok)
}

/// A resolved image: the lower dir and the defaults it brings.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub rootfs: PathBuf,
    pub config: ImageConfig,
    /// None for a dev tree's plain rootfs directory (not in the store).
    pub digest: Option<Digest>,
}

impl Resolved {
    /// What a sandbox takes from the image unless it sets its own: the
    /// base env (entries that are not KEY=VALUE are dropped, as a runtime
    /// would), the workdir and the user. The named release images carry no
    /// config; the store's stand-in for them names /work, but sandboxes
    /// from them have always started in "/", and that stays.
    pub fn sandbox_defaults(&self) -> ImageConfig {
        let mut c = self.config.clone();
        if c == ImageConfig::named_default() {
            c.workdir = None;
        }
        c.env
            .retain(|e| crate::plan::env::check("image env", e).is_ok());
        c
    }
}

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

/// Resolves `image` (any of the three forms) to a read-only root directory
/// and its config, unpacking a release asset on first use. Cancel-safe:
/// dropping the future stops an unpack. A missing image is `not_found`
/// naming it.
pub async fn resolve(home: &Path, image: &str) -> Result<Resolved> {
    let form = form_of(image)?;
    let roots = crate::paths::image_roots();
    let cancel = Cancel::never();
    let mut guard = CancelOnDrop(cancel.clone(), false);
    let (home, n, r) = (home.to_path_buf(), image.to_string(), roots.clone());
    let stored = tokio::task::spawn_blocking(move || {
        // Files keep the image's owners (host root as root, the caller
        // rootless): the helper maps them into the sandbox with an idmapped
        // mount, so the same unpacked copy serves every sandbox.
        let store = ImageStore::open(&home).map_err(from_image_error)?;
        // The first root holding the asset wins; with none, a stored
        // image of that name (imported or pulled) is looked up. A
        // reference is never an asset name, so it goes to the stored refs.
        let dir = r
            .iter()
            .find(|d| form == ImageForm::Name && d.join(format!("{n}.tar.zst")).is_file())
            .or(r.first())
            .cloned()
            .unwrap_or_default();
        store
            .resolve(&n, &dir, &cancel)
            .map(|img| Resolved {
                rootfs: img.rootfs,
                config: img.config,
                digest: Some(img.digest),
            })
            .map_err(from_image_error)
    })
    .await
    .map_err(|e| EngineError::internal(format!("image task failed: {e}")))?;
    guard.1 = true;
    match (stored, form) {
        (Ok(img), _) => Ok(img),
        (Err(e), ImageForm::Name) if e.code == ErrorCode::NotFound => {
            crate::paths::resolve_image(image)
                .map(|rootfs| Resolved {
                    rootfs,
                    config: ImageConfig::named_default(),
                    digest: None,
                })
                .map_err(|dev| {
                    EngineError::not_found(format!(
                        "image {image:?} not found ({}; {})",
                        e.message, dev.message
                    ))
                })
        }
        (Err(e), ImageForm::Reference) if e.code == ErrorCode::NotFound => {
            Err(EngineError::not_found(format!(
                "image {image:?} not found: no stored image under that reference \
                 (pull it first with Images().Pull or import it)"
            )))
        }
        (Err(e), _) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_forms() {
        let d = format!("sha256:{}", "a".repeat(64));
        assert_eq!(form_of(&d).unwrap(), ImageForm::Digest);
        assert!(form_of("sha256:12").is_err());
        for n in ["base", "python", "my_img-1.0"] {
            assert_eq!(form_of(n).unwrap(), ImageForm::Name, "{n}");
        }
        for r in [
            "127.0.0.1:5000/repo:tag",
            "docker.io/library/alpine:3",
            "alpine:3",
            "example.test/app:1",
            &format!("name@{d}"),
        ] {
            assert_eq!(form_of(r).unwrap(), ImageForm::Reference, "{r}");
        }
        for bad in ["", "../x", "a b", "UPPER/x:1", "x:", "r.io/x:bad/tag"] {
            let e = form_of(bad).unwrap_err();
            assert_eq!(e.code, ErrorCode::InvalidArgument, "{bad:?}");
        }
    }
}
