use lockbox_protocol::ErrorCode::InvalidArgument;

use super::*;
use crate::config::SandboxConfig;

fn cfg(json: &str) -> SandboxConfig {
    serde_json::from_str(json).unwrap()
}

const POLICY: &str = r#"{"rules":[{"action":"allow","domain":"api.example.com","ports":["443"]}]}"#;

fn with(extra: &str) -> SandboxConfig {
    cfg(&format!(r#"{{"network_policy": {POLICY}{extra}}}"#))
}

#[test]
fn a_bad_policy_is_refused_with_the_parsers_reason() {
    let e = check(&cfg(
        r#"{"network_policy": {"rules": [{"action": "allow", "domain": "*x.org"}]}}"#,
    ))
    .unwrap_err();
    assert_eq!(e.code, InvalidArgument);
    assert!(e.message.starts_with("network_policy: "), "{}", e.message);
    let e = check(&cfg(r#"{"network_policy": {"rules": [], "extra": 1}}"#)).unwrap_err();
    assert_eq!(e.code, InvalidArgument);
    check(&with("")).unwrap();
    // The same check runs in the plan's: nothing is made for a bad policy.
    assert!(crate::plan::check(&cfg(r#"{"network_policy": {"rules": 3}}"#)).is_err());
}

#[test]
fn a_policy_replaces_outbound() {
    let e = check(&with(r#", "network": "outbound""#)).unwrap_err();
    assert!(
        e.message.contains("either NetworkOutbound or a policy"),
        "{}",
        e.message
    );
    check(&with(r#", "network": "none""#)).unwrap();
}

#[test]
fn a_policy_takes_published_ports_up_to_a_bound() {
    check(&with(r#", "ports": [{"host": 8080, "guest": 80}]"#)).unwrap();
    let many: Vec<String> = (0..65)
        .map(|i| format!(r#"{{"host": {}, "guest": 80}}"#, 20000 + i))
        .collect();
    let e = check(&with(&format!(r#", "ports": [{}]"#, many.join(",")))).unwrap_err();
    assert_eq!(e.code, InvalidArgument);
    assert!(e.message.contains("at most 64"), "{}", e.message);
}

#[test]
fn secrets_need_a_policy_allowing_their_hosts_and_never_show_their_value() {
    let s = |hosts: &str| {
        format!(
            r#", "secrets": [{{"name": "API_KEY", "value": "sk-real-value", "hosts": {hosts}}}]"#
        )
    };
    check(&with(&s(r#"["api.example.com"]"#))).unwrap();
    let no_policy = cfg(
        r#"{"secrets": [{"name": "K", "value": "sk-real-value", "hosts": ["api.example.com"]}]}"#,
    );
    assert!(check(&no_policy)
        .unwrap_err()
        .message
        .contains("need a network policy"));
    for (hosts, why) in [
        (
            r#"["other.example.com"]"#,
            "not allowed by the network policy",
        ),
        (r#"["*.example.com"]"#, "exact"),
        (r#"["API.example.com"]"#, "exact"),
        ("[]", "hosts"),
    ] {
        let e = check(&with(&s(hosts))).unwrap_err();
        assert!(e.message.contains(why), "{hosts}: {}", e.message);
        assert!(!e.message.contains("sk-real-value"));
    }
    for bad in [
        r#", "secrets": [{"name": "1X", "value": "v", "hosts": ["api.example.com"]}]"#,
        r#", "secrets": [{"name": "K", "hosts": ["api.example.com"]}]"#,
        r#", "secrets": [{"name": "K", "value": "a\nb", "hosts": ["api.example.com"]}]"#,
        r#", "secrets": [{"name": "K", "value": "v", "hosts": ["api.example.com"]}, {"name": "K", "value": "w", "hosts": ["api.example.com"]}]"#,
    ] {
        assert_eq!(
            check(&with(bad)).unwrap_err().code,
            InvalidArgument,
            "{bad}"
        );
    }
    let c = with(&s(r#"["api.example.com"]"#));
    // Stored and echoed forms, and every Debug print, leave the value out.
    let stored = serde_json::to_string(&c.without_secret_values()).unwrap();
    assert!(
        !stored.contains("sk-real-value") && stored.contains("API_KEY"),
        "{stored}"
    );
    assert!(!format!("{c:?}").contains("sk-real-value"));
    let p = plan(&c).unwrap().unwrap();
    assert!(!format!("{p:?}").contains("sk-real-value"));
    // Control: the params form does carry it (the caller handed it in).
    assert!(serde_json::to_string(&c).unwrap().contains("sk-real-value"));
}

#[test]
fn placeholders_are_random_and_land_in_the_env_with_the_ca_variables() {
    let c = with(
        r#", "secrets": [{"name": "API_KEY", "value": "sk-real-value", "hosts": ["api.example.com"]}]"#,
    );
    let (a, b) = (plan(&c).unwrap().unwrap(), plan(&c).unwrap().unwrap());
    let ph = &a.secrets[0].placeholder;
    let hex = ph.strip_prefix(secrets::PLACEHOLDER_PREFIX).unwrap();
    assert_eq!(hex.len(), 32);
    assert!(hex.bytes().all(|b| b.is_ascii_hexdigit()));
    assert_ne!(ph, &b.secrets[0].placeholder);
    let env = env(&a);
    assert!(env.contains(&format!("API_KEY={ph}")));
    assert!(env.contains(&format!("SSL_CERT_FILE={}", secrets::CA_BUNDLE)));
    assert!(env.contains(&format!("NODE_EXTRA_CA_CERTS={}", secrets::CA_PEM)));
    assert!(env.iter().all(|e| !e.contains("sk-real-value")));
    // The plan's env (what config.json stores) has the placeholder only.
    let root = crate::plan::Root {
        layers: vec!["/l".into()],
        ..Default::default()
    };
    let p = crate::plan::sandbox(&c, "n", root).unwrap();
    assert!(p.network.forwarder);
    assert!(p
        .env
        .iter()
        .any(|e| e.starts_with("API_KEY=lockbox-secret-")));
    let json = serde_json::to_string(&p).unwrap();
    assert!(!json.contains("sk-real-value"), "{json}");
    // Without secrets: no CA variables.
    assert!(env_of_no_secrets().is_empty());
}

fn env_of_no_secrets() -> Vec<String> {
    env(&plan(&with("")).unwrap().unwrap())
}

#[test]
fn events_are_buffered_bounded_and_drops_counted() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("config.json"), "{}").unwrap();
    let ev = |i: u64| {
        serde_json::json!({"kind": "connect", "time_unix_ns": i, "protocol": "tcp",
            "ip": "10.0.0.1", "port": 80, "name": null, "rule": "default deny"})
    };
    let reply = serde_json::json!({"ok": true,
        "events": (0..events::BUFFER_CAP as u64 + 5).map(ev).collect::<Vec<_>>(),
        "counters": {"connections_allowed": 1, "connections_denied": 2, "dns_answered": 3,
            "dns_denied": 4, "dns_answers_refused": 5, "events_dropped": 7}});
    let c = events::absorb(d.path(), &reply);
    assert_eq!(c.dns_denied, 4);
    // The forwarder's 7 and this buffer's 5: every drop a reader can see.
    assert_eq!(c.events_dropped, 7 + 5);
    let got = events::take(d.path(), 10);
    assert_eq!(got.events.len(), 10);
    assert_eq!(got.events[0].time_unix_ns, 5, "the oldest went first");
    assert_eq!(got.dropped, 7 + 5);
    let rest = events::take(d.path(), 5000);
    assert_eq!(rest.events.len(), events::BUFFER_CAP - 10);
    assert_eq!(rest.dropped, 0);
    // The forwarder's cumulative count is not counted twice.
    events::absorb(
        d.path(),
        &serde_json::json!({"counters": {"connections_allowed": 0,
        "connections_denied": 0, "dns_answered": 0, "dns_denied": 0,
        "dns_answers_refused": 0, "events_dropped": 9}}),
    );
    assert_eq!(events::take(d.path(), 1).dropped, 2);
}
