//! image.*: the image store behind a sandbox config's `image`.
//!
//! The store's own types are not re-exported by the engine, so the ABI
//! states their shape here and takes them over by serde (methods/image.rs);
//! a shape the store changes is an `internal` error there, which the Go
//! image tests see.
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum ImportKind {
    OciLayout,
    DockerArchive,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ImportParams {
    pub kind: ImportKind,
    /// An OCI layout directory or a `docker save` tarball on the host.
    pub path: String,
    /// Which image when there are several.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
    /// Record it under this name (else under the reference).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PullParams {
    pub reference: String,
    /// With `password`, or neither.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// HTTP instead of HTTPS (never a fallback).
    #[serde(default)]
    pub plain_http: bool,
    /// `os/arch` for an image index.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ImageInfo {
    /// `sha256:<hex>`.
    pub digest: String,
    pub names: Vec<String>,
    /// Host directory; for read-only use.
    pub rootfs: String,
    pub config: ImageConfig,
    pub stats: UnpackStats,
    pub source: String,
    pub created_unix: u64,
}

/// The image's defaults for a sandbox made from it.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ImageConfig {
    pub env: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workdir: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
}

/// What unpacking changed or refused.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct UnpackStats {
    pub entries: u64,
    pub bytes: u64,
    pub layers: u32,
    pub skipped_devices: u64,
    pub dropped_setid_bits: u64,
    pub clamped_ids: u64,
    pub whiteouts: u64,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ImageList {
    pub images: Vec<ImageInfo>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PruneReport {
    pub removed: Vec<String>,
    pub kept_in_use: Vec<String>,
    pub removed_temp_dirs: u64,
}
