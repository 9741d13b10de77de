//! version, noop, handle.*, log.set_level.
use serde::{Deserialize, Serialize};

/// The `version` result, also what `lockbox_version` returns.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Version {
    pub version: String,
    pub abi: u32,
    pub git_commit: String,
    /// "debug" or "release".
    pub profile: String,
    /// Whether the debug.* methods exist (never in a release bundle).
    pub test_hooks: bool,
}

/// `{"handle"}`: an inert object handle (handle.create's result,
/// handle.kind's params).
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct HandleRef {
    pub handle: u64,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct HandleKind {
    /// "sandbox", "exec", "stream" or "object".
    pub kind: String,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LogParams {
    /// "off", "error", "warn", "info", "debug" or "trace".
    pub level: String,
    /// Append the log to this host file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// Also write the log to the process's stderr.
    #[serde(default)]
    pub stderr: bool,
}
