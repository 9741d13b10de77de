//! The engine: creates, finds, lists and removes sandboxes under one state
//! home. One per process is typical (the C ABI keeps one), but several
//! engines over the same home coordinate through per-sandbox locks.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use lockbox_protocol::{ErrorCode, MountSpec};

use crate::backend::LaunchRequest;
use crate::cleanup::{cleanup_stale, remove_cgroups, remove_dir_all_forced};
use crate::config::SandboxConfig;
use crate::error::{EngineError, Result};
use crate::paths::Layout;
use crate::plan::{MountSource, Plan, Root};
use crate::sandbox::{info_from, Sandbox, SandboxInfo, StoredConfig};
use crate::state::{
    now_unix, process_start_time, read_json, write_json_with, DirLock, Durability, NameLock,
    SandboxState,
};
use crate::volume::{self, VolumeInfo};

pub struct Engine {
    layout: Layout,
    /// Sandboxes this process has open, so every handle to one name shares
    /// one connection and one owner.
    open: Mutex<HashMap<String, Weak<Sandbox>>>,
    /// Serializes create/remove of one name inside this process.
    names: tokio::sync::Mutex<()>,
}

impl Engine {
    /// An engine over `$LOCKBOX_HOME` (or the per-user data dir).
    pub fn new() -> Result<Engine> {
        Self::with_home(crate::paths::default_home()?)
    }

