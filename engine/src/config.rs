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
    /// Which backend runs the sandbox (docs/microvm.md); native by default.
    #[serde(skip_serializing_if = "Isolation::is_native")]
    pub isolation: Isolation,
    /// lockbox-net's policy JSON (docs/network.md, "The model"). Present:
    /// the sandbox's only network is a tap device served by the forwarder
    /// (no pasta); see network.rs for how it combines with `network`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network_policy: Option<serde_json::Value>,
    /// Values the sandbox sees only as placeholders; need a policy.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<Secret>,
}

impl SandboxConfig {
    /// The config as it may be stored, echoed in info, logged or quoted:
    /// every secret's value left out.
    pub fn without_secret_values(&self) -> SandboxConfig {
        let mut c = self.clone();
        for s in &mut c.secrets {
            s.value = None;
        }
        c
    }
}

/// `$name` inside holds a placeholder; the forwarder puts `value` in its
/// place only in requests to `hosts`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Secret {
    pub name: String,
    /// Required at create; never stored or echoed (None there).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<SecretValue>,
    pub hosts: Vec<String>,
    /// Headers besides the credential ones (lockbox_net's
    /// CREDENTIAL_HEADERS) where the value is put.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<String>,
}

/// A secret's value: serialized only where the caller handed it in (the
/// params of sandbox.create); its Debug form never shows it, so no log
/// line or error that formats a config can carry it.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SecretValue(pub String);

/// The caller's copy is wiped when the config goes (values are never
/// stored, so nothing reads it later).
impl Drop for SecretValue {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.0);
    }
}

impl std::fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<secret>")
    }
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

/// What stands between the workload and the host: the host kernel with
/// namespaces (native) or a guest kernel in a confined VMM (microvm).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Isolation {
    #[default]
    Native,
    Microvm,
}

impl Isolation {
    pub fn is_native(&self) -> bool {
        *self == Isolation::Native
    }

    /// The backend kind (`BackendInfo::kind`) that provides it.
    pub fn kind(&self) -> &'static str {
        match self {
            Isolation::Native => "native",
            Isolation::Microvm => "microvm",
        }
    }
}
