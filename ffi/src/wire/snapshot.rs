//! sandbox.pause/resume/snapshot/fork (issue 13): branching a sandbox's
//! state. The children of a fork are opened like sandbox.create's result.
use serde::{Deserialize, Serialize};

use super::sandbox::{Opened, SandboxConfig};

/// `{"sandbox", "name"?}`: capture the sandbox's filesystem as an image,
/// recorded under `name` when given.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SnapshotParams {
    pub sandbox: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// `{"sandbox", "n", "config"?}`: n children of the sandbox's current
/// filesystem. `config` replaces the parent's configuration for the
/// children (its image is always the fork point); absent, they take the
/// parent's.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ForkParams {
    pub sandbox: u64,
    pub n: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<SandboxConfig>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Forked {
    pub sandboxes: Vec<Opened>,
}

/// `{"name", "path", "reference"?}`: write the stored image as an OCI
/// image layout in the new host directory `path`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ExportParams {
    pub name: String,
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Exported {
    /// The manifest's digest.
    pub digest: String,
}

/// `{"sandbox", "name"}`: save a microVM sandbox's memory, devices and
/// disks as checkpoint `name` (it keeps running).
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CheckpointParams {
    pub sandbox: u64,
    pub name: String,
}

pub(crate) use lockbox_engine::checkpoint::CheckpointInfo;

/// `{"name", "config"?}`: a new sandbox started from checkpoint `name`.
/// Of `config` only name, hostname, replace, detached and labels are used:
/// everything else is the checkpoint's.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RestoreParams {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<SandboxConfig>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CheckpointList {
    pub checkpoints: Vec<CheckpointInfo>,
}
