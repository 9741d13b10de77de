//! Egress policy enforcement for Lockbox sandboxes (docs/network.md).
//!
//! The sandbox's only network interface is a tap device; its frames are
//! handled here, outside the sandbox, by a user-mode TCP/IP stack that
//! opens a host socket only for what the policy allows.

pub mod daemon;
pub mod dns;
pub mod events;
pub mod forwarder;
pub mod intercept;
pub mod names;
pub mod policy;
pub mod ranges;
pub mod secrets;
pub mod sni;
