//! The Lockbox engine: sandbox lifecycle, on-disk state, the plan, the
//! backends (the native `lockbox-helper` today), and the multiplexing
//! client of the in-sandbox agent.
//! Pure Rust; the C ABI (crate lockbox-ffi) is a thin skin over it.
//!
//! Every async fn here is cancel-safe in the sense that dropping its future
//! leaves no half-made state behind: partly created sandboxes are killed and
//! removed, and operations in flight are unregistered from the connection.

pub(crate) mod backend;
pub mod checkpoint;
pub(crate) mod cleanup;
pub(crate) mod client;
pub mod config;
pub(crate) mod engine;
pub(crate) mod error;
pub(crate) mod exec;
pub(crate) mod files;
pub mod fork;
pub mod freezer;
pub(crate) mod fs;
pub(crate) mod image_ops;
pub(crate) mod images;
pub(crate) mod metrics;
pub(crate) mod names;
pub mod network;
pub(crate) mod paths;
pub(crate) mod plan;
pub(crate) mod sandbox;
pub mod snapshot;
pub(crate) mod state;
pub(crate) mod streams;
pub(crate) mod tree;
pub(crate) mod volume;

// The API: what the C ABI (and any other caller) uses. Modules are
// crate-private so that whatever nothing here reaches is reported as dead.
pub use backend::microvm::{vm_check, VmCheck};
pub use backend::BackendInfo;
pub use config::SandboxConfig;
pub use engine::Engine;
pub use error::{EngineError, Result};
pub use exec::{ExecOutput, ExecProcess, ExitStatus};
pub use files::Files;
pub use fs::{FileWriter, DEFAULT_COPY_MAX_BYTES};
pub use image_ops::{ImageInfo, PruneReport, PullOptions};
pub use lockbox_protocol::{ErrorCode, FileInfo, FileKind};
pub use metrics::Metrics;
pub use paths::find_helper;
pub use sandbox::{ExecOptions, ImageUsed, Sandbox, SandboxInfo, STOP_GRACE};
pub use streams::{StreamReader, StreamWriter};
pub use volume::VolumeInfo;
