//! The forwarder as its own process (`lockbox-net`), as the helper will
//! run it: started in the host-side namespace with the sandbox's tap fd,
//! driven over a control socket, unprivileged once running.

mod lab;

use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::{Duration, Instant};

use lab::{refused_fast, resolve, tcp_exchange, Tcp, Topology, HTTP_GET};
use serde_json::{json, Value};

fn ask(w: &mut UnixStream, r: &mut BufReader<UnixStream>, msg: Value) -> Value {
    writeln!(w, "{msg}").unwrap();
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    serde_json::from_str(&line).unwrap()
}

#[test]
fn the_daemon_enforces_takes_orders_and_runs_unprivileged() {
    let (net, tap) = Topology::new();
    let (mut ours, theirs) = UnixStream::pair().unwrap();
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
    ]);
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
    let mut child = cmd.spawn().unwrap();
    drop(tap);
    drop(theirs);
    let mut reader = BufReader::new(ours.try_clone().unwrap());
    ours.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    reader
        .get_ref()
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();

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
    assert_eq!(field("Uid:"), ["65534"; 4], "{status}");
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
            t0.elapsed() < Duration::from_secs(5),
            "lockbox-net did not stop"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
