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

use crate::backend::process::wait_exited;
use crate::client::AgentClient;
use crate::config::SandboxConfig;
use crate::error::{EngineError, Result};
use crate::exec::{ExecOutput, ExecProcess};
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
    /// The user spec the agent resolved at launch (the plan's `user`).
    #[serde(default)]
    pub user: String,
    /// Which backend runs it (`BackendInfo::kind`).
    #[serde(default = "crate::backend::default_kind")]
    pub backend: String,
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
    /// "running", "paused" (frozen) or "stopped" ("damaged" when its state
    /// cannot be read).
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
    /// What runs the sandbox and what stands between it and the host.
    /// Left out when unknown (a damaged entry), so readers that predate
    /// the field see the same JSON as before.
    #[serde(
        default,
        skip_serializing_if = "crate::backend::BackendInfo::is_unknown"
    )]
    pub backend: crate::backend::BackendInfo,
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
    pub(crate) dir: PathBuf,
    pub(crate) stored: StoredConfig,
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

    /// File calls inside the sandbox, as `user` when one is given (see
    /// `client_as`).
    pub fn files(&self, user: Option<&str>) -> Result<crate::files::Files> {
        self.client_as(user).map(crate::files::Files::new)
    }

    /// The live agent connection whose file requests act as `user`
    /// ("uid", "uid:gid", "name" or "name:group", names resolved by the
    /// agent in the sandbox's root) instead of the sandbox's configured
    /// user; `None`: the configured user.
    pub(crate) fn client_as(&self, user: Option<&str>) -> Result<AgentClient> {
        let c = self.client()?;
        crate::freezer::check_not_paused(self)?;
        match user {
            None => Ok(c),
            Some(u) => {
                crate::plan::check::check_user(u)?;
                Ok(c.as_user(u))
            }
        }
    }

    /// The live agent connection, or `unavailable`.
    pub(crate) fn client(&self) -> Result<AgentClient> {
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

    pub(crate) fn state(&self) -> SandboxState {
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
        let mut m = crate::metrics::read(&self.state().report.cgroup)?;
        if self.stored.config.network_policy.is_some() {
            m.network = Some(crate::network::control::poll(&self.dir)?);
        }
        Ok(m)
    }

    fn check_has_policy(&self) -> Result<()> {
        self.check_not_removed()?;
        if self.stored.config.network_policy.is_none() {
            return Err(EngineError::invalid(format!(
                "sandbox {:?} was created without a network policy",
                self.name
            )));
        }
        Ok(())
    }

    /// Replaces the rules of a sandbox made with a policy: new
    /// connections and DNS queries see them at once. The stored config
    /// keeps the policy it was created with.
    pub async fn set_network_policy(&self, policy: &serde_json::Value) -> Result<()> {
        self.check_has_policy()?;
        crate::network::parse_policy(policy)?;
        crate::network::control::set_policy(&self.dir, policy).await
    }

    /// Denials since the last call (at most `max`), waiting up to `wait`
    /// for one; see network::control::events.
    pub async fn network_events(
        &self,
        wait: Duration,
        max: usize,
    ) -> Result<crate::network::NetworkEvents> {
        self.check_has_policy()?;
        crate::network::control::events(&self.dir, wait, max).await
    }

    /// The complete exec request (the plan's `exec`).
    pub(crate) fn exec_request(&self, o: &ExecOptions) -> Result<ExecRequest> {
        crate::plan::exec(&self.stored, o)
    }

    /// An operation that failed because the agent connection went away
    /// fails as not_found when the sandbox was removed meanwhile.
    pub(crate) fn gone(&self, e: EngineError) -> EngineError {
        if e.code != lockbox_protocol::ErrorCode::Unavailable {
            return e;
        }
        self.check_not_removed().err().unwrap_or(e)
    }

    pub async fn exec_start(&self, o: &ExecOptions) -> Result<ExecProcess> {
        crate::freezer::check_not_paused(self)?;
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
        crate::freezer::check_not_paused(self)?;
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
        crate::freezer::thaw_for_removal(&self.state().report.cgroup);
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
        crate::backend::of(&self.stored.backend)?.kill(&st);
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
    pub(crate) fn disconnect(&self) {
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
        backend: Default::default(),
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
        // Frozen (Pause, or a snapshot's brief hold): its processes exist
        // but run nothing, and calls that need the agent are refused.
        status: match running {
            true if crate::freezer::is_paused(&st.report.cgroup) => "paused",
            true => "running",
            false => "stopped",
        }
        .into(),
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
        backend: crate::backend::info_of(&stored.backend),
        disk_mib: crate::plan::check::disk_budget(stored.config.disk_mib)
            .ok()
            .flatten(),
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
