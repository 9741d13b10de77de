//! Fork: n new sandboxes whose filesystem starts as the parent's current
//! state. The parent is snapshotted once into an unnamed layered image
//! (engine/src/snapshot.rs); each child is a new sandbox of that image with
//! its own writable layer over it, so none sees another's later writes, and
//! the shared layer is never written (it is a read-only lower).
//!
//! Memory is not carried: the native backend has no checkpoint (CRIU does
//! not work on this kernel), so each child starts fresh processes. Each one
//! gets a fresh identity: its own name and hostname, a new
//! `/etc/machine-id`, and a new `/var/lib/systemd/random-seed` where the
//! image has one, so copies do not share what they should not.

use std::sync::Arc;

use crate::config::SandboxConfig;
use crate::engine::Engine;
use crate::error::{EngineError, Result};
use crate::sandbox::Sandbox;

/// At most this many children per call.
pub const MAX_FORKS: usize = 64;

fn random_bytes(n: usize) -> Result<Vec<u8>> {
    let mut b = vec![0u8; n];
    getrandom::fill(&mut b).map_err(|e| EngineError::internal(format!("getrandom: {e}")))?;
    Ok(b)
}

/// A machine id: 32 lowercase hex digits (systemd's format).
pub fn new_machine_id() -> Result<String> {
    Ok(random_bytes(16)?
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<String>())
}

/// Writes the child's own machine id and random seed, as root inside it.
pub async fn fresh_identity(sb: &Sandbox) -> Result<()> {
    let c = sb.client_as(Some("root"))?;
    let id = new_machine_id()?;
    crate::fs::mkdir_all(&c, "/etc", 0o755).await?;
    crate::fs::write_file(&c, "/etc/machine-id", format!("{id}\n").as_bytes(), 0o444).await?;
    let seed = "/var/lib/systemd/random-seed";
    if crate::fs::stat(&c, seed).await.is_ok() {
        crate::fs::write_file(&c, seed, &random_bytes(512)?, 0o600).await?;
    }
    Ok(())
}

/// The children's configuration: `cfg` (or the parent's), on the fork
/// point's image, with no fixed name or hostname (each child gets its own).
fn child_config(parent: &Sandbox, cfg: Option<SandboxConfig>, image: String) -> SandboxConfig {
    let mut c = cfg.unwrap_or_else(|| parent.stored.config.clone());
    c.image = Some(image);
    c.rootfs = None;
    c.name = None;
    c.hostname = None;
    c.replace = false;
    c
}

/// Makes `n` children of `parent`. All or nothing: if one fails, the ones
/// made are removed and the error returned. The fork point's image stays
/// in the store, unnamed, while a child uses it; `Images().Prune` removes
/// it after.
pub async fn fork(
    engine: &Arc<Engine>,
    parent: &Sandbox,
    n: usize,
    cfg: Option<SandboxConfig>,
) -> Result<Vec<Arc<Sandbox>>> {
    if n == 0 || n > MAX_FORKS {
        return Err(EngineError::invalid(format!(
            "fork: n must be 1..={MAX_FORKS}, not {n}"
        )));
    }
    // A VM carries its memory: checkpoint + restores (engine/src/checkpoint.rs).
    if parent.stored.backend == crate::backend::microvm::MICROVM {
        return crate::checkpoint::fork(engine, parent, n, cfg).await;
    }
    // Children that outlive their engine (detached) need their lower to
    // survive a host crash: only then is the copy synced to disk.
    let durable = cfg
        .as_ref()
        .map_or(parent.stored.config.detached, |c| c.detached);
    let (img, _hold) = crate::snapshot::fork_point(parent, engine.home(), durable).await?;
    let cfg = child_config(parent, cfg, img.digest.to_string());
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..n {
        let (e, c) = (engine.clone(), cfg.clone());
        set.spawn(async move {
            let sb = e.create(c).await?;
            if let Err(err) = fresh_identity(&sb).await {
                let _ = e.remove(&sb.name).await;
                let _ = e.close(&sb).await;
                return Err(err.context("fork: fresh identity"));
            }
            Ok::<_, EngineError>(sb)
        });
    }
    let mut made = Vec::with_capacity(n);
    let mut first_err = None;
    while let Some(r) = set.join_next().await {
        match r {
            Ok(Ok(sb)) => made.push(sb),
            Ok(Err(e)) => first_err = first_err.or(Some(e)),
            Err(e) => {
                first_err =
                    first_err.or_else(|| Some(EngineError::internal(format!("fork task: {e}"))))
            }
        }
    }
    if let Some(e) = first_err {
        for sb in made {
            let _ = engine.remove(&sb.name).await;
            let _ = engine.close(&sb).await;
        }
        return Err(e);
    }
    Ok(made)
}

#[cfg(test)]
mod tests {
    #[test]
    fn machine_ids_are_fresh_hex() {
        let a = super::new_machine_id().unwrap();
        let b = super::new_machine_id().unwrap();
        assert_eq!(a.len(), 32);
        assert!(a
            .bytes()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        assert_ne!(a, b);
    }
}
