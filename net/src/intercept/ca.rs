//! The per-sandbox certificate authority: made when the forwarder starts,
//! its key only in this process's memory, its certificate limited by name
//! constraints to the secret hosts, so even a stolen key could not sign
//! for any other name a client would accept.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose,
    GeneralSubtree, IsCa, KeyPair, KeyUsagePurpose, NameConstraints, SanType,
    PKCS_ECDSA_P256_SHA256,
};
use rustls::ServerConfig;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// The CA and its leaves are valid this long from start: a sandbox that
/// lives longer needs a restart of its forwarder (docs/network.md).
pub const VALIDITY: Duration = Duration::from_secs(30 * 24 * 3600);
/// Leaves cached: one per host name seen, at most this many (a wildcard
/// secret host lets the sandbox choose many names).
pub const MAX_LEAVES: usize = 256;

pub struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
    not_before: time::OffsetDateTime,
    not_after: time::OffsetDateTime,
    leaves: Mutex<HashMap<String, Arc<ServerConfig>>>,
}

impl Ca {
    /// `names`: the DNS subtrees this CA may sign for.
    pub fn new(names: &[String]) -> Result<Ca, String> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|e| e.to_string())?;
        let now = time::OffsetDateTime::now_utc();
        let not_before = now - time::Duration::hours(1);
        let not_after = now + VALIDITY;
        let mut p = CertificateParams::default();
        p.not_before = not_before;
        p.not_after = not_after;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "Lockbox");
        dn.push(DnType::CommonName, "Lockbox sandbox secrets CA");
        p.distinguished_name = dn;
        p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        p.name_constraints = Some(NameConstraints {
            permitted_subtrees: names
                .iter()
                .map(|n| GeneralSubtree::DnsName(n.clone()))
                .collect(),
            excluded_subtrees: vec![],
        });
        let cert = p.self_signed(&key).map_err(|e| e.to_string())?;
        Ok(Ca {
            cert,
            key,
            not_before,
            not_after,
            leaves: Mutex::new(HashMap::new()),
        })
    }

    pub fn pem(&self) -> String {
        self.cert.pem()
    }

    pub fn der(&self) -> CertificateDer<'static> {
        self.cert.der().clone()
    }

    /// The server side for `host`: a leaf for that one name, offering only
    /// HTTP/1.1 (the only protocol whose requests are rewritten).
    pub fn server_config(&self, host: &str) -> Result<Arc<ServerConfig>, String> {
        let mut leaves = self.leaves.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = leaves.get(host) {
            return Ok(c.clone());
        }
        let (chain, key) = self.leaf(host)?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut cfg = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .map_err(|e| e.to_string())?;
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        let cfg = Arc::new(cfg);
        if leaves.len() >= MAX_LEAVES {
            leaves.clear();
        }
        leaves.insert(host.to_string(), cfg.clone());
        Ok(cfg)
    }

    fn leaf(
        &self,
        host: &str,
    ) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), String> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|e| e.to_string())?;
        let mut p = CertificateParams::default();
        p.not_before = self.not_before;
        p.not_after = self.not_after;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, host);
        p.distinguished_name = dn;
        p.subject_alt_names = vec![SanType::DnsName(
            host.to_string().try_into().map_err(|e| format!("{e}"))?,
        )];
        p.is_ca = IsCa::ExplicitNoCa;
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        p.use_authority_key_identifier_extension = true;
        let leaf = p
            .signed_by(&key, &self.cert, &self.key)
            .map_err(|e| e.to_string())?;
        let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        Ok((vec![leaf.der().clone(), self.der()], der))
    }
}
