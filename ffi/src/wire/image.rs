//! image.*: the image store behind a sandbox config's `image`. An image's
//! info and the prune report are the engine's own types.
use serde::{Deserialize, Serialize};

pub(crate) use lockbox_engine::{ImageInfo, PruneReport};

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
pub(crate) struct ImageList {
    pub images: Vec<ImageInfo>,
}
