//! What a user asks for when creating a sandbox: the options as the C ABI
//! receives them. Their validation, defaults and resolution are the plan's
//! (plan/): nothing here decides anything.

use std::collections::BTreeMap;

use lockbox_protocol::NetworkMode;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SandboxConfig {
    pub name: Option<String>,
    /// A named image, an OCI reference or a `sha256:` digest (resolved
    /// through the image store, see images.rs).
    pub image: Option<String>,
    /// A host directory used read-only as the root (instead of an image).
    pub rootfs: Option<String>,
    pub cpus: Option<f64>,
    pub memory_mib: Option<i64>,
    pub pids: Option<i64>,
    pub disk_mib: Option<i64>,
    pub env: Vec<String>,
    pub workdir: Option<String>,
    pub hostname: Option<String>,
    /// "uid", "uid:gid", "name" or "name:group"; names are resolved in the
    /// sandbox's own /etc/passwd and /etc/group by its agent.
    pub user: Option<String>,
    pub volumes: Vec<VolumeMount>,
    pub named_volumes: Vec<NamedVolumeMount>,
    pub tmpfs: Vec<TmpfsMount>,
    pub network: NetworkMode,
    pub ports: Vec<Port>,
    pub detached: bool,
    pub replace: bool,
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeMount {
    pub host_path: String,
    pub guest_path: String,
    #[serde(default)]
    pub read_only: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamedVolumeMount {
    pub name: String,
    pub guest_path: String,
    #[serde(default)]
    pub read_only: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TmpfsMount {
    pub guest_path: String,
    #[serde(default)]
    pub size_mib: Option<i64>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Port {
    pub host: i64,
    pub guest: i64,
}
