//! Checkpoint, Restore and Fork with memory, for microVM sandboxes (the
//! mechanics are backend/microvm/checkpoint.rs; docs/microvm.md).
//!
//! Every restored sandbox is a new machine: it gets its own name, its
//! hostname (the name unless the options set one), a new
//! `/etc/machine-id` and an RNG reseeded with host random bytes, applied
//! by the guest (`Reseed`) before the sandbox is handed out. Without the
//! reseed two restores of one checkpoint would draw the same "random"
//! numbers.

use std::sync::Arc;

use lockbox_protocol::Message;
use serde::{Deserialize, Serialize};

use crate::backend::microvm::checkpoint as vm;
use crate::config::SandboxConfig;
use crate::engine::Engine;
use crate::error::{EngineError, Result};
use crate::sandbox::Sandbox;

/// What `sandbox.checkpoint` and `checkpoint.list` report.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointInfo {
    pub name: String,
    /// The sandbox it was taken from.
    pub source: String,
    pub created_unix: i64,
    /// Bytes of saved memory and device state.
    pub state_bytes: u64,
    /// The writable disk's size (sparse: what it holds is less).
    pub disk_bytes: u64,
}

impl From<&vm::Manifest> for CheckpointInfo {
    fn from(m: &vm::Manifest) -> Self {
        CheckpointInfo {
            name: m.name.clone(),
            source: m.source.clone(),
            created_unix: m.created_unix,
            state_bytes: m.state_bytes,
            disk_bytes: m.disk_bytes,
        }
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| EngineError::internal(format!("checkpoint task: {e}")))?
}

fn vm_only(sb: &Sandbox, what: &str) -> Result<()> {
    if sb.stored.backend != crate::backend::microvm::MICROVM {
        return Err(EngineError::unsupported(format!(
            "{what}: the {} backend cannot save process memory (no working CRIU); only microVM sandboxes can",
            sb.stored.backend
        )));
    }
    Ok(())
}

/// Saves the running VM sandbox `sb` as checkpoint `name`; it keeps running.
pub async fn checkpoint(
    sb: &Sandbox,
    home: &std::path::Path,
    name: &str,
) -> Result<CheckpointInfo> {
    crate::names::validate("checkpoint", name)?;
    vm_only(sb, "checkpoint")?;
    if !sb.is_running() {
        return Err(EngineError::unavailable(format!(
            "sandbox {:?} is not running",
            sb.name
        )));
    }
    // A frozen qemu would not answer QMP.
    crate::freezer::check_not_paused(sb)?;
    let (dir, home, name, source) = (
        sb.dir.clone(),
        home.to_path_buf(),
        name.to_string(),
        sb.name.clone(),
    );
    let config = sb.stored.config.clone();
    let m = blocking(move || vm::save(&dir, &home, &name, &source, &config)).await?;
    Ok(CheckpointInfo::from(&m))
}

/// The restored sandbox's configuration: the checkpoint's (a VM's layout
/// must be the same), with the name, replace, detached and labels of
/// `opts` when given.
fn restored_config(m: &vm::Manifest, opts: Option<SandboxConfig>) -> SandboxConfig {
    let mut c = m.config.clone();
    c.name = None;
    c.hostname = None;
    c.replace = false;
    if let Some(o) = opts {
        c.name = o.name;
        c.hostname = o.hostname;
        c.replace = o.replace;
        c.detached = o.detached;
        if !o.labels.is_empty() {
            c.labels = o.labels;
        }
    }
    c
}

/// A new sandbox started from checkpoint `name`.
pub async fn restore(
    engine: &Arc<Engine>,
    name: &str,
    opts: Option<SandboxConfig>,
) -> Result<Arc<Sandbox>> {
    crate::names::validate("checkpoint", name)?;
    let (home, n) = (engine.home().to_path_buf(), name.to_string());
    let r = blocking(move || vm::open(&home, &n)).await?;
    let cfg = restored_config(&r.manifest, opts);
    start(engine, cfg, &r).await
}

async fn start(engine: &Arc<Engine>, cfg: SandboxConfig, r: &vm::Restore) -> Result<Arc<Sandbox>> {
    let sb = engine.create_from(cfg, Some(r)).await?;
    if let Err(e) = fresh_identity(&sb).await {
        let _ = engine.remove(&sb.name).await;
        let _ = engine.close(&sb).await;
        return Err(e.context("restore: fresh identity"));
    }
    Ok(sb)
}

/// Hostname and RNG through the guest's keeper, then a new machine id.
async fn fresh_identity(sb: &Sandbox) -> Result<()> {
    let hostname = crate::plan::hostname_for(&sb.stored.config, &sb.name);
    let mut entropy = vec![0u8; 64];
    getrandom::fill(&mut entropy).map_err(|e| EngineError::internal(format!("getrandom: {e}")))?;
    let msg = Message::Reseed {
        name: sb.name.clone(),
        hostname,
        entropy,
    };
    match sb.client()?.call(&msg).await? {
        Message::Ok => {}
        Message::Error(e) => return Err(EngineError::new(e.code, e.message)),
        m => return Err(EngineError::internal(format!("reseed: unexpected {m:?}"))),
    }
    crate::fork::fresh_identity(sb).await
}

pub fn list(home: &std::path::Path) -> Result<Vec<CheckpointInfo>> {
    Ok(vm::list(home)?.iter().map(CheckpointInfo::from).collect())
}

pub fn remove(home: &std::path::Path, name: &str) -> Result<()> {
    crate::names::validate("checkpoint", name)?;
    vm::remove(home, name)
}

/// Fork of a VM sandbox: one unnamed checkpoint, n restores of it (each a
/// new machine), then the checkpoint goes (the children copied its disks
/// and qemu read its state).
pub async fn fork(
    engine: &Arc<Engine>,
    parent: &Sandbox,
    n: usize,
    opts: Option<SandboxConfig>,
) -> Result<Vec<Arc<Sandbox>>> {
    let home = engine.home().to_path_buf();
    let name = format!("fork-{}", crate::names::new_id());
    checkpoint(parent, &home, &name).await?;
    let r = {
        let (h, n) = (home.clone(), name.clone());
        blocking(move || vm::open(&h, &n)).await
    };
    let made = match r {
        Ok(r) => {
            let r = Arc::new(r);
            let mut set = tokio::task::JoinSet::new();
            for _ in 0..n {
                let (e, r) = (engine.clone(), r.clone());
                let mut cfg = restored_config(&r.manifest, opts.clone());
                cfg.name = None;
                set.spawn(async move { start(&e, cfg, &r).await });
            }
            let mut made = Vec::with_capacity(n);
            let mut first_err = None;
            while let Some(j) = set.join_next().await {
                match j {
                    Ok(Ok(sb)) => made.push(sb),
                    Ok(Err(e)) => first_err = first_err.or(Some(e)),
                    Err(e) => {
                        first_err = first_err
                            .or_else(|| Some(EngineError::internal(format!("fork task: {e}"))))
                    }
                }
            }
            match first_err {
                None => Ok(made),
                Some(e) => {
                    for sb in made {
                        let _ = engine.remove(&sb.name).await;
                        let _ = engine.close(&sb).await;
                    }
                    Err(e)
                }
            }
        }
        Err(e) => Err(e),
    };
    let _ = remove(&home, &name);
    made
}
