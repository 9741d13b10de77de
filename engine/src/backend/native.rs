//! The native backend: `lockbox-helper` builds the sandbox with namespaces,
//! seccomp and Landlock on the host kernel and runs the agent as its PID 1
//! (see the protocol crate's `launch` module for the contract). The helper
//! makes the sandbox's cgroup; the agent listens on `agent.sock` in the
//! sandbox's directory.
//!
//! The helper is a separate executable started with std::process::Command
//! and no pre_exec hook: the library never forks the host to run its own
//! code and installs no SIGCHLD handler. Exits are observed with a pidfd.

use std::ffi::OsStr;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use lockbox_protocol::{LaunchSpec, RootfsSpec};

use super::process::{mono_ns, spawn_host_process, watch_exit, HostProcess, Started};
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
    let started = spawn_host_process(HostProcess {
        helper,
        args: &[OsStr::new("run"), launch_json.as_os_str()],
        dir,
        detached: spec.detached,
        who: "lockbox-helper",
        what: "sandbox",
        timeout: LAUNCH_TIMEOUT,
    })
    .await?;
    if tracing {
        let t_status = mono_ns();
        write_trace(
            &spec.id,
            &[
                ("engine_launch", t_launch),
                ("helper_spawned", started.spawned_ns),
                ("status_read", t_status),
            ],
        );
    }
    let Started {
        child,
        lifeline,
        status,
        ..
    } = started;
    let child_pid = child.id();
    let helper_pid = status.helper_pid.unwrap_or(child_pid);
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
