//! Secrets through the forwarder with real TLS: HTTPS test hosts with a
//! lab CA record what they receive; the sandbox's client trusts the
//! per-sandbox CA (or not, for the controls). Needs root, like egress.rs.
//!
//! Each test checks what the server actually received, next to a control
//! showing the same path doing the opposite when it should.

mod lab;

use std::io::Write;
use std::sync::Arc;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use lab::https::{self, connect, roundtrip};
use lab::{resolve, tcp_exchange, Lab, Tcp};
use lockbox_net::events::{Denial, DenialKind};
use lockbox_net::intercept::{http::MAX_HEAD, Interception};
use lockbox_net::policy::Policy;
use lockbox_net::secrets::{SecretSpec, Secrets};

const POLICY: &str = r#"{"rules":[
  {"action":"allow","domain":"api.test","ports":["80","443","8443"]},
  {"action":"allow","domain":"*.pkg.test","ports":["443"]}
]}"#;
const API_P: &str = "lockbox-secret-0a1b2c3d4e5f60718293a4b5c6d7e8f9";
const API_V: &str = "sk-api-real-value";
const PKG_P: &str = "lockbox-secret-ffeeddccbbaa99887766554433221100";
const PKG_V: &str = "pkg-real-token";

/// A lab whose forwarder holds the api.test secret and, with `pkg`, one
/// bound to files.pkg.test; upstream trust is the lab CA only.
fn lab(pkg: bool) -> (Lab, String) {
    let mut specs = vec![SecretSpec {
        placeholder: API_P.into(),
        value: API_V.into(),
        hosts: vec!["api.test".into()],
        headers: vec![],
    }];
    if pkg {
        specs.push(SecretSpec {
            placeholder: PKG_P.into(),
            value: PKG_V.into(),
            hosts: vec!["files.pkg.test".into()],
            headers: vec![],
        });
    }
    let roots = vec![https::pki().ca_der.clone()];
    let ix = Arc::new(Interception::new(Secrets::new(specs).unwrap(), roots).unwrap());
    let ca = ix.ca_pem();
    (
        Lab::with_interception(Policy::from_json(POLICY).unwrap(), ix),
        ca,
    )
}

fn secret_events(lab: &Lab) -> Vec<Denial> {
    lab.handle
        .take_events()
        .into_iter()
        .filter(|d| d.kind == DenialKind::Secret)
        .collect()
}

fn heads(lab: &Lab, label: &str) -> Vec<String> {
    lab.net
        .https_log
        .lock()
        .unwrap()
        .iter()
        .filter(|(l, _)| *l == label)
        .map(|(_, h)| h.clone())
        .collect()
}

