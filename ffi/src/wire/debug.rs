//! debug.* (feature `test-hooks` only): never in a release build, so no
//! golden files.
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SleepParams {
    pub ms: u64,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PipeParams {
    /// Buffer bytes, 1..=64 MiB (default 64 KiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<usize>,
}

/// Live handles, cancel slots and queued completions: for leak checks.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Stats {
    pub handles: usize,
    pub cancel_slots: usize,
    pub completions: usize,
}
