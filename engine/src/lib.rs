//! The Lockbox engine: sandbox lifecycle, on-disk state, the launcher for
//! `lockbox-helper`, and the multiplexing client of the in-sandbox agent.
//! Pure Rust; the C ABI (crate lockbox-ffi) is a thin skin over it.
//!
//! Every async fn here is cancel-safe in the sense that dropping its future
//! leaves no half-made state behind: partly created sandboxes are killed and
//! removed, and operations in flight are unregistered from the connection.

pub(crate) mod backend;
pub mod cleanup;
pub mod client;
pub mod config;
pub mod engine;
pub mod error;
pub mod exec;
pub mod files;
pub mod fs;
pub mod image_ops;
pub mod images;
pub mod metrics;
pub mod names;
pub mod paths;
pub mod plan;
pub mod sandbox;
pub mod state;
pub mod streams;
pub mod tree;
pub mod volume;

pub use backend::BackendInfo;
pub use config::SandboxConfig;
pub use engine::Engine;
pub use error::{EngineError, Result};
pub use exec::{ExecOutput, ExecProcess, ExitStatus};
pub use metrics::Metrics;
pub use sandbox::{ExecOptions, Sandbox, SandboxInfo};
pub use streams::{StreamReader, StreamWriter};
pub use volume::VolumeInfo;