#[test]
fn placeholders_become_values_only_at_their_hosts() {
    let (lab, ca) = lab(true);
    let basic = B64.encode(format!("me:{API_P}"));
    let (a1, a2, p1) = lab.inside(move || {
        resolve("api.test");
        resolve("files.pkg.test");
        let mut c = connect("198.51.100.10:443", "api.test", &[&ca]).unwrap();
        let r1 = format!(
            "POST /v1 HTTP/1.1\r\nHost: api.test\r\nAuthorization: Bearer {API_P}\r\n\
             X-Pkg: {PKG_P}\r\nContent-Length: 47\r\n\r\n{API_P}"
        );
        let a1 = roundtrip(&mut c, r1.as_bytes()).unwrap();
        // A request with a body ends its connection (S5-NET-7): a new
        // one, Basic credentials this time.
        let mut c = connect("198.51.100.10:443", "api.test", &[&ca]).unwrap();
        let r2 =
            format!("GET /v2 HTTP/1.1\r\nHost: api.test\r\nAuthorization: Basic {basic}\r\n\r\n");
        let a2 = roundtrip(&mut c, r2.as_bytes()).unwrap();
        let mut p = connect("198.51.100.11:443", "files.pkg.test", &[&ca]).unwrap();
        let r3 = format!(
            "GET / HTTP/1.1\r\nHost: files.pkg.test\r\nX-Api-Key: {PKG_P}\r\nX-Api: {API_P}\r\n\r\n"
        );
        let p1 = roundtrip(&mut p, r3.as_bytes()).unwrap();
        (a1, a2, p1)
    });
    assert_eq!(
        (a1.as_str(), a2.as_str(), p1.as_str()),
        ("ok api-tls", "ok api-tls", "ok pkg-tls")
    );

    let api = heads(&lab, "api-tls");
    assert_eq!(api.len(), 2, "{api:?}");
    assert!(
        api[0].contains(&format!("Authorization: Bearer {API_V}\r\n")),
        "{}",
        api[0]
    );
    assert!(api[0].contains("\r\nConnection: close\r\n"), "{}", api[0]);
    // The other secret's placeholder is not for this host: as sent.
    assert!(
        api[0].contains(&format!("X-Pkg: {PKG_P}\r\n")),
        "{}",
        api[0]
    );
    let want = format!(
        "Authorization: Basic {}\r\n",
        B64.encode(format!("me:{API_V}"))
    );
    assert!(api[1].contains(&want), "{}", api[1]);
    let pkg = heads(&lab, "pkg-tls");
    assert_eq!(pkg.len(), 1);
    assert!(
        pkg[0].contains(&format!("X-Api-Key: {PKG_V}\r\n")),
        "{}",
        pkg[0]
    );
    assert!(
        pkg[0].contains(&format!("X-Api: {API_P}\r\n")),
        "{}",
        pkg[0]
    );
    assert!(!pkg[0].contains(API_V) && !api[0].contains(PKG_V));

    // Bearer and Basic at api.test, X-Api-Key at files.pkg.test; bodies are not
    // rewritten.
    assert_eq!(lab.handle.counters().secrets_substituted, 3);
    let ev = secret_events(&lab);
    assert_eq!(ev.len(), 2, "{ev:#?}");
    assert_eq!(ev[0].name.as_deref(), Some("api.test"));
    assert!(ev[0].rule.contains(PKG_P), "{}", ev[0].rule);
    assert_eq!(ev[1].name.as_deref(), Some("files.pkg.test"));
    assert!(ev[1].rule.contains(API_P), "{}", ev[1].rule);
    for e in &ev {
        assert!(!e.rule.contains(API_V) && !e.rule.contains(PKG_V));
    }
}

#[test]
fn only_secret_hosts_are_intercepted() {
    let (lab, ca) = lab(false);
    let lab_ca = https::pki().ca_pem.clone();
    let (pkg, api_lab_only, api_ours, h2, both) = lab.inside(move || {
        resolve("api.test");
        resolve("files.pkg.test");
        // No secret for files.pkg.test: the client sees the real server,
        // trusting only the lab CA (not ours).
        let mut p = connect("198.51.100.11:443", "files.pkg.test", &[&lab_ca]).unwrap();
        let pkg = roundtrip(&mut p, b"GET / HTTP/1.1\r\nHost: files.pkg.test\r\n\r\n").unwrap();
        // api.test is intercepted: a client that does not trust our CA
        // fails, one that does succeeds with our leaf.
        let lab_only = connect("198.51.100.10:443", "api.test", &[&lab_ca]).map(|_| ());
        let ours = connect("198.51.100.10:443", "api.test", &[&ca]).map(|c| https::peer_leaf(&c));
        // Only HTTP/1.1 requests are rewritten: a client offering only h2
        // is refused, not silently passed through unsubstituted.
        let h2 = https::connect_alpn("198.51.100.10:443", "api.test", &[&ca], &[b"h2"]).map(|_| ());
        let both = https::connect_alpn(
            "198.51.100.10:443",
            "api.test",
            &[&ca],
            &[b"h2", b"http/1.1"],
        )
        .map(|c| c.conn.alpn_protocol().map(|p| p.to_vec()));
        (pkg, lab_only, ours, h2, both)
    });
    assert_eq!(pkg, "ok pkg-tls");
    let e = api_lab_only.unwrap_err().to_string();
    assert!(
        e.contains("UnknownIssuer") || e.contains("invalid peer certificate"),
        "{e}"
    );
    assert!(api_ours.is_ok(), "{api_ours:?}");
    // Refused at ALPN (the forwarder's alert, or the reset after it).
    assert!(h2.is_err(), "{h2:?}");
    assert_eq!(both.unwrap(), Some(b"http/1.1".to_vec()));
    // Neither api.test handshake let a request through.
    assert!(heads(&lab, "api-tls").is_empty());
    assert_eq!(heads(&lab, "pkg-tls").len(), 1);
}

