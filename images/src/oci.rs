//! The OCI / Docker JSON documents this crate reads, and platform choice.

use std::collections::HashMap;

use serde::Deserialize;

use crate::digest::Digest;
use crate::error::{ImageError, Result};

pub(crate) const MT_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub(crate) const MT_DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

pub(crate) const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// Small JSON documents (indexes, manifests, configs) are read whole; this
/// caps what a hostile one can make us allocate.
pub(crate) const MAX_JSON: u64 = 8 << 20;

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Descriptor {
    #[serde(default)]
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    #[serde(default)]
    pub platform: Option<Platform>,
    #[serde(default)]
    pub annotations: HashMap<String, String>,
}

#[derive(Clone, Debug, Deserialize)]
pub(crate) struct Platform {
    #[serde(default)]
    pub os: String,
    #[serde(default)]
    pub architecture: String,
}

#[derive(Debug, Deserialize)]
pub(crate) struct Index {
    pub manifests: Vec<Descriptor>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct Manifest {
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
}

pub(crate) fn is_index(desc: &Descriptor, body: &[u8]) -> bool {
    if desc.media_type == MT_OCI_INDEX || desc.media_type == MT_DOCKER_LIST {
        return true;
    }
    #[derive(Deserialize)]
    struct Probe {
        manifests: Option<serde_json::Value>,
        layers: Option<serde_json::Value>,
    }
    serde_json::from_slice::<Probe>(body)
        .map(|p| p.manifests.is_some() && p.layers.is_none())
        .unwrap_or(false)
}

/// The architecture name OCI uses for this machine.
pub(crate) fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        other => other,
    }
}

/// The entry of an index for `wanted` (`os/arch`), by default
/// linux/<this arch>.
pub(crate) fn pick_platform<'a>(index: &'a Index, wanted: Option<&str>) -> Result<&'a Descriptor> {
    let (os, arch) = match wanted {
        Some(w) => w
            .split_once('/')
            .ok_or_else(|| ImageError::InvalidArgument(format!("platform {w:?} is not os/arch")))?,
        None => ("linux", host_arch()),
    };
    index
        .manifests
        .iter()
        .find(|d| {
            d.platform
                .as_ref()
                .is_some_and(|p| p.os == os && p.architecture == arch)
        })
        .ok_or_else(|| {
            let have: Vec<String> = index
                .manifests
                .iter()
                .filter_map(|d| d.platform.as_ref())
                .map(|p| format!("{}/{}", p.os, p.architecture))
                .collect();
            ImageError::NotFound(format!(
                "no {os}/{arch} image in the index (it has: {})",
                have.join(", ")
            ))
        })
}

pub(crate) fn parse<'a, T: Deserialize<'a>>(body: &'a [u8], what: &str) -> Result<T> {
    serde_json::from_slice(body).map_err(|e| ImageError::invalid_image(format!("{what}: {e}")))
}

/// `rootfs.diff_ids` of an image config, one per layer of `layers`.
pub(crate) fn diff_ids(config: &[u8], layers: usize) -> Result<Vec<Digest>> {
    #[derive(Deserialize)]
    struct RootFs {
        #[serde(default)]
        diff_ids: Vec<Digest>,
    }
    #[derive(Deserialize)]
    struct Config {
        rootfs: RootFs,
    }
    let ids = parse::<Config>(config, "image config")?.rootfs.diff_ids;
    if ids.len() != layers {
        return Err(ImageError::invalid_image(format!(
            "the image config lists {} layers, the manifest {layers}",
            ids.len()
        )));
    }
    Ok(ids)
}
