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
use crate::store::{validate_name, Filled, ImageStore, ResolvedImage};
use crate::upper_copy::{copy_upper, CopyLimits, IdShift};

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
    /// hold is all its snapshot may take).
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
        let base = self.inspect(&parent.to_string())?;
        let mut chain = vec![parent.clone()];
        chain.extend(self.parents(parent)?);
        if chain.len() > MAX_CHAIN {
            return Err(ImageError::InvalidArgument(format!(
                "image {parent} already stands on {} layers (at most {MAX_CHAIN})",
                chain.len() - 1
            )));
        }
        let limits = CopyLimits {
            max_entries: self.options().max_entries,
            max_bytes: max_bytes.map_or(self.options().max_unpacked_bytes, |m| {
                m.min(self.options().max_unpacked_bytes)
            }),
        };
        let config = base.config.clone();
        let resolved = self.install(None, cancel, |unpacker| {
            let root = unpacker.root().to_path_buf();
            let (layer, stats) = copy_upper(upper, &root, ids, limits)?;
            unpacker.stats = stats;
            let id = serde_json::json!({
                "layer": layer.to_string(),
                "parents": chain,
                "config": config,
            });
            let digest = Digest::of_bytes(&serde_json::to_vec(&id).expect("serializes"));
            let meta = root.parent().expect("rootfs has a parent").join(PARENTS);
            write_atomic(
                &meta,
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
        if let Some(n) = name {
            self.set_ref(n, &resolved.digest, None)?;
        }
        Ok(resolved)
    }
}
