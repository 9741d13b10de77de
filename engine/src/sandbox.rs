//! One sandbox as seen from the engine: its stored config and state, its
//! agent connection, and the lifecycle operations on it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ChildStdin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use lockbox_protocol::{ExecRequest, Message, NotEnforced};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::client::AgentClient;
use crate::config::SandboxConfig;
use crate::error::{EngineError, Result};
use crate::exec::{ExecOutput, ExecProcess};
use crate::launcher::{kill_verified, wait_exited};
use crate::metrics::Metrics;
use crate::state::{DirLock, SandboxState};

/// `config.json`: what was asked for plus what it resolved to.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StoredConfig {
    pub id: String,
    pub name: String,
    pub config: SandboxConfig,
    pub lower: Vec<String>,
    pub env: Vec<String>,
    pub workdir: String,
    pub uid: u32,
    pub gid: u32,
    pub created_unix: i64,
    /// The image it was made from (absent for a rootfs directory, a dev
    /// tree image, and configs written before it was recorded).
    #[serde(default)]
    pub image: Option<ImageUsed>,
}

/// The store image a sandbox was made from and its default command.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageUsed {
    /// `sha256:<hex>`: what the image store's in-use scan protects.
    pub digest: String,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
}

/// What `Info` returns.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SandboxInfo {
    pub name: String,
    pub id: String,
    /// "running" or "stopped".
    pub status: String,
    pub image: Option<String>,
    pub rootfs: Option<String>,
    pub detached: bool,
    pub labels: BTreeMap<String, String>,
    pub created_unix: i64,
    pub helper_pid: u32,
    pub enforced: Vec<String>,
    pub not_enforced: Vec<NotEnforced>,
    pub config: SandboxConfig,
    pub dir: String,
    /// Digest and default command (entrypoint + cmd) of the image.
    pub image_used: Option<ImageUsed>,
    /// The writable layer's budget in MiB; `None`: no budget (disk_mib 0).
    #[serde(default)]
    pub disk_mib: Option<u64>,
    /// Why the sandbox's state could not be read (status "damaged"): its
    /// files are kept until it is removed explicitly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Default grace period between the polite stop and SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(5);

pub struct Sandbox {
    pub name: String,
    pub dir: PathBuf,
    pub stored: StoredConfig,
    pub(crate) state: Mutex<SandboxState>,
    pub(crate) client: Mutex<Option<AgentClient>>,
    /// Held while this process owns a non-detached sandbox.
    pub(crate) lifeline: Mutex<Option<ChildStdin>>,
    pub(crate) lock: Mutex<Option<DirLock>>,
    pub(crate) exited: Mutex<Option<watch::Receiver<bool>>>,
    pub(crate) removed: AtomicBool,
    /// Open handles (C ABI handles) on this object; guarded by the engine's
    /// open-sandbox table lock. The last one closing stops a non-detached
    /// sandbox.
    pub(crate) handles: std::sync::atomic::AtomicUsize,
}

impl Sandbox {
    pub fn id(&self) -> &str {
        &self.stored.id
    }

    /// Whether this sandbox's directory no longer holds it: another
    /// process removed it (or replaced it under the same name).
    fn removed_elsewhere(&self) -> bool {
        let p = self.dir.join("config.json");
        match std::fs::symlink_metadata(&p) {
            Err(e) => e.kind() == std::io::ErrorKind::NotFound,
            Ok(_) => crate::state::read_json::<StoredConfig>(&p)
                .map(|c| c.id != self.stored.id)
                .unwrap_or(false),
        }
    }

    fn connection_lost(&self) -> bool {
        self.client
            .lock()
            .map(|c| c.as_ref().is_none_or(|c| c.is_closed()))
            .unwrap_or(false)
    }

