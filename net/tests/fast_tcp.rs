//! The fast TCP path (forwarder/redirect.rs): the sandbox's TCP is
//! redirected by an nftables table in its namespace to a listener the
//! forwarder holds. What is new there: the rule cannot be changed without
//! CAP_NET_ADMIN in that namespace, a connection made straight to the
//! listener is refused, and TCP still works (under the same rules) when
//! no rule redirects it. Needs root.

mod lab;

use std::process::Command;

use lab::{refused_fast, tcp_exchange, Lab, Tcp, HTTP_GET};
use lockbox_net::events::DenialKind;
use lockbox_net::policy::Policy;

/// Opens more than any rule in the other tests: even loopback by CIDR.
const WIDE: &str = r#"{"rules":[
  {"action":"allow","cidr":"198.51.100.10/32"},
  {"action":"allow","cidr":"127.0.0.0/8"}
]}"#;

/// The listening sockets on 127.0.0.1 in the calling thread's namespace.
fn loopback_listeners() -> Vec<u16> {
    let t = std::fs::read_to_string("/proc/thread-self/net/tcp").unwrap();
    t.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let local = f.get(1)?.strip_prefix("0100007F:")?;
            (f.get(3) == Some(&"0A")).then(|| u16::from_str_radix(local, 16).unwrap())
        })
        .collect()
}

#[test]
fn a_connection_straight_to_the_listener_is_refused() {
    let lab = Lab::new(Policy::from_json(WIDE).unwrap());
    let (control, ports, straight) = lab.inside(|| {
        let control = tcp_exchange("198.51.100.10:80", HTTP_GET);
        let ports = loopback_listeners();
        let straight: Vec<Tcp> = ports
            .iter()
            .map(|p| tcp_exchange(&format!("127.0.0.1:{p}"), HTTP_GET))
            .collect();
        (control, ports, straight)
    });
    assert_eq!(
        control,
        Tcp::Answer("api".into()),
        "the redirected path works"
    );
    assert_eq!(ports.len(), 1, "one listener inside: {ports:?}");
    assert!(refused_fast(&straight[0]), "{straight:?}");
    let ev = lab.handle.take_events();
    let d = ev
        .iter()
        .find(|d| d.kind == DenialKind::Connect && d.port == Some(ports[0]))
        .unwrap_or_else(|| panic!("{ev:#?}"));
    assert_eq!(d.ip, Some("127.0.0.1".parse().unwrap()));
    assert!(d.rule.contains("redirect listener"), "{}", d.rule);
}

/// `nft` in the sandbox's namespace, run as root without CAP_NET_ADMIN
/// (dropped from the inheritable and bounding sets before exec, so the
/// new program never has it): what a sandbox process is.
fn nft_without_net_admin(ns: &str, args: &[&str]) -> std::process::Output {
    Command::new("ip")
        .args(["netns", "exec", ns, "setpriv"])
        .args(["--inh-caps=-net_admin", "--bounding-set=-net_admin", "nft"])
        .args(args)
        .output()
        .unwrap()
}

fn table_present(ns: &str) -> bool {
    Command::new("ip")
        .args(["netns", "exec", ns, "nft", "list", "table", "ip"])
        .arg(lockbox_net::forwarder::REDIRECT_TABLE)
        .output()
        .unwrap()
        .status
        .success()
}

#[test]
fn the_rule_cannot_be_changed_without_cap_net_admin() {
    let lab = Lab::new(Policy::from_json(WIDE).unwrap());
    let ns = lab.sandbox.clone();
    assert!(table_present(&ns));
    for args in [
        &["flush", "ruleset"][..],
        &[
            "delete",
            "table",
            "ip",
            lockbox_net::forwarder::REDIRECT_TABLE,
        ],
        &[
            "add",
            "rule",
            "ip",
            lockbox_net::forwarder::REDIRECT_TABLE,
            "out",
            "accept",
        ],
    ] {
        let out = nft_without_net_admin(&ns, args);
        assert!(
            !out.status.success(),
            "nft {args:?} worked without CAP_NET_ADMIN"
        );
    }
    assert!(table_present(&ns), "the table survived");
    let before = lab.inside(|| tcp_exchange("198.51.100.10:80", HTTP_GET));
    assert_eq!(before, Tcp::Answer("api".into()));
    let redirected = lab.handle.counters().connections_allowed;
    // The control: with the capability the same command removes it, and
    // the test would see that.
    let out = Command::new("ip")
        .args(["netns", "exec", &ns, "nft", "flush", "ruleset"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(!table_present(&ns), "control: a flush is detected");
    // Without the rule TCP goes through the tap, still decided: an
    // allowed destination answers, a denied one is refused.
    let (after, denied) = lab.inside(|| {
        (
            tcp_exchange("198.51.100.10:80", HTTP_GET),
            tcp_exchange("198.51.100.11:80", HTTP_GET),
        )
    });
    assert_eq!(after, Tcp::Answer("api".into()));
    assert!(refused_fast(&denied), "{denied:?}");
    assert!(lab.handle.counters().connections_allowed > redirected);
}

#[test]
fn the_listener_is_made_with_the_rule() {
    // The ruleset the helper installs is the one loaded here.
    let lab = Lab::new(Policy::from_json(WIDE).unwrap());
    let out = Command::new("ip")
        .args(["netns", "exec", &lab.sandbox, "nft", "list", "ruleset"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let port = lab.inside(loopback_listeners)[0];
    assert!(text.contains(&format!("redirect to :{port}")), "{text}");
    assert!(text.contains("oifname \"lo\" return"), "{text}");
}
