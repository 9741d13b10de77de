//! Egress policy with real traffic: a sandbox namespace whose only
//! interface is a tap device held by the forwarder, test hosts in their
//! own namespace. Needs root (network namespaces, /dev/net/tun).
//!
//! Each refusal is checked next to a control that shows the same path
//! succeeding when the policy allows it, so a test cannot pass because
//! the path is simply broken.

mod lab;

use std::time::Duration;

use hickory_proto::op::ResponseCode;
use lab::{refused_fast, resolve, tcp_exchange, udp_exchange, Lab, Tcp, Udp, HTTP_GET};
use lockbox_net::events::DenialKind;
use lockbox_net::forwarder::Limits;
use lockbox_net::policy::Policy;
use lockbox_net::sni::client_hello;

const POLICY: &str = r#"{"rules":[
  {"action":"allow","domain":"api.test","ports":["80"],"protocol":"tcp"},
  {"action":"allow","domain":"*.pkg.test","ports":["80"]},
  {"action":"deny","domain":"bad.pkg.test"},
  {"action":"allow","domain":"tls.test","ports":["443"]},
  {"action":"allow","domain":"rebind.test"},
  {"action":"allow","cidr":"198.51.100.10/32","ports":["7"],"protocol":"udp"}
]}"#;

fn policy(json: &str) -> Policy {
    Policy::from_json(json).unwrap()
}