    fn check_not_removed(&self) -> Result<()> {
        // Another process's removal kills the helper under us: the lost
        // connection is then reported as the removal it is, not as a
        // connection error. The disk is only looked at once the connection
        // is gone, so calls on a live sandbox cost nothing more.
        if !self.removed.load(Ordering::Acquire)
            && self.connection_lost()
            && self.removed_elsewhere()
        {
            self.removed.store(true, Ordering::Release);
        }
        if self.removed.load(Ordering::Acquire) {
            return Err(EngineError::not_found(format!(
                "sandbox {:?} was removed",
                self.name
            )));
        }
        Ok(())
    }

    /// The live agent connection whose file requests act as `user`
    /// ("uid", "uid:gid" or a name from the image) instead of the
    /// sandbox's configured user; `None`: the configured user.
    pub fn client_as(&self, user: Option<&str>) -> Result<AgentClient> {
        let c = self.client()?;
        match user {
            None => Ok(c),
            Some(u) => {
                let (uid, gid) = crate::config::resolve_user(u, &self.stored.lower)?;
                Ok(c.as_user(uid, gid))
            }
        }
    }

    /// The live agent connection, or `unavailable`.
    pub fn client(&self) -> Result<AgentClient> {
        self.check_not_removed()?;
        let c = self
            .client
            .lock()
            .map_err(|_| EngineError::internal("poisoned"))?;
        match c.as_ref() {
            Some(c) if !c.is_closed() => Ok(c.clone()),
            _ => Err(EngineError::unavailable(format!(
                "sandbox {:?} is not running",
                self.name
            ))),
        }
    }

    pub fn state(&self) -> SandboxState {
        self.state.lock().map(|s| s.clone()).unwrap_or_default()
    }

    pub fn is_running(&self) -> bool {
        !self.removed.load(Ordering::Acquire)
            && self.client().is_ok()
            && self.state().helper_alive()
    }

    pub fn info(&self) -> Result<SandboxInfo> {
        self.check_not_removed()?;
        Ok(info_from(
            &self.stored,
            &self.state(),
            &self.dir,
            self.is_running(),
        ))
    }

    pub fn metrics(&self) -> Result<Metrics> {
        self.check_not_removed()?;
        if !self.is_running() {
            return Err(EngineError::unavailable(format!(
                "sandbox {:?} is not running",
                self.name
            )));
        }
        crate::metrics::read(&self.state().report.cgroup)
    }

    /// Fills in the sandbox defaults (env, cwd, user) for an exec.
    pub fn exec_request(&self, o: &ExecOptions) -> Result<ExecRequest> {
        if o.argv.is_empty() || o.argv[0].is_empty() {
            return Err(EngineError::invalid("exec needs a program name"));
        }
        for a in &o.argv {
            if a.contains('\0') {
                return Err(EngineError::invalid("an argument contains a NUL byte"));
            }
        }
        crate::config::check_env_list("exec env", &o.env)?;
        let env = merge_env("exec env", &self.stored.env, &o.env)?;
        let (uid, gid) = match &o.user {
            Some(u) => crate::config::resolve_user(u, &self.stored.lower)?,
            None => (self.stored.uid, self.stored.gid),
        };
        let cwd = match &o.cwd {
            Some(c) => crate::config::guest_path("exec dir", c)?,
            None => self.stored.workdir.clone(),
        };
        if o.timeout_ms == Some(0) {
            return Err(EngineError::invalid("exec timeout must be positive"));
        }
        Ok(ExecRequest {
            argv: o.argv.clone(),
            env,
            cwd: Some(cwd),
            uid: Some(uid),
            gid: Some(gid),
            tty: o.tty,
            timeout_ms: o.timeout_ms,
            stdin: o.stdin,
            rows: o.rows,
            cols: o.cols,
        })
    }

    /// An operation that failed because the agent connection went away
    /// fails as not_found when the sandbox was removed meanwhile.
    pub fn gone(&self, e: EngineError) -> EngineError {
        if e.code != lockbox_protocol::ErrorCode::Unavailable {
            return e;
        }
        self.check_not_removed().err().unwrap_or(e)
    }

    pub async fn exec_start(&self, o: &ExecOptions) -> Result<ExecProcess> {
        let req = self.exec_request(o)?;
        ExecProcess::start(&self.client()?, req)
            .await
            .map_err(|e| self.gone(e))
    }

