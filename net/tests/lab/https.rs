//! HTTPS test hosts with a test CA made here (rcgen), each recording the
//! request heads it receives, and a TLS client for inside the sandbox.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, SanType};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::{
    ClientConfig, ClientConnection, RootCertStore, ServerConfig, ServerConnection, StreamOwned,
};
use rustls_pki_types::pem::PemObject;

/// (server label, request head as received) for every request any HTTPS
/// test host got, in order.
pub type HttpsLog = Arc<Mutex<Vec<(&'static str, String)>>>;

/// The CA the test hosts' certificates chain to (the "public" CA of the
/// lab), and a rogue one nobody trusts.
pub struct TestPki {
    pub ca_der: CertificateDer<'static>,
    pub ca_pem: String,
    rogue: (rcgen::Certificate, KeyPair),
    trusted: (rcgen::Certificate, KeyPair),
}

pub fn pki() -> &'static TestPki {
    static PKI: OnceLock<TestPki> = OnceLock::new();
    PKI.get_or_init(|| {
        let ca = |cn: &str| {
            let key = KeyPair::generate().unwrap();
            let mut p = CertificateParams::default();
            p.distinguished_name.push(DnType::CommonName, cn);
            p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            (p.self_signed(&key).unwrap(), key)
        };
        let trusted = ca("lab public CA");
        TestPki {
            ca_der: trusted.0.der().clone(),
            ca_pem: trusted.0.pem(),
            rogue: ca("lab rogue CA"),
            trusted,
        }
    })
}

/// A server config for `name`, issued by the trusted CA or the rogue one.
pub fn server_config(name: &str, rogue: bool) -> (Arc<ServerConfig>, CertificateDer<'static>) {
    let pki = pki();
    let (ca, ca_key) = if rogue { &pki.rogue } else { &pki.trusted };
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::default();
    p.distinguished_name.push(DnType::CommonName, name);
    p.subject_alt_names = vec![SanType::DnsName(name.try_into().unwrap())];
    let cert = p.signed_by(&key, ca, ca_key).unwrap();
    let der = cert.der().clone();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![der.clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
        .unwrap();
    (Arc::new(cfg), der)
}

/// Serves HTTP/1.1 over TLS on `l`: keep-alive, Content-Length bodies
/// read and dropped, every head logged, each answered "ok".
pub fn serve(l: TcpListener, label: &'static str, cfg: Arc<ServerConfig>, log: HttpsLog) {
    for c in l.incoming() {
        let Ok(c) = c else { continue };
        let (cfg, log) = (cfg.clone(), log.clone());
        thread::spawn(move || {
            let _ = c.set_read_timeout(Some(Duration::from_secs(10)));
            let Ok(conn) = ServerConnection::new(cfg) else {
                return;
            };
            let mut s = StreamOwned::new(conn, c);
            let mut buf = Vec::new();
            while let Ok(Some(head)) = read_head(&mut s, &mut buf) {
                let mut hs = [httparse::EMPTY_HEADER; 256];
                let mut req = httparse::Request::new(&mut hs);
                if req.parse(head.as_bytes()).is_err() {
                    return;
                }
                let len: usize = req
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                    .and_then(|h| std::str::from_utf8(h.value).ok()?.parse().ok())
                    .unwrap_or(0);
                log.lock().unwrap().push((label, head));
                while buf.len() < len {
                    let mut b = [0u8; 16384];
                    match s.read(&mut b) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&b[..n]),
                    }
                }
                buf.drain(..len);
                let body = format!("ok {label}");
                let resp = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
                if s.write_all(resp.as_bytes())
                    .and_then(|_| s.flush())
                    .is_err()
                {
                    return;
                }
            }
        });
    }
}

/// One head from `s` (bytes after it stay in `buf`); None at the end.
fn read_head(s: &mut impl Read, buf: &mut Vec<u8>) -> io::Result<Option<String>> {
    loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head: Vec<u8> = buf.drain(..i + 4).collect();
            return Ok(Some(String::from_utf8_lossy(&head).into_owned()));
        }
        if buf.len() > 256 * 1024 {
            return Err(io::ErrorKind::InvalidData.into());
        }
        let mut b = [0u8; 16384];
        let n = s.read(&mut b)?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&b[..n]);
    }
}

pub type Client = StreamOwned<ClientConnection, TcpStream>;

/// A TLS connection to `addr` with server name `sni`, trusting only the
/// CAs in `roots_pem`; the handshake is done before it returns.
pub fn connect(addr: &str, sni: &str, roots_pem: &[&str]) -> io::Result<Client> {
    connect_alpn(addr, sni, roots_pem, &[b"http/1.1"])
}

/// `connect`, offering the ALPN protocols `alpn`.
pub fn connect_alpn(
    addr: &str,
    sni: &str,
    roots_pem: &[&str],
    alpn: &[&[u8]],
) -> io::Result<Client> {
    let mut roots = RootCertStore::empty();
    for pem in roots_pem {
        for c in CertificateDer::pem_slice_iter(pem.as_bytes()) {
            roots.add(c.unwrap()).unwrap();
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let a: SocketAddr = addr.parse().unwrap();
    let mut sock = TcpStream::connect_timeout(&a, Duration::from_secs(5))?;
    sock.set_read_timeout(Some(Duration::from_secs(10)))?;
    let name = ServerName::try_from(sni.to_string()).unwrap();
    let mut conn = ClientConnection::new(Arc::new(cfg), name).map_err(io::Error::other)?;
    while conn.is_handshaking() {
        conn.complete_io(&mut sock)?;
    }
    Ok(StreamOwned::new(conn, sock))
}

/// The certificate the server presented (the leaf).
pub fn peer_leaf(c: &Client) -> CertificateDer<'static> {
    c.conn.peer_certificates().unwrap()[0].clone().into_owned()
}

/// Sends `req` (a whole request) and reads one response's body.
pub fn roundtrip(c: &mut Client, req: &[u8]) -> io::Result<String> {
    c.write_all(req)?;
    c.flush()?;
    let mut buf = Vec::new();
    let head = read_head(c, &mut buf)?.ok_or(io::ErrorKind::UnexpectedEof)?;
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    while buf.len() < len {
        let mut b = [0u8; 4096];
        let n = c.read(&mut b)?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&b[..n]);
    }
    Ok(String::from_utf8_lossy(&buf[..len]).into_owned())
}
