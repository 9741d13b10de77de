//! Secrets (`WithSecret`): checked at create, given placeholders the
//! sandbox sees instead of the values, and the CA bundle the sandbox needs
//! to trust the forwarder's interception of the secret hosts.

use lockbox_net::policy::Policy;

use crate::config::Secret;
use crate::error::{EngineError, Result};

pub const MAX_SECRETS: usize = 64;
pub const MAX_SECRET_HOSTS: usize = 16;
/// A header value; larger would not fit the forwarder's header bound.
pub const MAX_SECRET_VALUE_BYTES: usize = 16 * 1024;
pub const PLACEHOLDER_PREFIX: &str = "lockbox-secret-";

/// The per-sandbox CA alone, and the system roots with it appended.
pub const CA_PEM: &str = "/etc/lockbox/ca.pem";
pub const CA_BUNDLE: &str = "/etc/lockbox/ca-bundle.crt";
/// Where most images keep their trust store; appended to when present.
pub const SYSTEM_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";
/// Point at `CA_BUNDLE` (a full bundle: these replace the system roots).
pub const CA_ENV: [&str; 3] = ["SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"];
/// Node adds this file to its own roots, so the CA alone is enough.
pub const NODE_CA_ENV: &str = "NODE_EXTRA_CA_CERTS";

/// One secret as the forwarder gets it. Debug hides the value.
#[derive(Clone, PartialEq)]
pub struct PlannedSecret {
    pub name: String,
    pub placeholder: String,
    pub value: String,
    pub hosts: Vec<String>,
    pub headers: Vec<String>,
}

/// The plan's copy of the value is wiped when the plan goes (after the
/// start line is sent, at the end of create).
impl Drop for PlannedSecret {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.value);
    }
}

impl std::fmt::Debug for PlannedSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PlannedSecret")
            .field("name", &self.name)
            .field("placeholder", &self.placeholder)
            .field("hosts", &self.hosts)
            .field("headers", &self.headers)
            .finish_non_exhaustive()
    }
}

fn env_name_ok(n: &str) -> bool {
    let mut c = n.chars();
    matches!(c.next(), Some(f) if f.is_ascii_alphabetic() || f == '_')
        && c.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && n.len() <= crate::plan::check::MAX_ENV_KEY_BYTES
}

/// Names, values and hosts; every host must be one the policy lets the
/// sandbox resolve (else the secret could never be used, and a caller
/// would believe it bound). Messages name the secret, never its value.
pub fn check(secrets: &[Secret], policy: &Policy) -> Result<()> {
    if secrets.len() > MAX_SECRETS {
        return Err(EngineError::invalid(format!(
            "{} secrets; at most {MAX_SECRETS}",
            secrets.len()
        )));
    }
    let mut names = std::collections::HashSet::new();
    for s in secrets {
        if !env_name_ok(&s.name) {
            return Err(EngineError::invalid(format!(
                "secret name {} must be an environment variable name ([A-Za-z_][A-Za-z0-9_]*)",
                crate::plan::check::shown(&s.name)
            )));
        }
        if !names.insert(s.name.as_str()) {
            return Err(EngineError::invalid(format!(
                "secret {} given twice",
                s.name
            )));
        }
        let v = s.value.as_ref().map(|v| v.0.as_str()).unwrap_or("");
        if v.is_empty() {
            // Values are kept nowhere: a config read back from Info, or a
            // fork of a sandbox with secrets, must be given them again.
            return Err(EngineError::invalid(format!(
                "secret {} has no value (values are never stored: a fork or a config from Info needs them given again)",
                s.name
            )));
        }
        if v.len() > MAX_SECRET_VALUE_BYTES || v.bytes().any(|b| b == 0 || b == b'\r' || b == b'\n')
        {
            return Err(EngineError::invalid(format!(
                "secret {}: the value must be at most {MAX_SECRET_VALUE_BYTES} bytes without NUL, CR or LF",
                s.name
            )));
        }
        if s.hosts.is_empty() || s.hosts.len() > MAX_SECRET_HOSTS {
            return Err(EngineError::invalid(format!(
                "secret {} needs 1..={MAX_SECRET_HOSTS} hosts",
                s.name
            )));
        }
        for h in &s.hosts {
            check_host(&s.name, h, policy)?;
        }
        lockbox_net::secrets::secret_headers(&s.headers)
            .map_err(|e| EngineError::invalid(format!("secret {}: {e}", s.name)))?;
    }
    Ok(())
}

/// An exact name (no wildcard: a secret goes to hosts the caller names),
/// in lockbox-net's name form, that the policy allows.
fn check_host(secret: &str, host: &str, policy: &Policy) -> Result<()> {
    let shown = crate::plan::check::shown(host);
    let one = serde_json::json!({"rules": [{"action": "allow", "domain": host}]});
    if host.starts_with('*')
        || host.bytes().any(|b| b.is_ascii_uppercase())
        || Policy::from_json(&one.to_string()).is_err()
    {
        return Err(EngineError::invalid(format!(
            "secret {secret}: host {shown} is not an exact lower-case domain name"
        )));
    }
    if !policy.may_resolve(host).allowed {
        return Err(EngineError::invalid(format!(
            "secret {secret}: host {shown} is not allowed by the network policy"
        )));
    }
    Ok(())
}

/// A fresh placeholder per secret: `lockbox-secret-` and 32 hex digits
/// from getrandom.
pub fn plan(secrets: &[Secret]) -> Result<Vec<PlannedSecret>> {
    secrets
        .iter()
        .map(|s| {
            Ok(PlannedSecret {
                name: s.name.clone(),
                placeholder: placeholder()?,
                value: s.value.as_ref().map(|v| v.0.clone()).unwrap_or_default(),
                hosts: s.hosts.clone(),
                headers: s.headers.clone(),
            })
        })
        .collect()
}

fn placeholder() -> Result<String> {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b).map_err(|e| EngineError::internal(format!("getrandom: {e}")))?;
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    Ok(format!("{PLACEHOLDER_PREFIX}{hex}"))
}
