//! Lockbox release bundles: build signed manifests, install pinned
//! versions with verification, and verify installed trees.

pub mod error;
pub mod fsutil;
pub mod http_stream;
pub mod install;
pub mod layout;
pub mod lock;
pub mod manifest;
pub mod release;
pub mod signing;
pub mod source;
pub mod verify;

pub use error::{Error, Result};