    pub async fn exec_collect(
        &self,
        o: &ExecOptions,
        stdin: Option<Vec<u8>>,
    ) -> Result<ExecOutput> {
        let req = self.exec_request(o)?;
        crate::exec::run_collect(&self.client()?, req, stdin)
            .await
            .map_err(|e| self.gone(e))
    }

    fn exited_rx(&self) -> Option<watch::Receiver<bool>> {
        self.exited.lock().ok().and_then(|e| e.clone())
    }

    async fn wait_helper_exit(&self, d: Duration) -> bool {
        match self.exited_rx() {
            Some(mut rx) => wait_exited(&mut rx, d).await,
            None => {
                let st = self.state();
                let deadline = tokio::time::Instant::now() + d;
                while st.helper_alive() {
                    if tokio::time::Instant::now() >= deadline {
                        return false;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                true
            }
        }
    }

    /// Graceful stop: ask the agent to end everything, SIGKILL after `grace`.
    pub async fn stop(&self, grace: Duration) -> Result<()> {
        self.check_not_removed()?;
        if let Ok(c) = self.client() {
            let ask = async {
                let _ = c.call(&Message::Shutdown).await;
            };
            let _ = tokio::time::timeout(grace, ask).await;
        }
        if !self.wait_helper_exit(grace).await {
            return self.kill().await;
        }
        self.after_exit();
        Ok(())
    }

    /// SIGKILL the helper (PID 1 of the sandbox: the kernel kills the rest
    /// of its pid namespace), then sweep the cgroup.
    pub async fn kill(&self) -> Result<()> {
        self.check_not_removed()?;
        let st = self.state();
        kill_verified(st.helper_pid, st.helper_start);
        if !self.wait_helper_exit(Duration::from_secs(10)).await {
            return Err(EngineError::new(
                lockbox_protocol::ErrorCode::Timeout,
                format!(
                    "helper of sandbox {:?} did not exit after SIGKILL",
                    self.name
                ),
            ));
        }
        self.after_exit();
        Ok(())
    }

    fn after_exit(&self) {
        if let Ok(mut c) = self.client.lock() {
            if let Some(c) = c.take() {
                c.close();
            }
        }
        if let Ok(mut l) = self.lifeline.lock() {
            l.take();
        }
        let cg = self.state().report.cgroup;
        drop(tokio::task::spawn_blocking(move || {
            crate::cleanup::remove_cgroups(&cg)
        }));
    }

    /// Drops the connection without stopping anything (detached sandboxes).
    pub fn disconnect(&self) {
        if let Ok(mut c) = self.client.lock() {
            if let Some(c) = c.take() {
                c.close();
            }
        }
    }
}

/// A list entry for a sandbox whose state files cannot be read.
pub fn damaged_info(name: &str, dir: &Path, why: String) -> SandboxInfo {
    SandboxInfo {
        name: name.to_string(),
        id: String::new(),
        status: "damaged".into(),
        image: None,
        rootfs: None,
        detached: false,
        labels: Default::default(),
        created_unix: 0,
        helper_pid: 0,
        enforced: Vec::new(),
        not_enforced: Vec::new(),
        config: Default::default(),
        dir: dir.to_string_lossy().into_owned(),
        image_used: None,
        disk_mib: None,
        error: Some(format!(
            "state cannot be read ({why}); its files are kept: remove it to delete them"
        )),
    }
}

pub fn info_from(
    stored: &StoredConfig,
    st: &SandboxState,
    dir: &std::path::Path,
    running: bool,
) -> SandboxInfo {
    SandboxInfo {
        name: stored.name.clone(),
        id: stored.id.clone(),
        status: if running { "running" } else { "stopped" }.into(),
        image: stored.config.image.clone(),
        rootfs: stored.config.rootfs.clone(),
        detached: stored.config.detached,
        labels: stored.config.labels.clone(),
        created_unix: stored.created_unix,
        helper_pid: st.helper_pid,
        enforced: st.report.enforced.clone(),
        not_enforced: st.report.not_enforced.clone(),
        config: stored.config.clone(),
        dir: dir.to_string_lossy().into_owned(),
        image_used: stored.image.clone(),
        disk_mib: stored.config.effective_disk_mib(),
        error: None,
    }
}

/// Per-exec options as the C ABI receives them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ExecOptions {
    pub argv: Vec<String>,
    pub env: Vec<String>,
    pub cwd: Option<String>,
    pub user: Option<String>,
    pub timeout_ms: Option<u64>,
    pub stdin: bool,
    pub tty: bool,
    pub rows: Option<u16>,
    pub cols: Option<u16>,
}

/// `base` overridden key by key by `extra`, the last entry of a key
/// winning, in the order each key first appears. Linear: one hash lookup
/// per entry (a scan per entry made 32k entries take seconds). `extra` is
/// checked entry by entry (its size is the caller's to check); the result
/// is bounded like any environment.
pub fn merge_env(what: &str, base: &[String], extra: &[String]) -> Result<Vec<String>> {
    use std::collections::hash_map::Entry;
    let mut order: Vec<&String> = Vec::with_capacity(base.len() + extra.len());
    let mut slot: std::collections::HashMap<&str, usize> =
        std::collections::HashMap::with_capacity(base.len() + extra.len());
    for (i, e) in base.iter().chain(extra).enumerate() {
        if i >= base.len() {
            crate::config::check_env(what, e)?;
        }
        let key = e.split_once('=').map_or(e.as_str(), |(k, _)| k);
        match slot.entry(key) {
            Entry::Occupied(o) => order[*o.get()] = e,
            Entry::Vacant(v) => {
                v.insert(order.len());
                order.push(e);
            }
        }
    }
    let out: Vec<String> = order.into_iter().cloned().collect();
    crate::config::check_env_size(&format!("{what} after merging"), &out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_merges_by_key() {
        let base = vec!["PATH=/bin".to_string(), "A=1".to_string()];
        let m = merge_env("env", &base, &["A=2".into(), "B=3".into(), "B=4".into()]).unwrap();
        assert_eq!(m, vec!["PATH=/bin", "A=2", "B=4"]);
        assert!(merge_env("env", &base, &["bad".into()]).is_err());
        assert!(merge_env("env", &base, &["=x".into()]).is_err());
        assert!(merge_env("env", &base, &["A=\0".into()]).is_err());
    }

    /// 2 x 50k entries with half the keys shared. A scan per entry (the
    /// old merge) needs ~3e9 key compares here: minutes, not < 2 s.
    #[test]
    fn env_merge_is_linear() {
        let n = 50_000;
        let base: Vec<String> = (0..n).map(|i| format!("K{i}=base")).collect();
        let extra: Vec<String> = (n / 2..n + n / 2).map(|i| format!("K{i}=extra")).collect();
        let t = std::time::Instant::now();
        // Past the size bound on purpose: the merge runs in full, then the
        // result is refused.
        let e = merge_env("env", &base, &extra).unwrap_err();
        assert_eq!(e.code, lockbox_protocol::ErrorCode::InvalidArgument);
        assert!(e.message.contains("after merging"), "{}", e.message);
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
        let small_base: Vec<String> = base[..2000].to_vec();
        let m = merge_env("env", &small_base, &extra[..2000]).unwrap();
        assert_eq!(m.len(), 4000);
        assert_eq!(m[0], "K0=base");
        assert_eq!(m[3999], format!("K{}=extra", n / 2 + 1999));
    }

    #[test]
    fn merged_env_is_bounded() {
        let base: Vec<String> = (0..3000).map(|i| format!("A{i}=x")).collect();
        let extra: Vec<String> = (0..3000).map(|i| format!("B{i}=x")).collect();
        let e = merge_env("exec env", &base, &extra).unwrap_err();
        assert!(e.message.contains("6000 entries"), "{}", e.message);
        // The same keys again only override: still 3000.
        assert_eq!(merge_env("exec env", &base, &base).unwrap().len(), 3000);
    }
}
