//! Layered images: a layer (a sandbox's changes, copied by `upper_copy`)
//! over another stored image. Snapshot and Fork make them; the layer holds
//! only what changed, so their cost grows with the changes, not with the
//! image. `images/<key>/parents.json` lists the images underneath, nearest
//! first; the sandbox's overlay gets `[layer, parents...]` as its lowers.
//!
//! The image digest is the sha256 of the layer's digest, the parents and
//! the config: the same changes over the same image give the same image.
//! A parent cannot be removed or pruned while a layered image names it
//! (`referenced_parents`, passed as in-use by the engine).

use std::os::fd::OwnedFd;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::cancel::Cancel;
use crate::digest::Digest;
use crate::error::{ImageError, IoContext, Result};
use crate::fsutil::write_atomic;
use crate::reclaim::ForkHold;
use crate::store::{validate_name, Filled, ImageStore, ResolvedImage};
use crate::upper_copy::{copy_upper, CopyLimits, IdShift, LayerDigest};

const PARENTS: &str = "parents.json";
/// Overlay takes up to 500 lowers; a chain this deep is a misuse anyway.
pub const MAX_CHAIN: usize = 128;

#[derive(Serialize, Deserialize)]
struct Parents {
    parents: Vec<Digest>,
}

impl ImageStore {
    fn dir_of(&self, d: &Digest) -> PathBuf {
        self.root().join(format!(
            "{}{}",
            d.hex(),
            self.options().ownership.dir_suffix()
        ))
    }

