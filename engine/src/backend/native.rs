//! The native backend: `lockbox-helper` builds the sandbox with namespaces,
//! seccomp and Landlock on the host kernel and runs the agent as its PID 1
//! (see the protocol crate's `launch` module for the contract). The helper
//! makes the sandbox's cgroup; the agent listens on `agent.sock` in the
//! sandbox's directory.
//!
//! The helper is a separate executable started with std::process::Command
//! and no pre_exec hook: the library never forks the host to run its own
//! code and installs no SIGCHLD handler. Exits are observed with a pidfd.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use lockbox_protocol::{ErrorCode, LaunchSpec, LaunchStatus, RootfsSpec};

use super::process::{read_status_line, watch_exit, KillGuard};
use super::{Backend, BackendInfo, BoxFuture, LaunchRequest, Launched};
use crate::error::{EngineError, Result};

/// How long a helper may take to report before we give up on it.
pub const LAUNCH_TIMEOUT: Duration = Duration::from_secs(30);

pub(crate) struct Native {
    /// Found on first use (next to the loaded library, or
    /// `LOCKBOX_HELPER`), then kept.
    helper: OnceLock<PathBuf>,
}

impl Native {
    pub(crate) const fn new() -> Native {
        Native {
            helper: OnceLock::new(),
        }
    }

    fn helper(&self) -> Result<PathBuf> {
        if let Some(p) = self.helper.get() {
            return Ok(p.clone());
        }
        let p = crate::paths::find_helper()?;
        Ok(self.helper.get_or_init(|| p).clone())
    }
}

impl Backend for Native {
    fn info(&self) -> BackendInfo {
        BackendInfo {
            kind: super::NATIVE.into(),
            boundary: "host kernel: namespaces, seccomp, Landlock, cgroup limits".into(),
        }
    }

    fn launch<'a>(&'a self, req: LaunchRequest<'a>) -> BoxFuture<'a, Result<Launched>> {
        Box::pin(async move {
            let helper = self.helper()?;
            let spec = launch_spec(&req)?;
            launch(&helper, &spec).await
        })
    }
}

/// The helper's spec for a plan: the plan plus where, in the sandbox's
/// directory, the writable layer and the agent socket go.
fn launch_spec(req: &LaunchRequest<'_>) -> Result<LaunchSpec> {
    let (upper, work) = (req.dir.join("upper"), req.dir.join("work"));
    for d in [&upper, &work] {
        std::fs::create_dir(d).map_err(|e| EngineError::io(d.display(), e))?;
    }
    let s = |p: &Path| p.to_string_lossy().into_owned();
    let p = req.plan;
    Ok(LaunchSpec {
        name: p.name.clone(),
        id: req.id.to_string(),
        dir: s(req.dir),
        socket_path: s(&req.dir.join("agent.sock")),
        rootfs: RootfsSpec {
            lower: p.layers.clone(),
            upper: s(&upper),
            work: s(&work),
        },
        hostname: p.hostname.clone(),
        env: p.env.clone(),
        workdir: p.workdir.clone(),
        user: p.user.clone(),
        mounts: req.mounts.clone(),
        limits: p.limits.clone(),
        network: p.network.clone(),
        detached: p.detached,
    })
}

/// Environment passed to the helper: only what it needs, nothing of the
/// host's secrets.
fn helper_env(cmd: &mut Command) {
    cmd.env_clear();
    for k in [
        "PATH",
        "RUST_BACKTRACE",
        "LOCKBOX_LOG",
        "LOCKBOX_HOME",
        "LOCKBOX_TRACE",
    ] {
        if let Some(v) = std::env::var_os(k) {
            cmd.env(k, v);
        }
    }
    if std::env::var_os("PATH").is_none() {
        cmd.env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
    }
}

/// CLOCK_MONOTONIC in ns, the helper's trace clock (LOCKBOX_TRACE).
fn mono_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// With LOCKBOX_TRACE=<absolute file> (a benchmark's debug switch), the
/// engine's side of a launch's timeline goes to the file the helper
/// appends its setup steps to; see the helper's setup/trace.rs.
fn write_trace(id: &str, marks: &[(&str, u64)]) {
    let Some(path) = std::env::var_os("LOCKBOX_TRACE").map(PathBuf::from) else {
        return;
    };
    if !path.is_absolute() {
        return;
    }
    use std::os::unix::fs::OpenOptionsExt;
    let line = serde_json::json!({"id": id, "who": "engine", "marks": marks});
    let mut bytes = serde_json::to_vec(&line).unwrap_or_default();
    bytes.push(b'\n');
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
    {
        let _ = f.write_all(&bytes);
    }
}

async fn launch(helper: &Path, spec: &LaunchSpec) -> Result<Launched> {
    let tracing = std::env::var_os("LOCKBOX_TRACE").is_some();
    let t_launch = if tracing { mono_ns() } else { 0 };
    let dir = Path::new(&spec.dir);
    let launch_json = dir.join("launch.json");
    let bytes = serde_json::to_vec(spec)
        .map_err(|e| EngineError::internal(format!("encode launch spec: {e}")))?;
    // Transient and re-creatable: no fsync needed on this one.
    std::fs::File::create(&launch_json)
        .and_then(|mut f| f.write_all(&bytes))
        .map_err(|e| EngineError::io(launch_json.display(), e))?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("helper.log"))
        .map_err(|e| EngineError::io("helper.log", e))?;

    let mut cmd = Command::new(helper);
    cmd.arg("run").arg(&launch_json);
    helper_env(&mut cmd);
    cmd.stdin(if spec.detached {
        Stdio::null()
    } else {
        Stdio::piped()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::from(log))
    .current_dir("/");
    let mut child = cmd
        .spawn()
        .map_err(|e| EngineError::io(format!("start {}", helper.display()), e))?;
    let t_spawned = if tracing { mono_ns() } else { 0 };
    let lifeline = child.stdin.take();
    let stdout = child.stdout.take().expect("stdout is piped");
    let child_pid = child.id();
    let mut guard = KillGuard(Some(child));

    let line = read_status_line(
        stdout,
        LAUNCH_TIMEOUT,
        "lockbox-helper",
        &dir.join("helper.log"),
    )
    .await?;
    if tracing {
        let t_status = mono_ns();
        write_trace(
            &spec.id,
            &[
                ("engine_launch", t_launch),
                ("helper_spawned", t_spawned),
                ("status_read", t_status),
            ],
        );
    }
    let status: LaunchStatus = serde_json::from_str(line.trim()).map_err(|e| {
        EngineError::internal(format!(
            "bad status from lockbox-helper ({e}): {}",
            line.trim()
        ))
    })?;
    if !status.ok {
        let code = status.code.unwrap_or(ErrorCode::Internal);
        let msg = status
            .error
            .clone()
            .unwrap_or_else(|| "sandbox setup failed".into());
        return Err(EngineError::new(
            code,
            format!("sandbox setup failed: {msg}"),
        ));
    }
    let helper_pid = status.helper_pid.unwrap_or(child_pid);
    let child = guard.0.take().expect("child held until success");
    // Our direct child is reaped when it exits; the supervising helper (the
    // same process unless the helper re-parents itself) is watched.
    let child_exit = watch_exit(child_pid, Some(child));
    let exited = if helper_pid == child_pid {
        child_exit
    } else {
        watch_exit(helper_pid, None)
    };
    Ok(Launched {
        pid: helper_pid,
        report: status.report.unwrap_or_default(),
        lifeline,
        exited,
    })
}
