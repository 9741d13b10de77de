//! Sandboxes with a network policy (docs/network.md): the create-time
//! checks and plan, the forwarder's control socket, and the events and
//! counters read through it.
//!
//! How `network_policy` relates to `network`: a policy replaces pasta
//! entirely. `network` must then be "none" (the default); "outbound" with
//! a policy is refused (the `public-internet` preset is what outbound
//! means). Published ports work as with outbound: the helper binds them
//! on the host's 127.0.0.1 and the forwarder relays them into the
//! sandbox. Plain "outbound" without a policy stays pasta's.

pub mod control;
pub mod events;
pub mod secrets;

use lockbox_net::policy::Policy;
use lockbox_protocol::NetworkMode;
use serde_json::Value;

use crate::config::{Isolation, SandboxConfig};
use crate::error::{EngineError, Result};

pub use events::{NetworkCounters, NetworkEvent, NetworkEvents};
pub use secrets::PlannedSecret;

/// The sandbox side of the forwarder's network (the helper configures the
/// tap with the same numbers).
pub const GATEWAY: &str = "10.0.2.2";
pub const PREFIX_LEN: u8 = 24;
/// The sandbox's resolver: the forwarder answers on the gateway.
pub const RESOLV_CONF: &str = "nameserver 10.0.2.2\noptions edns0\n";
/// Published ports of a sandbox with a policy: the helper's bound (one
/// listening socket and one accept task each in the forwarder).
const MAX_PUBLISHED: usize = 64;

/// What the forwarder of one sandbox is started with. Holds secret values:
/// never serialized as a whole, and its Debug form hides them.
#[derive(Debug, Clone, PartialEq)]
pub struct NetPlan {
    pub policy: Value,
    pub secrets: Vec<PlannedSecret>,
}

/// A policy as lockbox-net parses it; a bad one is `invalid_argument`
/// with the parser's reason, before anything is made.
pub fn parse_policy(v: &Value) -> Result<Policy> {
    Policy::from_json(&v.to_string())
        .map_err(|e| EngineError::invalid(format!("network_policy: {e}")))
}

/// Everything about the policy and secrets that needs no host.
pub fn check(cfg: &SandboxConfig) -> Result<()> {
    let Some(p) = &cfg.network_policy else {
        if !cfg.secrets.is_empty() {
            return Err(EngineError::invalid(
                "secrets need a network policy (the forwarder substitutes them)",
            ));
        }
        return Ok(());
    };
    if cfg.network == NetworkMode::Outbound {
        return Err(EngineError::invalid(
            "network: use either NetworkOutbound or a policy (the public-internet preset is outbound)",
        ));
    }
    if cfg.ports.len() > MAX_PUBLISHED {
        return Err(EngineError::invalid(format!(
            "{} published ports: at most {MAX_PUBLISHED} with a network policy",
            cfg.ports.len()
        )));
    }
    let policy = parse_policy(p)?;
    secrets::check(&cfg.secrets, &policy)
}

/// The forwarder's plan for `cfg`, placeholders drawn here; None without a
/// policy, except for a microVM's plain outbound (pasta is native-only):
/// the forwarder with the public-internet preset.
pub fn plan(cfg: &SandboxConfig) -> Result<Option<NetPlan>> {
    let Some(p) = &cfg.network_policy else {
        if cfg.network == NetworkMode::Outbound && cfg.isolation == Isolation::Microvm {
            return Ok(Some(NetPlan {
                policy: serde_json::json!({"rules": [{"action": "allow", "preset": "public-internet"}]}),
                secrets: Vec::new(),
            }));
        }
        return Ok(None);
    };
    Ok(Some(NetPlan {
        policy: p.clone(),
        secrets: secrets::plan(&cfg.secrets)?,
    }))
}

/// What the sandbox's environment gains: each secret's name holding its
/// placeholder, and the CA bundle variables when there are secrets.
pub fn env(plan: &NetPlan) -> Vec<String> {
    let mut env: Vec<String> = plan
        .secrets
        .iter()
        .map(|s| format!("{}={}", s.name, s.placeholder))
        .collect();
    if !plan.secrets.is_empty() {
        for k in secrets::CA_ENV {
            env.push(format!("{k}={}", secrets::CA_BUNDLE));
        }
        env.push(format!("{}={}", secrets::NODE_CA_ENV, secrets::CA_PEM));
    }
    env
}

/// The system bundle is image content: read up to this much of it.
const MAX_SYSTEM_BUNDLE: u64 = 8 << 20;

/// Writes what the sandbox needs to use the forwarder, through the agent
/// (inside the sandbox's confinement, as its root: no host-side path into
/// the sandbox's files): resolv.conf naming the gateway, and with secrets
/// the CA alone, a bundle of the image's roots plus the CA, and the CA
/// appended to the image's own bundle.
pub async fn install(client: &crate::client::AgentClient, ca_pem: Option<&str>) -> Result<()> {
    let root = client.as_user("0:0");
    let c = &root;
    // A link (stub-resolv.conf) would be followed inside: replace it.
    let _ = crate::fs::remove(c, "/etc/resolv.conf").await;
    crate::fs::write_file(c, "/etc/resolv.conf", RESOLV_CONF.as_bytes(), 0o644)
        .await
        .map_err(|e| e.context("write the sandbox's /etc/resolv.conf"))?;
    let Some(ca) = ca_pem else {
        return Ok(());
    };
    crate::fs::mkdir_all(c, "/etc/lockbox", 0o755).await?;
    crate::fs::write_file(c, secrets::CA_PEM, ca.as_bytes(), 0o644).await?;
    let system = match crate::fs::open_regular(c, secrets::SYSTEM_BUNDLE).await {
        Ok(r) => Some(r.read_to_end_max(MAX_SYSTEM_BUNDLE).await?),
        Err(_) => None,
    };
    let mut bundle = system.clone().unwrap_or_default();
    if !bundle.is_empty() && !bundle.ends_with(b"\n") {
        bundle.push(b'\n');
    }
    bundle.extend_from_slice(ca.as_bytes());
    crate::fs::write_file(c, secrets::CA_BUNDLE, &bundle, 0o644).await?;
    if system.is_some() {
        crate::fs::write_file(c, secrets::SYSTEM_BUNDLE, &bundle, 0o644).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
