//! The host process whose life is a sandbox's (the native helper; for a
//! microVM, the confined VMM's supervisor): watched with a pidfd, killed
//! only when its start time proves it is still the same process.

use std::os::fd::{FromRawFd, OwnedFd};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::Duration;

use lockbox_protocol::{ErrorCode, LaunchStatus};

use tokio::sync::watch;

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

/// Kills and reaps the spawned host process if launching is abandoned
/// (an error, or the caller's future dropped) before it succeeded; on
/// success the caller takes the `Child` out.
pub struct KillGuard(pub Option<Child>);

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

/// A status line is far smaller; the bound keeps a helper gone wrong from
/// growing the host process.
const MAX_STATUS_LINE: u64 = 1 << 20;

/// Reads the one status line a host process writes on its stdout when its
/// setup is done. A timeout, a read error or an exit before it are errors
/// naming `who` and the last lines of its log.
pub async fn read_status_line(
    stdout: std::process::ChildStdout,
    timeout: Duration,
    who: &str,
    log: &std::path::Path,
) -> crate::error::Result<String> {
    use crate::error::EngineError;
    use lockbox_protocol::ErrorCode;
    use tokio::io::{AsyncBufReadExt, AsyncReadExt};

    let pipe = tokio::net::unix::pipe::Receiver::from_owned_fd(OwnedFd::from(stdout))
        .map_err(|e| EngineError::io("status pipe", e))?;
    let mut rd = tokio::io::BufReader::new(pipe.take(MAX_STATUS_LINE));
    let mut line = String::new();
    let tail = || {
        std::fs::read_to_string(log)
            .map(|s| {
                let t: Vec<&str> = s.lines().rev().take(5).collect();
                t.into_iter().rev().collect::<Vec<_>>().join(" | ")
            })
            .unwrap_or_default()
    };
    match tokio::time::timeout(timeout, rd.read_line(&mut line)).await {
        Err(_) => Err(EngineError::new(
            ErrorCode::Timeout,
            format!("{who} did not report within {timeout:?}; log: {}", tail()),
        )),
        Ok(Err(e)) => Err(EngineError::io(format!("read {who} status"), e)),
        Ok(Ok(0)) => Err(EngineError::internal(format!(
            "{who} exited without a status; log: {}",
            tail()
        ))),
        Ok(Ok(_)) => Ok(line),
    }
}

/// Environment passed to a host process: only what it needs, nothing of
/// the host's secrets.
pub fn helper_env(cmd: &mut Command) {
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

/// A host process that reported a successful setup.
pub struct Started {
    pub child: Child,
    /// Its stdin: dropping it (the engine gone) tells it to end. None
    /// for a detached sandbox, which outlives the engine.
    pub lifeline: Option<ChildStdin>,
    pub status: LaunchStatus,
    /// CLOCK_MONOTONIC when it was started (LOCKBOX_TRACE's clock).
    pub spawned_ns: u64,
}

/// CLOCK_MONOTONIC in ns, the helper's trace clock (LOCKBOX_TRACE).
pub fn mono_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// What to start and how to speak of it.
pub struct HostProcess<'a> {
    pub helper: &'a Path,
    pub args: &'a [&'a std::ffi::OsStr],
    /// The sandbox's directory: `helper.log` (its stderr) lives there.
    pub dir: &'a Path,
    pub detached: bool,
    /// The process in errors ("lockbox-helper vmm").
    pub who: &'a str,
    /// What a failed setup was ("sandbox", "microvm").
    pub what: &'a str,
    pub timeout: Duration,
}

/// Starts the helper with its stderr in `helper.log`, waits for its one
/// status line and decodes it; a status that is not ok becomes the error
/// it names. On any error the process is killed and reaped.
pub async fn spawn_host_process(p: HostProcess<'_>) -> crate::error::Result<Started> {
    let HostProcess {
        helper,
        args,
        dir,
        detached,
        who,
        what,
        timeout,
    } = p;
    use crate::error::EngineError;
    let log_path = dir.join("helper.log");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(|e| EngineError::io("helper.log", e))?;
    let mut cmd = Command::new(helper);
    cmd.args(args);
    helper_env(&mut cmd);
    cmd.stdin(if detached {
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
    let spawned_ns = mono_ns();
    let lifeline = child.stdin.take();
    let stdout = child.stdout.take().expect("stdout is piped");
    let mut guard = KillGuard(Some(child));
    let line = read_status_line(stdout, timeout, who, &log_path).await?;
    let status: LaunchStatus = serde_json::from_str(line.trim()).map_err(|e| {
        EngineError::internal(format!("bad status from {who} ({e}): {}", line.trim()))
    })?;
    if !status.ok {
        let code = status.code.unwrap_or(ErrorCode::Internal);
        let msg = status
            .error
            .clone()
            .unwrap_or_else(|| format!("{what} setup failed"));
        return Err(EngineError::new(
            code,
            format!("{what} setup failed: {msg}"),
        ));
    }
    Ok(Started {
        child: guard.0.take().expect("held until success"),
        lifeline,
        status,
        spawned_ns,
    })
}
