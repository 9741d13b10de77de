//! The JSON shapes of every method's params and result: the ABI's side of
//! the contract that `ffi/tests/golden/<method>.json` pins and the Go SDK's
//! `go/internal/wire` mirrors. Params reject unknown fields; optional
//! fields are `Option` and left out when unset. Where the engine already
//! has the type (a sandbox config, its info, metrics, a volume), the wire
//! uses it, so the golden test also notices when the engine changes a
//! shape the ABI exposes.
use serde::{Deserialize, Serialize};

pub(crate) mod core;
#[cfg(feature = "test-hooks")]
pub(crate) mod debug;
pub(crate) mod exec;
pub(crate) mod fs;
pub(crate) mod host;
pub(crate) mod image;
pub(crate) mod sandbox;
pub(crate) mod snapshot;
pub(crate) mod volume;

/// `{}`: the params of a method that takes none, and the result of one
/// that returns nothing.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Empty {}

/// `{"name"}`: a sandbox, image or volume named by the caller.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Name {
    pub name: String,
}

/// `{"stream"}`: a stream handle just issued.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct StreamRef {
    pub stream: u64,
}
