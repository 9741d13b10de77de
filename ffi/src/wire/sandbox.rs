//! sandbox.*: create/get hand out a sandbox handle; the rest name it as
//! "sandbox".
use serde::{Deserialize, Serialize};

pub(crate) use lockbox_engine::{Metrics, SandboxConfig, SandboxInfo};

/// `{"sandbox"}`: a sandbox handle.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SandboxRef {
    pub sandbox: u64,
}

/// The result of sandbox.create and sandbox.get.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Opened {
    /// The new sandbox handle.
    pub sandbox: u64,
    pub name: String,
    pub id: String,
    pub info: SandboxInfo,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SandboxList {
    pub sandboxes: Vec<SandboxInfo>,
}

/// Exactly one of `name` and `sandbox`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RemoveParams {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<u64>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct StopParams {
    pub sandbox: u64,
    /// Between the polite stop and SIGKILL; the engine's default if unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grace_ms: Option<u64>,
}

/// sandbox.set_network_policy: lockbox-net's policy JSON.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SetNetworkPolicyParams {
    pub sandbox: u64,
    pub policy: serde_json::Value,
}

/// sandbox.network_events: wait up to `wait_ms` (0..=30000, default 0)
/// for at least one event; at most `max` (default 256, at most 1024).
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NetworkEventsParams {
    pub sandbox: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<u32>,
}

pub(crate) use lockbox_engine::network::NetworkEvents;