#[test]
fn a_host_that_cannot_prove_its_name_gets_no_secret() {
    let (lab, ca) = lab(true);
    let req = format!("GET / HTTP/1.1\r\nHost: api.test\r\nAuthorization: Bearer {API_P}\r\n\r\n");
    let (rogue, fronted, control) = lab.inside(move || {
        resolve("api.test");
        resolve("files.pkg.test");
        let try_it = |addr: &str| {
            connect(addr, "api.test", &[&ca]).and_then(|mut c| roundtrip(&mut c, req.as_bytes()))
        };
        (
            // A certificate for api.test from a CA nobody trusts.
            try_it("198.51.100.10:8443"),
            // An allowed address serving another name's valid certificate.
            try_it("198.51.100.11:443"),
            try_it("198.51.100.10:443"),
        )
    });
    assert!(rogue.is_err(), "{rogue:?}");
    assert!(fronted.is_err(), "{fronted:?}");
    assert_eq!(control.unwrap(), "ok api-tls");
    assert!(heads(&lab, "rogue").is_empty());
    assert!(heads(&lab, "pkg-tls").is_empty());
    assert_eq!(heads(&lab, "api-tls").len(), 1);
    let ev = secret_events(&lab);
    assert_eq!(ev.len(), 2, "{ev:#?}");
    assert_eq!(ev[0].port, Some(8443));
    assert!(
        ev[0].rule.contains("TLS to api.test failed"),
        "{}",
        ev[0].rule
    );
    assert_eq!(ev[1].ip, Some("198.51.100.11".parse().unwrap()));
    assert_eq!(lab.handle.counters().secrets_substituted, 1);
}

#[test]
fn oversized_or_misaddressed_request_heads_are_refused() {
    let (lab, ca) = lab(false);
    let (big, other_host, under) = lab.inside(move || {
        resolve("api.test");
        let head = |pad: usize| {
            format!(
                "GET / HTTP/1.1\r\nHost: api.test\r\nX-Pad: {}\r\nAuthorization: Bearer {API_P}\r\n\r\n",
                "a".repeat(pad)
            )
        };
        let mut c = connect("198.51.100.10:443", "api.test", &[&ca]).unwrap();
        let big = roundtrip(&mut c, head(MAX_HEAD).as_bytes());
        // Verified as api.test, asking the same server for another name.
        let mut c = connect("198.51.100.10:443", "api.test", &[&ca]).unwrap();
        let other = format!("GET / HTTP/1.1\r\nHost: files.pkg.test\r\nAuthorization: Bearer {API_P}\r\n\r\n");
        let other_host = roundtrip(&mut c, other.as_bytes());
        let mut c = connect("198.51.100.10:443", "api.test", &[&ca]).unwrap();
        let under = roundtrip(&mut c, head(MAX_HEAD - 200).as_bytes());
        (big, other_host, under)
    });
    assert!(big.is_err(), "{big:?}");
    assert!(other_host.is_err(), "{other_host:?}");
    assert_eq!(under.unwrap(), "ok api-tls");
    let api = heads(&lab, "api-tls");
    assert_eq!(api.len(), 1, "only the good head arrived: {api:?}");
    assert!(api[0].contains(API_V));
    let ev = secret_events(&lab);
    assert_eq!(ev.len(), 2, "{ev:#?}");
    assert!(ev[0].rule.contains("over 65536 bytes"), "{}", ev[0].rule);
    assert!(
        ev[1]
            .rule
            .contains("Host \"files.pkg.test\" is not api.test"),
        "{}",
        ev[1].rule
    );
}

#[test]
fn a_placeholder_in_plaintext_is_reported_not_substituted() {
    let (lab, _) = lab(false);
    let (with, without) = lab.inside(|| {
        resolve("api.test");
        let leak = format!("GET / HTTP/1.1\r\nAuthorization: Bearer {API_P}\r\n\r\n");
        (
            tcp_exchange("198.51.100.10:80", leak.as_bytes()),
            tcp_exchange("198.51.100.10:80", b"GET / HTTP/1.1\r\n\r\n"),
        )
    });
    // The plain server got the request (it answers after one read) and
    // nothing in it was replaced: the event says so.
    assert_eq!(with, Tcp::Answer("api".into()));
    assert_eq!(without, Tcp::Answer("api".into()));
    let ev = secret_events(&lab);
    assert_eq!(
        ev.len(),
        1,
        "only the connection with the placeholder: {ev:#?}"
    );
    assert!(ev[0].rule.contains(API_P) && ev[0].rule.contains("without TLS"));
    assert_eq!(ev[0].port, Some(80));
    assert_eq!(lab.handle.counters().secrets_substituted, 0);
    let _ = std::io::stdout().flush();
}
