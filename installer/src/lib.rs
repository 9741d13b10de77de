//! The producer side of Lockbox releases: build signed release bundles
//! and re-check one before it is published. Installing is the Go SDK's
//! job (lockbox.EnsureInstalled), the only installer.

pub mod error;
pub mod fsutil;
pub mod manifest;
pub mod release;
pub mod signing;
pub mod verify;

pub use error::{Error, Result};
