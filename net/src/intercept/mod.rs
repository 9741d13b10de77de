//! TLS interception for the connections that carry secrets, and only
//! those: a connection is intercepted when its ClientHello names a host
//! some secret is bound to (and the policy allowed it). The forwarder then
//! completes the handshake itself toward the real host (full certificate
//! verification, SNI = that name, at the address the sandbox chose),
//! answers the sandbox with a leaf from the sandbox's own CA, and rewrites
//! request heads in between. Every other connection stays end-to-end TLS.

mod ca;
pub mod http;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use tokio::io::{AsyncWriteExt, DuplexStream};
use tokio::net::TcpStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::events::{Denial, DenialKind, Events};
use crate::policy::Protocol;
use crate::secrets::Secrets;
pub use ca::{MAX_LEAVES, VALIDITY};

/// Each handshake, either side, must finish within this.
const HANDSHAKE: Duration = Duration::from_secs(10);

/// Where the host's trust roots are, first found wins.
const SYSTEM_ROOTS: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
];

pub struct Interception {
    secrets: Secrets,
    ca: ca::Ca,
    client: Arc<ClientConfig>,
}

impl Interception {
    /// `roots`: what the real hosts' certificates are verified against.
    pub fn new(secrets: Secrets, roots: Vec<CertificateDer<'static>>) -> Result<Self, String> {
        let mut store = RootCertStore::empty();
        let (_, _) = store.add_parsable_certificates(roots);
        if store.is_empty() {
            return Err("no trust roots for the secret hosts' certificates".into());
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut client = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(store)
            .with_no_client_auth();
        client.alpn_protocols = vec![b"http/1.1".to_vec()];
        let ca = ca::Ca::new(&secrets.constraint_names())?;
        Ok(Interception {
            secrets,
            ca,
            client: Arc::new(client),
        })
    }

    /// The CA certificate the sandbox must trust (its key stays here).
    pub fn ca_pem(&self) -> String {
        self.ca.pem()
    }

    pub fn secrets(&self) -> &Secrets {
        &self.secrets
    }

    /// Relays one intercepted connection: `sandbox` carries the sandbox's
    /// TLS bytes (its ClientHello first), `upstream` is already connected
    /// to the address the sandbox asked for. Ok once both sides closed;
    /// Err means the sandbox's connection must be reset.
    pub async fn serve(
        &self,
        host: &str,
        upstream: TcpStream,
        sandbox: DuplexStream,
        events: &Events,
        dst: SocketAddr,
    ) -> io::Result<()> {
        let report = |rule: String| {
            let mut d = Denial::now(DenialKind::Secret, rule);
            d.protocol = Some(Protocol::Tcp);
            d.ip = Some(dst.ip());
            d.port = Some(dst.port());
            d.name = Some(host.to_string());
            events.deny(d);
        };
        let name =
            ServerName::try_from(host.to_string()).map_err(|e| http::refused(e.to_string()))?;
        // The real host first: if it cannot prove it is `host`, the
        // sandbox's handshake never completes and nothing is sent.
        let up = TlsConnector::from(self.client.clone()).connect(name, upstream);
        let up = match tokio::time::timeout(HANDSHAKE, up).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                report(format!("TLS to {host} failed, connection reset: {e}"));
                return Err(e);
            }
            Err(_) => {
                report(format!("TLS to {host} timed out, connection reset"));
                return Err(io::ErrorKind::TimedOut.into());
            }
        };
        let cfg = self.ca.server_config(host).map_err(io::Error::other)?;
        let down = TlsAcceptor::from(cfg).accept(sandbox);
        let down = tokio::time::timeout(HANDSHAKE, down)
            .await
            .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))??;
        let (up_r, mut up_w) = tokio::io::split(up);
        let (down_r, mut down_w) = tokio::io::split(down);
        let requests = async {
            let seen = |s: http::Seen| {
                if s.substituted > 0 {
                    events.count(|c| c.secrets_substituted += s.substituted);
                }
                for p in s.misdirected {
                    report(format!(
                        "placeholder {p} sent to {host}, which its secret is not bound to: not substituted"
                    ));
                }
                for p in s.elsewhere {
                    report(format!(
                        "placeholder {p} outside the credential headers (Authorization, \
                         Proxy-Authorization, X-Api-Key and the others in the docs): not substituted"
                    ));
                }
            };
            let r = http::Requests::new(down_r)
                .relay(&mut up_w, &self.secrets, host, seen)
                .await;
            if let Err(e) = &r {
                if e.kind() == io::ErrorKind::InvalidData {
                    report(format!("request to {host} refused, connection reset: {e}"));
                }
            }
            r?;
            up_w.shutdown().await
        };
        let responses = async {
            let mut up_r = up_r;
            match tokio::io::copy(&mut up_r, &mut down_w).await {
                // Servers often close without close_notify: the response
                // is complete as far as HTTP framing goes.
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {}
                Err(e) => return Err(e),
            }
            down_w.shutdown().await
        };
        tokio::pin!(requests, responses);
        let mut requests_done = false;
        loop {
            tokio::select! {
                r = &mut responses => return r,
                r = &mut requests, if !requests_done => {
                    r?;
                    requests_done = true;
                }
            }
        }
    }
}

/// The host's system trust roots, read once at start (before privileges
/// are dropped); empty when none of the usual bundles exists.
pub fn system_roots() -> Vec<CertificateDer<'static>> {
    for p in SYSTEM_ROOTS {
        if let Ok(bytes) = std::fs::read(p) {
            return CertificateDer::pem_slice_iter(&bytes)
                .filter_map(Result::ok)
                .collect();
        }
    }
    Vec::new()
}

/// Certificates from PEM text; an error if it holds none or a bad one.
pub fn roots_from_pem(pem: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<_> = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("upstream_roots_pem: {e}"))?;
    if certs.is_empty() {
        return Err("upstream_roots_pem holds no certificate".into());
    }
    Ok(certs)
}
