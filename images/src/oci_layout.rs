//! Importing an OCI image layout directory.
//!
//! The layout may be one a sandbox wrote (into a volume, say): every file
//! in it is hostile. The directory is opened once without following a
//! link ([`host_dir`]); its files are reached beneath that fd, regular
//! files only, never through a link, never blocking; the small JSON files
//! are read through a bound, and a layer never past its descriptor's size.

pub(crate) mod host_dir;

use std::io::Read;
use std::path::{Path, PathBuf};

use host_dir::HostDir;

use crate::archive::{unpack_checked_layer, LayerCheck};
use crate::config::ImageConfig;
use crate::digest::Digest;
use crate::error::{ImageError, Result};
use crate::oci::{self, Descriptor, Index, Manifest, MAX_JSON, REF_NAME};
use crate::unpack::Unpacker;

/// What to unpack, worked out (and checked) before anything is written.
pub(crate) struct Plan {
    pub config_digest: Digest,
    pub config: ImageConfig,
    pub layers: Vec<Descriptor>,
    pub diff_ids: Vec<Digest>,
    pub ref_name: Option<String>,
}

fn blob_path(d: &Digest) -> PathBuf {
    Path::new("blobs").join("sha256").join(d.hex())
}

/// Reads a small blob whole and checks its size and digest.
fn read_json_blob(dir: &HostDir, desc: &Descriptor) -> Result<Vec<u8>> {
    if desc.size > MAX_JSON {
        return Err(ImageError::invalid_image(format!(
            "{} is {} bytes, more than a manifest or config may be",
            desc.digest, desc.size
        )));
    }
    let body = dir.read_bounded(&blob_path(&desc.digest), MAX_JSON)?;
    check_size(desc, body.len() as u64)?;
    desc.digest
        .verify(&Digest::of_bytes(&body), &format!("blob {}", desc.digest))?;
    Ok(body)
}

fn check_size(desc: &Descriptor, actual: u64) -> Result<()> {
    if actual != desc.size {
        return Err(ImageError::invalid_image(format!(
            "blob {} is {actual} bytes, its descriptor says {}",
            desc.digest, desc.size
        )));
    }
    Ok(())
}

pub(crate) fn plan(dir: &HostDir, reference: Option<&str>) -> Result<Plan> {
    let layout = dir
        .read_bounded(Path::new("oci-layout"), MAX_JSON)
        .map_err(|e| {
            ImageError::InvalidArgument(format!(
                "{} is not an OCI image layout (oci-layout: {e})",
                dir.path().display()
            ))
        })?;
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Layout {
        image_layout_version: String,
    }
    let version = oci::parse::<Layout>(&layout, "oci-layout")?.image_layout_version;
    if !version.starts_with("1.") {
        return Err(ImageError::invalid_image(format!(
            "unsupported image layout version {version}"
        )));
    }
    let index_body = dir.read_bounded(Path::new("index.json"), MAX_JSON)?;
    let index: Index = oci::parse(&index_body, "index.json")?;
    let desc = match reference {
        Some(r) => index
            .manifests
            .iter()
            .find(|d| d.annotations.get(REF_NAME).is_some_and(|n| n == r))
            .ok_or_else(|| {
                ImageError::NotFound(format!("no image {r:?} in {}", dir.path().display()))
            })?,
        None => match index.manifests.as_slice() {
            [one] => one,
            [] => return Err(ImageError::invalid_image("the layout's index is empty")),
            many => {
                let names: Vec<&str> = many
                    .iter()
                    .filter_map(|d| d.annotations.get(REF_NAME).map(String::as_str))
                    .collect();
                return Err(ImageError::InvalidArgument(format!(
                    "the layout holds {} images; pick one of: {}",
                    many.len(),
                    names.join(", ")
                )));
            }
        },
    };
    let ref_name = reference
        .map(str::to_string)
        .or_else(|| desc.annotations.get(REF_NAME).cloned());
    let manifest = resolve_manifest(dir, desc.clone(), 0)?;
    let config_body = read_json_blob(dir, &manifest.config)?;
    let config = ImageConfig::from_oci_json(&config_body)
        .map_err(|e| ImageError::invalid_image(format!("image config: {e}")))?;
    let diff_ids = oci::diff_ids(&config_body, manifest.layers.len())?;
    Ok(Plan {
        config_digest: manifest.config.digest.clone(),
        config,
        layers: manifest.layers,
        diff_ids,
        ref_name,
    })
}

/// Follows indexes (choosing this platform) down to an image manifest.
fn resolve_manifest(dir: &HostDir, desc: Descriptor, depth: u32) -> Result<Manifest> {
    if depth > 4 {
        return Err(ImageError::invalid_image("image indexes nest too deep"));
    }
    let body = read_json_blob(dir, &desc)?;
    if oci::is_index(&desc, &body) {
        let index: Index = oci::parse(&body, "image index")?;
        let chosen = oci::pick_platform(&index, None)?.clone();
        return resolve_manifest(dir, chosen, depth + 1);
    }
    oci::parse(&body, "image manifest")
}

pub(crate) fn unpack(dir: &HostDir, plan: &Plan, unpacker: &mut Unpacker) -> Result<()> {
    unpack_layers(&plan.layers, &plan.diff_ids, unpacker, |digest| {
        dir.open_file(&blob_path(digest))
    })
}

/// Applies an image's layers in order, each checked against its blob
/// digest and size and its diff_id; `open` fetches a layer's blob (from a
/// layout dir or a registry).
pub(crate) fn unpack_layers<R: Read>(
    layers: &[Descriptor],
    diff_ids: &[Digest],
    unpacker: &mut Unpacker,
    mut open: impl FnMut(&Digest) -> Result<R>,
) -> Result<()> {
    for (layer, diff_id) in layers.iter().zip(diff_ids) {
        // One byte past the descriptor's size is enough to tell it lied
        // (the size check then fails): an endless blob, from a layout or a
        // registry, is never read on.
        let limit = layer.size.saturating_add(1);
        unpack_checked_layer(
            open(&layer.digest)?.take(limit),
            unpacker,
            LayerCheck {
                blob: Some((&layer.digest, Some(layer.size))),
                diff_id,
                what: &format!("layer {}", layer.digest),
            },
        )?;
    }
    Ok(())
}
