//! The forwarder as its own process (`lockbox-net`), as the helper will
//! run it: started in the host-side namespace with the sandbox's tap fd,
//! driven over a control socket, unprivileged once running.

mod lab;

use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use lab::{refused_fast, resolve, tcp_exchange, Tcp, Topology, HTTP_GET};
use serde_json::{json, Value};

fn ask(w: &mut UnixStream, r: &mut BufReader<UnixStream>, msg: Value) -> Value {
    writeln!(w, "{msg}").unwrap();
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    serde_json::from_str(&line).unwrap()
}

/// Starts `lockbox-net` in the topology's outside namespace, as the
/// helper does; stderr is kept for the tests that read it.
fn spawn_daemon(net: &Topology, tap: OwnedFd) -> (Child, UnixStream, BufReader<UnixStream>) {
    let (ours, theirs) = UnixStream::pair().unwrap();
    let (tap_fd, ctl_fd) = (tap.as_raw_fd(), theirs.as_raw_fd());
    let mut cmd = Command::new("ip");
    cmd.args([
        "netns",
        "exec",
        &net.outside,
        env!("CARGO_BIN_EXE_lockbox-net"),
    ])
    .args([
        "--tap-fd",
        &tap_fd.to_string(),
        "--control-fd",
        &ctl_fd.to_string(),
    ])
    .stderr(Stdio::piped());
    // SAFETY: only fcntl between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            for fd in [tap_fd, ctl_fd] {
                if libc::fcntl(fd, libc::F_SETFD, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let child = cmd.spawn().unwrap();
    drop(tap);
    drop(theirs);
    let reader = BufReader::new(ours.try_clone().unwrap());
    ours.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    reader
        .get_ref()
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    (child, ours, reader)
}

#[test]
fn the_daemon_enforces_takes_orders_and_runs_unprivileged() {
    let (net, tap) = Topology::new();
    let (mut child, mut ours, mut reader) = spawn_daemon(&net, tap);

    let start = json!({
        "gateway": "10.0.2.2",
        "prefix_len": 24,
        "upstream_dns": lab::DNS_SERVER,
        "host_addrs": ["198.51.100.1", "10.77.0.1"],
        "policy": {"rules": [{"action": "allow", "domain": "api.test", "ports": ["80"]}]},
    });
    assert_eq!(ask(&mut ours, &mut reader, start), json!({"ok": true}));

    // It gave up root: no uid 0, no capabilities, no_new_privs.
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap();
    let field = |k: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(k))
            .unwrap()
            .split_whitespace()
            .collect::<Vec<_>>()
    };
    let uid = lockbox_net::daemon::FORWARDER_UID.to_string();
    assert_eq!(field("Uid:"), [uid.as_str(); 4], "{status}");
    assert_eq!(field("CapEff:"), ["0000000000000000"]);
    assert_eq!(field("NoNewPrivs:"), ["1"]);

    let (ok80, no8080) = net.inside(|| {
        let _ = resolve("api.test");
        (
            tcp_exchange("198.51.100.10:80", HTTP_GET),
            tcp_exchange("198.51.100.10:8080", HTTP_GET),
        )
    });
    assert_eq!(ok80, Tcp::Answer("api".into()));
    assert!(refused_fast(&no8080), "{no8080:?}");

    let ev = ask(&mut ours, &mut reader, json!({"op": "events"}));
    assert_eq!(ev["ok"], true);
    let events = ev["events"].as_array().unwrap();
    assert_eq!(events.len(), 1, "{ev}");
    assert_eq!(events[0]["kind"], "connect");
    assert_eq!(events[0]["port"], 8080);
    assert_eq!(events[0]["name"], "api.test");
    assert_eq!(ev["counters"]["connections_denied"], 1);

    let set = json!({"op": "set_policy", "policy": {"rules": [{"action": "allow", "domain": "api.test", "ports": ["8080"]}]}});
    assert_eq!(ask(&mut ours, &mut reader, set), json!({"ok": true}));
    let now8080 = net.inside(|| tcp_exchange("198.51.100.10:8080", HTTP_GET));
    assert_eq!(now8080, Tcp::Answer("api-8080".into()));

    let bad = ask(
        &mut ours,
        &mut reader,
        json!({"op": "set_policy", "policy": {"rules": [{"action": "allow"}]}}),
    );
    assert_eq!(bad["ok"], false);
    assert_eq!(
        ask(&mut ours, &mut reader, json!({"op": "reboot"}))["ok"],
        false
    );

    // Closing the control socket stops it.
    drop(ours);
    drop(reader);
    let t0 = Instant::now();
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            assert!(s.success(), "{s:?}");
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "lockbox-net did not stop"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

