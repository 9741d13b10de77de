//! What an exec'd process holds and cannot reach, now that execs start
//! from the spawner (agent/src/spawner.rs) instead of a fork of the agent.

mod common;

use std::time::Duration;

use common::*;
use lockbox_protocol::*;

fn req(argv: &[&str]) -> ExecRequest {
    ExecRequest {
        argv: argv.iter().map(|s| s.to_string()).collect(),
        env: vec!["PATH=/bin".into()],
        ..Default::default()
    }
}

fn status_field(status: &str, name: &str) -> String {
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name}:")))
        .unwrap_or_else(|| panic!("{name} missing from {status}"))
        .trim()
        .to_string()
}

/// CHOWN DAC_OVERRIDE FOWNER FSETID KILL SETGID SETUID NET_BIND_SERVICE
/// AUDIT_WRITE: confine.rs's KEEP_CAPS.
const ROOT_CAPS: &str = "00000000200004fb";

#[tokio::test]
async fn exec_confinement_is_as_before() {
    let sb = Sandbox::launch("spawn-status", |_, _| {});
    assert!(sb.status.ok, "{:?}", sb.status);
    let mut c = sb.client().await;
    for (user, caps) in [(None, ROOT_CAPS), (Some("1000"), "0000000000000000")] {
        let mut q = req(&[
            "sh",
            "-c",
            "cat /proc/self/status; cat /proc/self/oom_score_adj; ulimit -c",
        ]);
        q.user = user.map(String::from);
        let r = c.exec_with(q, None).await;
        let out = r.out();
        // The agent's three filters, then the per-exec one (openat2).
        assert_eq!(status_field(&out, "Seccomp"), "2", "{out}");
        assert_eq!(status_field(&out, "Seccomp_filters"), "4", "{out}");
        assert_eq!(status_field(&out, "NoNewPrivs"), "1", "{out}");
        assert_eq!(status_field(&out, "CapEff"), caps, "{out}");
        assert_eq!(status_field(&out, "CapPrm"), caps, "{out}");
        assert_eq!(status_field(&out, "CapBnd"), ROOT_CAPS, "{out}");
        assert_eq!(status_field(&out, "CapAmb"), "0000000000000000", "{out}");
        // Nothing blocked or ignored (Rust ignores SIGPIPE in the agent).
        assert_eq!(status_field(&out, "SigBlk"), "0000000000000000", "{out}");
        assert_eq!(status_field(&out, "SigIgn"), "0000000000000000", "{out}");
        let tail: Vec<&str> = out.lines().rev().take(2).collect();
        assert_eq!(tail, ["0", "1000"], "core limit, OOM score: {out}");
    }
}

/// `pid ppid comm environ mem` for every process, where environ/mem say
/// whether this (root) workload could open that file (ptrace read and
/// attach checks).
const PROBE: &str = r#"for d in /proc/[0-9]*; do p=${d#/proc/}; [ "$p" = "$$" ] && continue;
set -- $(cat $d/stat 2>/dev/null) ; [ -n "$4" ] || continue
e=no; (exec 3<$d/environ) 2>/dev/null && e=yes
m=no; (exec 3<$d/mem) 2>/dev/null && m=yes
echo "$p $4 $2 $e $m"; done"#;

#[tokio::test]
async fn workloads_cannot_open_agent_or_spawner_memory() {
    let sb = Sandbox::launch("spawn-ptrace", |_, _| {});
    assert!(sb.status.ok, "{:?}", sb.status);
    let mut c = sb.client().await;
    // A sibling workload, as the control: same uid, dumpable, reachable.
    let bg = c.start(Message::Exec(req(&["sleep", "30"]))).await;
    // Probed until the sibling shows as `sleep` (was one probe after
    // 200 ms: a loaded machine may take longer to exec it).
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let out = loop {
        let out = c.exec_with(req(&["sh", "-c", PROBE]), None).await.out();
        if out.contains("(sleep)") || std::time::Instant::now() > deadline {
            break out;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let rows: Vec<Vec<&str>> = out.lines().map(|l| l.split(' ').collect()).collect();
    let agent = rows.iter().find(|r| r[0] == "1").expect("agent row");
    let spawners: Vec<_> = rows
        .iter()
        .filter(|r| r[1] == "1" && r[2] == agent[2])
        .collect();
    assert_eq!(
        spawners.len(),
        1,
        "one spawner, a child of the agent: {out}"
    );
    for row in [agent, spawners[0]] {
        assert_eq!(&row[3..], ["no", "no"], "{row:?} in {out}");
    }
    let sleep = rows.iter().find(|r| r[2] == "(sleep)").expect("sleep row");
    assert_eq!(sleep[1], "1", "workloads stay the agent's children: {out}");
    assert_eq!(&sleep[3..], ["yes", "yes"], "control: {out}");
    c.send(Frame::control(
        bg,
        &Message::Signal {
            signal: libc::SIGKILL,
        },
    ))
    .await;
    let r = c.wait(&[bg]).await.pop().unwrap();
    assert_eq!(r.exited().1, Some(libc::SIGKILL));
}

#[tokio::test]
async fn a_killed_spawner_is_replaced() {
    let sb = Sandbox::launch("spawn-kill", |_, _| {});
    assert!(sb.status.ok, "{:?}", sb.status);
    let mut c = sb.client().await;
    // The spawner: the agent's child with the agent's name. Root in the
    // sandbox keeps CAP_KILL, so it can end it.
    let find = "a=$(cut -d' ' -f2 /proc/1/stat); for d in /proc/[0-9]*; do set -- $(cat $d/stat 2>/dev/null); [ \"$4\" = 1 ] && [ \"$2\" = \"$a\" ] && echo ${d#/proc/}; done";
    let first = c.sh(find).await.out();
    assert_eq!(first.lines().count(), 1, "{first}");
    // From a process the spawner did not start at that moment: a command
    // that kills its own spawner before the spawner's reply is reported as
    // lost (it did start; whether it had is what the agent cannot know).
    let pid = first.trim();
    let r = c
        .sh(&format!(
            "(sleep 0.1; kill -9 {pid}) >/dev/null 2>&1 & \
             while [ -d /proc/{pid} ] && ! grep -q '^State:.*Z' /proc/{pid}/status 2>/dev/null; do sleep 0.02; done"
        ))
        .await;
    assert_eq!(r.exited().0, Some(0), "{r:?}");
    // The next exec finds it gone (or going: no receipt) and starts another.
    let r = c.exec_with(req(&["echo", "still"]), None).await;
    assert_eq!(r.out(), "still\n", "{r:?}");
    let second = c.sh(find).await.out();
    assert_eq!(second.lines().count(), 1, "{second}");
    assert_ne!(first, second, "a new spawner");
}
