//! Starting `lockbox-helper` for a sandbox (see the protocol crate's
//! `launch` module for the contract) and watching helper processes exit.
//!
//! The helper is a separate executable started with std::process::Command
//! and no pre_exec hook: the library never forks the host to run its own
//! code and installs no SIGCHLD handler. Exits are observed with a pidfd.

use std::io::Write;
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::Duration;

use lockbox_protocol::{ErrorCode, LaunchSpec, LaunchStatus};
use tokio::io::AsyncBufReadExt;
use tokio::sync::watch;

use crate::error::{EngineError, Result};

/// How long a helper may take to report before we give up on it.
pub const LAUNCH_TIMEOUT: Duration = Duration::from_secs(30);

pub struct Launched {
    pub status: LaunchStatus,
    pub helper_pid: u32,
    /// The write end of the lifeline (non-detached only): dropping it tells
    /// the helper to tear the sandbox down.
    pub lifeline: Option<ChildStdin>,
    /// Becomes true when the helper process has exited.
    pub exited: watch::Receiver<bool>,
}

/// Kills and reaps the helper if launching is abandoned (error or the
/// caller's future dropped) before it succeeded.
struct KillGuard(Option<Child>);

impl Drop for KillGuard {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            // Reap off-thread: the helper may take a moment to die.
            std::thread::spawn(move || {
                let _ = c.wait();
            });
        }
    }
}

/// Environment passed to the helper: only what it needs, nothing of the
/// host's secrets.
fn helper_env(cmd: &mut Command) {
    cmd.env_clear();
    for k in ["PATH", "RUST_BACKTRACE", "LOCKBOX_LOG", "LOCKBOX_HOME"] {
        if let Some(v) = std::env::var_os(k) {
            cmd.env(k, v);
        }
    }
    if std::env::var_os("PATH").is_none() {
        cmd.env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
    }
}

pub async fn launch(helper: &Path, spec: &LaunchSpec) -> Result<Launched> {
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
    let lifeline = child.stdin.take();
    let stdout = child.stdout.take().expect("stdout is piped");
    let child_pid = child.id();
    let mut guard = KillGuard(Some(child));

    let pipe = tokio::net::unix::pipe::Receiver::from_owned_fd(OwnedFd::from(stdout))
        .map_err(|e| EngineError::io("status pipe", e))?;
    let mut line = String::new();
    let mut rd = tokio::io::BufReader::new(pipe);
    let read = tokio::time::timeout(LAUNCH_TIMEOUT, rd.read_line(&mut line)).await;
    let log_tail = || {
        std::fs::read_to_string(dir.join("helper.log"))
            .map(|s| {
                let t: Vec<&str> = s.lines().rev().take(5).collect();
                t.into_iter().rev().collect::<Vec<_>>().join(" | ")
            })
            .unwrap_or_default()
    };
    match read {
        Err(_) => {
            return Err(EngineError::new(
                ErrorCode::Timeout,
                format!(
                    "lockbox-helper did not report within {LAUNCH_TIMEOUT:?}; log: {}",
                    log_tail()
                ),
            ))
        }
        Ok(Err(e)) => return Err(EngineError::io("read helper status", e)),
        Ok(Ok(0)) => {
            return Err(EngineError::internal(format!(
                "lockbox-helper exited without a status; log: {}",
                log_tail()
            )))
        }
        Ok(Ok(_)) => {}
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
        status,
        helper_pid,
        lifeline,
        exited,
    })
}

fn pidfd_open(pid: u32) -> Option<OwnedFd> {
    // SAFETY: raw syscall; a non-negative result is a new fd we own.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::c_int, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: fresh fd from the kernel.
    Some(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Watches `pid` until it exits; reaps it when we own it as `child`.
/// Must run inside a tokio runtime.
pub fn watch_exit(pid: u32, child: Option<Child>) -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    let fd = pidfd_open(pid);
    tokio::spawn(async move {
        // SAFETY: the AsyncFd owns the pidfd, which stays open and unchanged
        // for its whole life.
        let afd = fd.and_then(|fd| unsafe {
            tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE).ok()
        });
        match afd {
            Some(afd) => {
                let _ = afd.readable().await;
            }
            None => {
                // No pidfd (old kernel or already gone): poll /proc.
                while crate::state::process_start_time(pid).is_some() {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        if let Some(mut c) = child {
            let _ = c.try_wait();
        }
        let _ = tx.send(true);
    });
    rx
}

/// Waits until `exited` is true or `d` passes; true if it exited.
pub async fn wait_exited(exited: &mut watch::Receiver<bool>, d: Duration) -> bool {
    tokio::time::timeout(d, exited.wait_for(|e| *e))
        .await
        .is_ok()
}

/// SIGKILL to a pid we verified by start time.
pub fn kill_verified(pid: u32, start: u64) {
    if pid != 0 && crate::state::process_start_time(pid) == Some(start) {
        // SAFETY: plain kill(2).
        unsafe {
            libc::kill(pid as i32, libc::SIGKILL);
        }
    }
}