#[test]
fn tcp_by_domain_wildcard_port_and_resolved_address() {
    let lab = Lab::new(policy(POLICY));
    let got = lab.inside(|| {
        // Not resolved yet: an address alone opens nothing.
        let before = tcp_exchange("198.51.100.11:80", HTTP_GET);
        let api = resolve("api.test");
        let api_80 = tcp_exchange("198.51.100.10:80", HTTP_GET);
        let api_8080 = tcp_exchange("198.51.100.10:8080", HTTP_GET);
        let pkg = resolve("files.pkg.test");
        let after = tcp_exchange("198.51.100.11:80", HTTP_GET);
        let bad = resolve("bad.pkg.test");
        let bare = resolve("pkg.test");
        let other = tcp_exchange("198.51.100.12:80", HTTP_GET);
        (before, api, api_80, api_8080, pkg, after, bad, bare, other)
    });
    let (before, api, api_80, api_8080, pkg, after, bad, bare, other) = got;
    assert!(refused_fast(&before), "{before:?}");
    assert_eq!(
        api,
        (
            ResponseCode::NoError,
            vec!["198.51.100.10".parse().unwrap()]
        )
    );
    assert_eq!(api_80, Tcp::Answer("api".into()));
    assert!(
        refused_fast(&api_8080),
        "port 8080 is not allowed: {api_8080:?}"
    );
    assert_eq!(
        pkg.1,
        vec!["198.51.100.11".parse::<std::net::IpAddr>().unwrap()]
    );
    assert_eq!(
        after,
        Tcp::Answer("pkg".into()),
        "allowed once resolved through *.pkg.test"
    );
    assert_eq!(
        bad,
        (ResponseCode::NXDomain, vec![]),
        "deny wins over the wildcard"
    );
    assert_eq!(
        bare.0,
        ResponseCode::NXDomain,
        "*.pkg.test does not cover pkg.test"
    );
    assert!(refused_fast(&other), "{other:?}");

    let ev = lab.handle.take_events();
    let connect: Vec<_> = ev
        .iter()
        .filter(|d| d.kind == DenialKind::Connect)
        .collect();
    assert_eq!(connect.len(), 3, "{ev:#?}");
    assert_eq!(connect[1].ip, Some("198.51.100.10".parse().unwrap()));
    assert_eq!(connect[1].port, Some(8080));
    assert_eq!(connect[1].name.as_deref(), Some("api.test"));
    assert_eq!(connect[1].rule, "default deny");
    let dns: Vec<_> = ev.iter().filter(|d| d.kind == DenialKind::Dns).collect();
    assert_eq!(dns.len(), 2);
    assert_eq!(dns[0].name.as_deref(), Some("bad.pkg.test"));
    assert!(
        dns[0].rule.contains(r#""action":"deny""#),
        "{}",
        dns[0].rule
    );
    let c = lab.handle.counters();
    assert_eq!(
        (c.connections_allowed, c.connections_denied, c.dns_denied),
        (2, 3, 2)
    );
    // The denied names never reached the DNS server; the allowed did.
    let log = lab.dns_log.lock().unwrap().clone();
    assert_eq!(log, ["api.test", "files.pkg.test"]);
}

#[test]
fn udp_by_cidr_port_and_protocol() {
    let lab = Lab::new(policy(POLICY));
    let (echo7, deny9, tcp_only) = lab.inside(|| {
        let _ = resolve("api.test");
        (
            udp_exchange("198.51.100.10:7", b"ping"),
            udp_exchange("198.51.100.10:9", b"ping"),
            // api.test is allowed on port 80 for TCP only.
            udp_exchange("198.51.100.10:80", b"ping"),
        )
    });
    assert_eq!(echo7, Udp::Echo(b"ping".to_vec()));
    assert!(
        matches!(deny9, Udp::Refused(d) if d < lab::FAST),
        "{deny9:?}"
    );
    assert!(matches!(tcp_only, Udp::Refused(_)), "{tcp_only:?}");
    // Control: the same datagrams go through once the policy allows them.
    lab.handle.set_policy(policy(
        r#"{"rules":[{"action":"allow","cidr":"198.51.100.10/32","protocol":"udp"}]}"#,
    ));
    let (ok9, ok80) = lab.inside(|| {
        (
            udp_exchange("198.51.100.10:9", b"nine"),
            udp_exchange("198.51.100.10:80", b"eighty"),
        )
    });
    assert_eq!(ok9, Udp::Echo(b"nine".to_vec()));
    assert_eq!(ok80, Udp::Echo(b"eighty".to_vec()));
    let ev = lab.handle.take_events();
    assert!(ev
        .iter()
        .any(|d| d.kind == DenialKind::Connect && d.port == Some(9) && d.protocol.is_some()));
}

#[test]
fn dns_tunnelling_through_a_denied_zone_never_reaches_the_server() {
    let lab = Lab::new(policy(POLICY));
    let names: Vec<String> = (0..40)
        .map(|i| {
            format!(
                "{:x}{}.c2.exfil.test",
                0x9e3779b97f4a7c15u64.wrapping_mul(i + 1),
                "a".repeat(40)
            )
        })
        .collect();
    let ns = names.clone();
    let answers = lab.inside(move || ns.iter().map(|n| resolve(n).0).collect::<Vec<_>>());
    assert!(answers.iter().all(|c| *c == ResponseCode::NXDomain));
    assert!(
        lab.dns_log.lock().unwrap().is_empty(),
        "{:?}",
        lab.dns_log.lock().unwrap()
    );
    assert_eq!(lab.handle.counters().dns_denied, 40);
    // Control: the server does see such names when the zone is allowed,
    // so the empty log above is the policy's doing.
    lab.handle.set_policy(policy(
        r#"{"rules":[{"action":"allow","domain":"*.exfil.test"}]}"#,
    ));
    let first = names[0].clone();
    lab.inside(move || resolve(&first));
    assert_eq!(*lab.dns_log.lock().unwrap(), [names[0].clone()]);
}

#[test]
fn answers_pointing_inside_are_dropped_unless_a_cidr_allows_them() {
    let lab = Lab::new(policy(POLICY));
    let (answer, direct) = lab.inside(|| {
        (
            resolve("rebind.test"),
            tcp_exchange("10.77.0.10:80", HTTP_GET),
        )
    });
    assert_eq!(
        answer,
        (ResponseCode::NoError, vec![]),
        "both addresses are internal"
    );
    assert!(refused_fast(&direct), "{direct:?}");
    let ev = lab.handle.take_events();
    assert_eq!(
        ev.iter()
            .filter(|d| d.kind == DenialKind::DnsAnswer)
            .count(),
        2,
        "{ev:#?}"
    );
    // Control: an explicit CIDR rule lets that one address through.
    lab.handle.set_policy(policy(
        r#"{"rules":[{"action":"allow","domain":"rebind.test"},{"action":"allow","cidr":"10.77.0.10/32","ports":["80"]}]}"#,
    ));
    let (answer, direct) = lab.inside(|| {
        (
            resolve("rebind.test"),
            tcp_exchange("10.77.0.10:80", HTTP_GET),
        )
    });
    assert_eq!(
        answer.1,
        vec!["10.77.0.10".parse::<std::net::IpAddr>().unwrap()]
    );
    assert_eq!(direct, Tcp::Answer("internal".into()));
}

#[test]
fn tls_server_name_must_be_allowed_on_an_allowed_address() {
    let lab = Lab::new(policy(POLICY));
    let (good, fronted, nameless, plain) = lab.inside(|| {
        let _ = resolve("tls.test");
        (
            tcp_exchange("198.51.100.12:443", &client_hello(Some("tls.test"))),
            tcp_exchange("198.51.100.12:443", &client_hello(Some("evil.test"))),
            tcp_exchange("198.51.100.12:443", &client_hello(None)),
            tcp_exchange("198.51.100.12:443", HTTP_GET),
        )
    });
    assert_eq!(good, Tcp::Answer("tls".into()));
    assert!(
        matches!(fronted, Tcp::Refused(_)),
        "domain fronting: {fronted:?}"
    );
    assert!(matches!(nameless, Tcp::Refused(_)), "no SNI: {nameless:?}");
    // Not TLS: nothing to check beyond the address.
    assert_eq!(plain, Tcp::Answer("tls".into()));
    let ev = lab.handle.take_events();
    let sni: Vec<_> = ev.iter().filter(|d| d.kind == DenialKind::Sni).collect();
    assert_eq!(sni.len(), 2, "{ev:#?}");
    assert_eq!(sni[0].name.as_deref(), Some("evil.test"));
}

#[test]
fn live_rule_replacement_applies_to_the_next_connection() {
    let lab = Lab::new(policy(POLICY));
    let r1 = lab.inside(|| {
        let _ = resolve("api.test");
        tcp_exchange("198.51.100.10:8080", HTTP_GET)
    });
    assert!(refused_fast(&r1), "{r1:?}");
    lab.handle.set_policy(policy(
        r#"{"rules":[{"action":"allow","domain":"api.test","ports":["8080"]}]}"#,
    ));
    let (r2, r3) = lab.inside(|| {
        (
            tcp_exchange("198.51.100.10:8080", HTTP_GET),
            tcp_exchange("198.51.100.10:80", HTTP_GET),
        )
    });
    assert_eq!(r2, Tcp::Answer("api-8080".into()));
    assert!(refused_fast(&r3), "port 80 is no longer allowed: {r3:?}");
    lab.handle.set_policy(policy(r#"{"rules":[]}"#));
    let (r4, dns) = lab.inside(|| {
        (
            tcp_exchange("198.51.100.10:8080", HTTP_GET),
            resolve("api.test"),
        )
    });
    assert!(refused_fast(&r4), "{r4:?}");
    assert_eq!(dns.0, ResponseCode::NXDomain);
}

#[test]
fn ipv6_is_off_not_a_way_around() {
    let lab = Lab::new(Policy::public_internet());
    let r = lab.inside(|| {
        std::net::TcpStream::connect_timeout(
            &"[2001:db8::10]:80".parse().unwrap(),
            Duration::from_secs(2),
        )
        .map(|_| ())
        .map_err(|e| e.kind())
    });
    assert!(r.is_err(), "{r:?}");
}

#[test]
fn connections_per_sandbox_are_bounded() {
    let limits = Limits {
        max_tcp: 2,
        ..Limits::default()
    };
    let lab = Lab::with_limits(policy(POLICY), limits);
    let (held, third) = lab.inside(|| {
        let _ = resolve("api.test");
        let a: std::net::SocketAddr = "198.51.100.10:80".parse().unwrap();
        let held: Vec<_> = (0..2)
            .map(|_| std::net::TcpStream::connect_timeout(&a, Duration::from_secs(3)).unwrap())
            .collect();
        let third = tcp_exchange("198.51.100.10:80", HTTP_GET);
        drop(held);
        (2, third)
    });
    assert_eq!(held, 2);
    assert!(refused_fast(&third), "{third:?}");
    assert!(lab
        .handle
        .take_events()
        .iter()
        .any(|d| d.kind == DenialKind::Limit));
}

#[test]
fn bulk_data_arrives_whole_before_the_close() {
    let lab = Lab::new(policy(
        r#"{"rules":[{"action":"allow","cidr":"198.51.100.10/32","ports":["9000"]}]}"#,
    ));
    // The server closes right after its last byte: the close must not
    // overtake the data still queued for the sandbox.
    let got = lab.inside(|| {
        (0..3)
            .map(|_| lab::bulk_download(16 << 20).map_err(|e| e.kind()))
            .collect::<Vec<_>>()
    });
    assert_eq!(got, vec![Ok(16 << 20); 3]);
}