const PLACEHOLDER: &str = "lockbox-secret-00112233445566778899aabbccddeeff";

fn start_with_secrets(secrets: Value) -> Value {
    json!({
        "gateway": "10.0.2.2",
        "prefix_len": 24,
        "upstream_dns": lab::DNS_SERVER,
        "host_addrs": ["198.51.100.1", "10.77.0.1"],
        "policy": {"rules": [{"action": "allow", "domain": "api.test", "ports": ["443"]}]},
        "secrets": secrets,
        "upstream_roots_pem": lab::https::pki().ca_pem,
    })
}

#[test]
fn the_daemon_answers_secrets_with_its_ca_and_substitutes() {
    let (net, tap) = Topology::new();
    let (mut child, mut ours, mut reader) = spawn_daemon(&net, tap);
    let secrets =
        json!([{"placeholder": PLACEHOLDER, "value": "sk-daemon", "hosts": ["api.test"]}]);
    let reply = ask(&mut ours, &mut reader, start_with_secrets(secrets));
    assert_eq!(reply["ok"], true, "{reply}");
    let ca = reply["ca_pem"].as_str().unwrap().to_string();
    assert!(ca.starts_with("-----BEGIN CERTIFICATE-----"), "{ca}");
    // Holding secrets, it cannot be dumped or traced by its own uid: its
    // /proc files stay root's.
    let st = std::fs::metadata(format!("/proc/{}/environ", child.id())).unwrap();
    assert_eq!(std::os::unix::fs::MetadataExt::uid(&st), 0);

    let got = net.inside(move || {
        let _ = resolve("api.test");
        let mut c = lab::https::connect("198.51.100.10:443", "api.test", &[&ca]).unwrap();
        let req = format!(
            "GET / HTTP/1.1\r\nHost: api.test\r\nAuthorization: Bearer {PLACEHOLDER}\r\n\r\n"
        );
        lab::https::roundtrip(&mut c, req.as_bytes()).unwrap()
    });
    assert_eq!(got, "ok api-tls");
    let log = net.https_log.lock().unwrap().clone();
    assert_eq!(log.len(), 1);
    assert!(
        log[0].1.contains("Authorization: Bearer sk-daemon\r\n"),
        "{}",
        log[0].1
    );
    let ev = ask(&mut ours, &mut reader, json!({"op": "events"}));
    assert_eq!(ev["counters"]["secrets_substituted"], 1, "{ev}");
    drop(ours);
    drop(reader);
    assert!(child.wait().unwrap().success());
}

#[test]
fn a_bad_secret_stops_the_daemon_without_naming_its_value() {
    for (secrets, why) in [
        (
            json!([{"placeholder": "lockbox-secret-xyz", "value": "sk-leak-1", "hosts": ["api.test"]}]),
            "placeholder",
        ),
        (
            json!([{"placeholder": PLACEHOLDER, "value": "sk-leak-2\r\nX: y", "hosts": ["api.test"]}]),
            "control character",
        ),
        (
            json!([{"placeholder": PLACEHOLDER, "value": "sk-leak-3", "hosts": ["a b"]}]),
            "host",
        ),
        (
            json!([{"placeholder": PLACEHOLDER, "value": "sk-leak-4", "hosts": "api.test"}]),
            "bad start line",
        ),
    ] {
        let (net, tap) = Topology::new();
        let (mut child, mut ours, mut reader) = spawn_daemon(&net, tap);
        writeln!(ours, "{}", start_with_secrets(secrets)).unwrap();
        let mut line = String::new();
        assert_eq!(reader.read_line(&mut line).unwrap(), 0, "no reply: {line}");
        let mut err = String::new();
        std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
        assert!(!child.wait().unwrap().success());
        assert!(err.contains(why), "{err}");
        assert!(!err.contains("sk-leak"), "{err}");
    }
    // Control: the same line with a good secret is accepted.
    let (net, tap) = Topology::new();
    let (mut child, mut ours, mut reader) = spawn_daemon(&net, tap);
    let good = json!([{"placeholder": PLACEHOLDER, "value": "sk-ok", "hosts": ["api.test"]}]);
    assert_eq!(
        ask(&mut ours, &mut reader, start_with_secrets(good))["ok"],
        true
    );
    drop(ours);
    drop(reader);
    assert!(child.wait().unwrap().success());
}