    /// An engine over `home`; cleans up what dead sandboxes left there.
    pub fn with_home(home: PathBuf) -> Result<Engine> {
        std::fs::create_dir_all(&home).map_err(|e| EngineError::io(home.display(), e))?;
        // The home is the caller's own choice, so links on its path are
        // trusted and resolved once, here. Every path the engine derives
        // from it (image layers, named volumes, writable layers) is then
        // free of links, and the helper opens them refusing any link: one
        // planted below the home by a sandbox is never followed.
        let home = std::fs::canonicalize(&home).map_err(|e| EngineError::io(home.display(), e))?;
        let layout = Layout::new(home);
        for d in [
            layout.home.clone(),
            layout.sandboxes(),
            layout.volumes(),
            layout.home.join("locks"),
        ] {
            std::fs::create_dir_all(&d).map_err(|e| EngineError::io(d.display(), e))?;
            // Private: sandbox configs hold their environments. Only the
            // directories the engine owns; the home's parents are the
            // caller's business.
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o700));
        }
        cleanup_stale(&layout);
        crate::cleanup::reclaim_store(&layout);
        Ok(Engine {
            layout,
            open: Mutex::new(HashMap::new()),
            names: tokio::sync::Mutex::new(()),
        })
    }

    pub fn home(&self) -> &Path {
        &self.layout.home
    }

    /// The lock of one sandbox name, shared by every process over this home.
    fn name_lock_path(&self, name: &str) -> PathBuf {
        self.layout
            .home
            .join("locks")
            .join(format!("sandbox-{name}.lock"))
    }

    fn remember(&self, sb: &Arc<Sandbox>) {
        if let Ok(mut o) = self.open.lock() {
            o.retain(|_, w| w.strong_count() > 0);
            o.insert(sb.name.clone(), Arc::downgrade(sb));
        }
    }

    fn open_sandbox(&self, name: &str) -> Option<Arc<Sandbox>> {
        let o = self.open.lock().ok()?;
        o.get(name)
            .and_then(Weak::upgrade)
            .filter(|s| !s.removed.load(Ordering::Acquire))
    }

    /// `open_sandbox` plus one more handle, atomically with `close`.
    fn acquire_open(&self, name: &str) -> Option<Arc<Sandbox>> {
        let o = self.open.lock().ok()?;
        let s = o
            .get(name)
            .and_then(Weak::upgrade)
            .filter(|s| !s.removed.load(Ordering::Acquire))?;
        s.handles.fetch_add(1, Ordering::AcqRel);
        Some(s)
    }

    /// Creates and starts a sandbox: plan (pure), resolve what needs the
    /// host, take the name, launch on the backend, connect.
    pub async fn create(&self, cfg: SandboxConfig) -> Result<Arc<Sandbox>> {
        self.create_from(cfg, None).await
    }

    /// `create`, the VM started from a checkpoint instead of booted
    /// (engine/src/checkpoint.rs).
    pub(crate) async fn create_from(
        &self,
        cfg: SandboxConfig,
        restore: Option<&crate::backend::microvm::checkpoint::Restore>,
    ) -> Result<Arc<Sandbox>> {
        // Nothing is looked up, made or started for a config that is wrong
        // by itself.
        crate::plan::check(&cfg)?;
        let backend = crate::backend::of(cfg.isolation.kind())?;
        let root = self.resolve_root(&cfg).await?;
        let id = crate::names::new_id();
        let name = cfg.name.clone().unwrap_or_else(|| format!("sb-{id}"));
        let plan = crate::plan::sandbox(&cfg, &name, root)?;
        let mounts = self.mount_sources(&plan)?;

        // Held until the sandbox runs (or the create fails): no other
        // caller, in any process, can find the name free, or remove what
        // this one is making, in between. Not waited for: two creates of
        // one name at once have one winner, the other gets already_exists.
        // Always taken before `names` (remove and close too): one order.
        let _name_lock = NameLock::try_acquire(&self.name_lock_path(&name))?.ok_or_else(|| {
            EngineError::already_exists(format!(
                "sandbox {name:?} is being created, replaced or removed by another caller"
            ))
        })?;
        let _names = self.names.lock().await;
        let dir = self.layout.sandbox(&name);
        if dir.exists() {
            if cfg.replace {
                self.remove_inner(&name, None).await?;
            } else {
                return Err(EngineError::already_exists(format!(
                    "a sandbox named {name:?} already exists"
                )));
            }
        }
        match std::fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(EngineError::already_exists(format!(
                    "a sandbox named {name:?} already exists"
                )))
            }
            Err(e) => return Err(EngineError::io(dir.display(), e)),
        }
        // From here on, a failure removes what was made.
        let made = DirGuard(Some(dir.clone()));
        let lock = DirLock::try_acquire(&dir.join("lock"))?.ok_or_else(|| {
            EngineError::already_exists(format!("sandbox {name:?} is being created elsewhere"))
        })?;
        let stored = StoredConfig {
            id: id.clone(),
            name: name.clone(),
            config: cfg.without_secret_values(),
            lower: plan.layers.clone(),
            env: plan.env.clone(),
            workdir: plan.workdir.clone(),
            user: plan.user.clone(),
            backend: backend.info().kind,
            created_unix: now_unix(),
            image: plan.image.clone(),
        };
        let durability = if cfg.detached {
            Durability::Durable
        } else {
            Durability::ProcessCrashSafe
        };
        write_json_with(&dir.join("config.json"), &stored, durability)?;
        let launched = backend
            .launch(LaunchRequest {
                id: &id,
                dir: &dir,
                plan: &plan,
                mounts,
                restore,
            })
            .await?;
        let state = SandboxState {
            id,
            name: name.clone(),
            helper_pid: launched.pid,
            helper_start: process_start_time(launched.pid).unwrap_or(0),
            detached: cfg.detached,
            created_unix: stored.created_unix,
            report: launched.report,
        };
        // The helper is running: if we fail (or are canceled) from here,
        // kill it before the directory goes.
        let kill_on_fail = HelperGuard(Some((
            state.helper_pid,
            state.helper_start,
            state.report.cgroup.clone(),
        )));
        write_json_with(&dir.join("state.json"), &state, durability)?;
        // The forwarder starts (its exec, its start line) while the agent
        // connection is made: neither waits for the other.
        let (ca, client) = match &plan.net {
            Some(n) => {
                let (ca, client) = tokio::join!(
                    crate::network::control::start(&dir, n),
                    backend.connect(&dir, &name)
                );
                (ca?, client?)
            }
            // A restored guest's agent still answers to the name it had
            // when the checkpoint was taken, until its Reseed.
            None => {
                let agent_name = restore.map_or(name.as_str(), |r| r.manifest.source.as_str());
                (None, backend.connect(&dir, agent_name).await?)
            }
        };
        if plan.net.is_some() {
            crate::network::install(&client, ca.as_deref()).await?;
        }
        kill_on_fail.disarm();
        made.disarm();
        let sb = Arc::new(Sandbox {
            name: name.clone(),
            dir,
            stored,
            state: std::sync::Mutex::new(state),
            client: std::sync::Mutex::new(Some(client)),
            lifeline: std::sync::Mutex::new(launched.lifeline),
            // Detached sandboxes are not owned by this process.
            lock: std::sync::Mutex::new(if cfg.detached { None } else { Some(lock) }),
            exited: std::sync::Mutex::new(Some(launched.exited)),
            removed: Default::default(),
            handles: 1.into(),
        });
        self.remember(&sb);
        Ok(sb)
    }

    /// The root layers and the image's defaults: a host directory given
    /// as `rootfs`, or an image from the store.
    async fn resolve_root(&self, cfg: &SandboxConfig) -> Result<Root> {
        if let Some(r) = &cfg.rootfs {
            let p = Path::new(r);
            if !p.is_absolute() {
                return Err(EngineError::invalid(format!(
                    "rootfs {r:?} must be an absolute path"
                )));
            }
            if !p.is_dir() {
                return Err(EngineError::not_found(format!(
                    "rootfs directory {r:?} does not exist"
                )));
            }
            // As for volumes: never canonicalize (a planted link on the
            // path would make some other host tree the root).
            let dir = crate::fs::host_path_without_links(r)
                .map_err(|e| e.context(format!("rootfs {r:?}")))?;
            return Ok(Root {
                layers: vec![dir.to_string_lossy().into_owned()],
                ..Default::default()
            });
        }
        let img = cfg.image.as_deref().unwrap_or(crate::plan::DEFAULT_IMAGE);
        let resolved = crate::images::resolve(&self.layout.home, img).await?;
        let defaults = resolved.sandbox_defaults();
        Ok(Root {
            layers: crate::snapshot::lowers_of(&self.layout.home, &resolved)?,
            env: defaults.env,
            workdir: defaults.workdir,
            user: defaults.user,
            image: resolved.digest.as_ref().map(|d| crate::sandbox::ImageUsed {
                digest: d.to_string(),
                entrypoint: resolved.config.entrypoint.clone(),
                cmd: resolved.config.cmd.clone(),
            }),
        })
    }

    /// The plan's mounts with host sources resolved: link-free host paths,
    /// named volumes made under the home.
    fn mount_sources(&self, plan: &Plan) -> Result<Vec<MountSpec>> {
        plan.mounts
            .iter()
            .map(|m| {
                let target = m.target.clone();
                let read_only = m.read_only;
                Ok(match &m.source {
                    // Never canonicalize: a link on the path (made by a
                    // sandbox that can write one of its directories) would
                    // be followed.
                    MountSource::Host { path } => MountSpec::Bind {
                        source: crate::fs::host_path_without_links(path)
                            .map_err(|e| e.context(format!("volume host path {path:?}")))?
                            .to_string_lossy()
                            .into_owned(),
                        target,
                        read_only,
                    },
                    MountSource::Volume { name } => MountSpec::Bind {
                        source: volume::ensure(&self.layout, name)?.path,
                        target,
                        read_only,
                    },
                    MountSource::Tmpfs { size_mib } => MountSpec::Tmpfs {
                        target,
                        size_mib: *size_mib,
                    },
                })
            })
            .collect()
    }

    /// Finds a sandbox by name: one this process has open, or one on disk
    /// (a detached sandbox made by another process). Counts as one handle:
    /// pair it with `close`.
    pub async fn get(&self, name: &str) -> Result<Arc<Sandbox>> {
        crate::names::validate("sandbox", name)?;
        if let Some(s) = self.acquire_open(name) {
            return Ok(s);
        }
        let dir = self.layout.sandbox(name);
        let stored: StoredConfig = match read_json(&dir.join("config.json")) {
            Ok(s) => s,
            Err(e) if e.code == ErrorCode::NotFound => {
                return Err(EngineError::not_found(format!("no sandbox named {name:?}")))
            }
            Err(e) => return Err(e),
        };
        let state: SandboxState = read_json(&dir.join("state.json")).map_err(|e| {
            if e.code == ErrorCode::NotFound {
                EngineError::not_found(format!("sandbox {name:?} is still being created"))
            } else {
                e
            }
        })?;
        let backend = crate::backend::of(&stored.backend)?;
        let alive = state.helper_alive();
        let client = if alive {
            Some(backend.connect(&dir, name).await?)
        } else {
            None
        };
        let exited = alive.then(|| backend.watch(&state));
        let sb = Arc::new(Sandbox {
            name: name.to_string(),
            dir,
            stored,
            state: std::sync::Mutex::new(state),
            client: std::sync::Mutex::new(client),
            lifeline: std::sync::Mutex::new(None),
            lock: std::sync::Mutex::new(None),
            exited: std::sync::Mutex::new(exited),
            removed: Default::default(),
            handles: 1.into(),
        });
        self.remember(&sb);
        Ok(sb)
    }

    /// Every sandbox under this home, running or stopped.
    pub fn list(&self) -> Result<Vec<SandboxInfo>> {
        let rd = std::fs::read_dir(self.layout.sandboxes())
            .map_err(|e| EngineError::io(self.layout.sandboxes().display(), e))?;
        let mut out = Vec::new();
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue;
            }
            let dir = e.path();
            let (stored, state) = match (
                read_json::<StoredConfig>(&dir.join("config.json")),
                read_json::<SandboxState>(&dir.join("state.json")),
            ) {
                (Ok(c), Ok(s)) => (c, s),
                // A create still writing its files, or a crash before it
                // wrote any: not a sandbox yet.
                _ if !dir.join("state.json").exists() => continue,
                (c, s) => {
                    let why = [c.err(), s.err()]
                        .into_iter()
                        .flatten()
                        .map(|e| e.to_string())
                        .collect::<Vec<_>>()
                        .join("; ");
                    out.push(crate::sandbox::damaged_info(&name, &dir, why));
                    continue;
                }
            };
            let running = match self.open_sandbox(&name) {
                Some(s) => s.is_running(),
                None => state.helper_alive(),
            };
            out.push(info_from(&stored, &state, &dir, running));
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Stops (if running) and deletes a sandbox and its files.
    pub async fn remove(&self, name: &str) -> Result<()> {
        crate::names::validate("sandbox", name)?;
        let _name_lock = NameLock::acquire(&self.name_lock_path(name)).await?;
        let _names = self.names.lock().await;
        self.remove_inner(name, None).await
    }

    /// `known`: the object being closed (it is no longer in the open table).
    async fn remove_inner(&self, name: &str, known: Option<Arc<Sandbox>>) -> Result<()> {
        let dir = self.layout.sandbox(name);
        if !dir.exists() {
            return Err(EngineError::not_found(format!("no sandbox named {name:?}")));
        }
        let closing = known.is_some();
        let mut sb = known.or_else(|| self.open_sandbox(name));
        // Another process may have replaced the sandbox this object was for:
        // the directory then holds a different sandbox, which this object
        // must neither stand for (its state) nor remove when closing.
        let on_disk = read_json::<StoredConfig>(&dir.join("config.json"))
            .ok()
            .map(|c| c.id);
        if let (Some(s), Some(id)) = (&sb, &on_disk) {
            if s.id() != id {
                s.removed.store(true, Ordering::Release);
                s.disconnect();
                if let Ok(mut l) = s.lifeline.lock() {
                    l.take();
                }
                if closing {
                    return Ok(());
                }
                sb = None;
            }
        }
        let state: Option<SandboxState> = match &sb {
            Some(s) => Some(s.state()),
            None => read_json(&dir.join("state.json")).ok(),
        };
        if let Some(s) = &sb {
            if s.state().helper_alive() {
                let _ = s.kill().await;
            }
            s.removed.store(true, Ordering::Release);
            s.disconnect();
            if let Ok(mut l) = s.lifeline.lock() {
                l.take();
            }
        }
        if let Some(st) = &state {
            crate::backend::process::kill_verified(st.helper_pid, st.helper_start);
            let mut waited = 0;
            while st.helper_alive() && waited < 500 {
                tokio::time::sleep(Duration::from_millis(10)).await;
                waited += 1;
            }
            let cg = st.report.cgroup.clone();
            let _ = tokio::task::spawn_blocking(move || remove_cgroups(&cg)).await;
        }
        // Rename first: the name is free at once, and a crash mid-delete
        // leaves a trash dir that the next cleanup removes.
        let trash =
            self.layout
                .sandboxes()
                .join(format!(".trash-{}-{}", name, crate::names::new_id()));
        std::fs::rename(&dir, &trash).map_err(|e| EngineError::io(dir.display(), e))?;
        // Any other object this process has for the name (a `get` that raced
        // with this removal) now names a removed sandbox.
        let other = self
            .open
            .lock()
            .ok()
            .and_then(|mut o| o.remove(name))
            .and_then(|w| w.upgrade());
        if let Some(o) = other {
            o.removed.store(true, Ordering::Release);
            o.disconnect();
        }
        if let Some(s) = sb {
            if let Ok(mut l) = s.lock.lock() {
                l.take();
            }
        }
        let _ = tokio::task::spawn_blocking(move || remove_dir_all_forced(&trash)).await;
        Ok(())
    }

    /// Releases one handle (from `create` or `get`). When the last one goes,
    /// a non-detached sandbox is stopped and removed (nothing else can ever
    /// reach it); a detached one keeps running and only the connection goes.
    pub async fn close(&self, sb: &Arc<Sandbox>) -> Result<()> {
        {
            let mut o = self
                .open
                .lock()
                .map_err(|_| EngineError::internal("poisoned"))?;
            if sb.handles.fetch_sub(1, Ordering::AcqRel) > 1 {
                return Ok(());
            }
            if sb.removed.load(Ordering::Acquire) {
                return Ok(());
            }
            // Unlisted under the lock: a concurrent `get` cannot pick up an
            // object that is about to be disconnected.
            if o.get(&sb.name)
                .map(|w| w.as_ptr() == Arc::as_ptr(sb))
                .unwrap_or(false)
            {
                o.remove(&sb.name);
            }
            if sb.stored.config.detached {
                sb.disconnect();
                return Ok(());
            }
        }
        let _name_lock = NameLock::acquire(&self.name_lock_path(&sb.name)).await?;
        let _names = self.names.lock().await;
        match self.remove_inner(&sb.name, Some(sb.clone())).await {
            Err(e) if e.code == ErrorCode::NotFound => Ok(()),
            r => r,
        }
    }

    pub fn volume_create(&self, name: &str) -> Result<VolumeInfo> {
        volume::create(&self.layout, name)
    }

    pub fn volume_list(&self) -> Result<Vec<VolumeInfo>> {
        volume::list(&self.layout)
    }

    pub fn volume_remove(&self, name: &str) -> Result<()> {
        let users: Vec<String> = self
            .list()?
            .into_iter()
            .filter(|s| s.status == "running")
            .filter(|s| s.config.named_volumes.iter().any(|v| v.name == name))
            .map(|s| s.name)
            .collect();
        volume::remove(&self.layout, name, &users)
    }
}

/// Removes a half-made sandbox directory unless disarmed.
struct DirGuard(Option<PathBuf>);
impl DirGuard {
    fn disarm(mut self) {
        self.0 = None;
    }
}
impl Drop for DirGuard {
    fn drop(&mut self) {
        if let Some(d) = self.0.take() {
            let _ = remove_dir_all_forced(&d);
        }
    }
}

/// Kills a started helper and sweeps its cgroups unless disarmed.
struct HelperGuard(Option<(u32, u64, lockbox_protocol::CgroupPaths)>);
impl HelperGuard {
    fn disarm(mut self) {
        self.0 = None;
    }
}
impl Drop for HelperGuard {
    fn drop(&mut self) {
        if let Some((pid, start, cg)) = self.0.take() {
            crate::backend::process::kill_verified(pid, start);
            std::thread::spawn(move || {
                for _ in 0..200 {
                    if process_start_time(pid) != Some(start) {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
                remove_cgroups(&cg);
            });
        }
    }
}