    /// The images underneath `d`, nearest first (empty for a plain image).
    pub fn parents(&self, d: &Digest) -> Result<Vec<Digest>> {
        let p = self.dir_of(d).join(PARENTS);
        match std::fs::read(&p) {
            Ok(data) => {
                let v: Parents = serde_json::from_slice(&data)
                    .map_err(|e| ImageError::invalid_image(format!("{}: {e}", p.display())))?;
                Ok(v.parents)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(ImageError::io("read", &p, e)),
        }
    }

    /// The overlay lowers for image `d`, top first: its own root, then its
    /// parents'. A parent that is gone is `not_found`.
    pub fn lowers(&self, d: &Digest) -> Result<Vec<PathBuf>> {
        let mut out = vec![self.dir_of(d).join("rootfs")];
        for p in self.parents(d)? {
            let dir = self.dir_of(&p);
            if !dir.join(".complete").is_file() {
                return Err(ImageError::NotFound(format!("{p}, a layer under {d}")));
            }
            out.push(dir.join("rootfs"));
        }
        Ok(out)
    }

    /// Every digest some stored image stands on: protected from
    /// remove/prune as if a sandbox used it.
    pub fn referenced_parents(&self) -> Result<Vec<Digest>> {
        let mut out = Vec::new();
        for ent in std::fs::read_dir(self.root()).ctx("readdir", self.root())? {
            let ent = ent.ctx("readdir", self.root())?;
            let p = ent.path().join(PARENTS);
            if let Ok(data) = std::fs::read(&p) {
                if let Ok(v) = serde_json::from_slice::<Parents>(&data) {
                    out.extend(v.parents);
                }
            }
        }
        out.sort();
        out.dedup();
        Ok(out)
    }

    /// Makes a layered image from `upper` (an open directory: a sandbox's
    /// overlay upper) over the stored image `parent`. `ids` says how host
    /// owners become image owners. Named `name` when given; the content
    /// is discarded on any error. `max_bytes` lowers the store's byte
    /// budget for this copy (a sandbox's own disk budget: what it could
    /// hold is all its snapshot may take). Content-addressed: every byte
    /// is read and hashed, and the store is synced before it is published.
    #[allow(clippy::too_many_arguments)]
    pub fn install_layer(
        &self,
        parent: &Digest,
        upper: OwnedFd,
        ids: IdShift,
        max_bytes: Option<u64>,
        name: Option<&str>,
        source: String,
        cancel: &Cancel,
    ) -> Result<ResolvedImage> {
        if let Some(n) = name {
            validate_name(n)?;
        }
        let layer = Layer {
            parent,
            upper,
            ids,
            max_bytes,
            source,
        };
        let (resolved, _) = self.install_any_layer(layer, None, cancel)?;
        if let Some(n) = name {
            self.set_ref(n, &resolved.digest, None)?;
        }
        Ok(resolved)
    }

    /// Fork's unnamed layer: as `install_layer`, but the data is copied by
    /// the kernel (a reflink where the store's filesystem shares extents)
    /// and never read or hashed here, so its digest is made unique with a
    /// random nonce instead of naming its content. Synced only when
    /// `durable` (children that outlive their engine); otherwise a host
    /// crash loses at most an image that the next open removes anyway.
    /// The returned hold keeps it from Prune and from the next open's
    /// reclaim until the children's configs name it.
    #[allow(clippy::too_many_arguments)]
    pub fn install_fork_layer(
        &self,
        parent: &Digest,
        upper: OwnedFd,
        ids: IdShift,
        max_bytes: Option<u64>,
        source: String,
        durable: bool,
        cancel: &Cancel,
    ) -> Result<(ResolvedImage, ForkHold)> {
        let layer = Layer {
            parent,
            upper,
            ids,
            max_bytes,
            source,
        };
        let (r, hold) = self.install_any_layer(layer, Some(durable), cancel)?;
        Ok((r, hold.expect("a fork layer is held")))
    }

    /// `fork`: None for a content-addressed snapshot, Some(durable) for a
    /// fork's layer.
    fn install_any_layer(
        &self,
        l: Layer<'_>,
        fork: Option<bool>,
        cancel: &Cancel,
    ) -> Result<(ResolvedImage, Option<ForkHold>)> {
        let base = self.inspect(&l.parent.to_string())?;
        let mut chain = vec![l.parent.clone()];
        chain.extend(self.parents(l.parent)?);
        if chain.len() > MAX_CHAIN {
            return Err(ImageError::InvalidArgument(format!(
                "image {} already stands on {} layers (at most {MAX_CHAIN})",
                l.parent,
                chain.len() - 1
            )));
        }
        let limits = CopyLimits {
            max_entries: self.options().max_entries,
            max_bytes: l.max_bytes.map_or(self.options().max_unpacked_bytes, |m| {
                m.min(self.options().max_unpacked_bytes)
            }),
            max_held_name_bytes: crate::upper_copy::MAX_HELD_NAME_BYTES,
        };
        let digest_of = match fork {
            None => LayerDigest::Content,
            Some(_) => LayerDigest::Metadata,
        };
        let nonce = match fork {
            None => String::new(),
            Some(_) => nonce()?,
        };
        let config = base.config.clone();
        let (upper, ids, source) = (l.upper, l.ids, l.source);
        let mut hold = None;
        let resolved = self.install_with(None, cancel, fork.unwrap_or(true), |unpacker| {
            let root = unpacker.root().to_path_buf();
            let dir = root.parent().expect("rootfs has a parent").to_path_buf();
            if fork.is_some() {
                hold = Some(ImageStore::hold_fork(&dir)?);
            }
            let (layer, stats) = copy_upper(upper, &root, ids, limits, digest_of)?;
            unpacker.stats = stats;
            let mut id = serde_json::json!({
                "layer": layer.to_string(),
                "parents": chain,
                "config": config,
            });
            if fork.is_some() {
                id["fork"] = serde_json::Value::from(nonce.clone());
            }
            let digest = Digest::of_bytes(&serde_json::to_vec(&id).expect("serializes"));
            write_atomic(
                &dir.join(PARENTS),
                &serde_json::to_vec(&Parents {
                    parents: chain.clone(),
                })
                .expect("serializes"),
            )?;
            Ok(Filled {
                digest,
                config: config.clone(),
                source,
            })
        })?;
        Ok((resolved, hold))
    }
}

struct Layer<'a> {
    parent: &'a Digest,
    upper: OwnedFd,
    ids: IdShift,
    max_bytes: Option<u64>,
    source: String,
}

/// 128 random bits, hex: a fork layer's identity.
fn nonce() -> Result<String> {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b).map_err(|e| {
        ImageError::io(
            "getrandom",
            std::path::Path::new(""),
            std::io::Error::other(e),
        )
    })?;
    Ok(hex::encode(b))
}
