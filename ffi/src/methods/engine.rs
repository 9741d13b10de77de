//! The process-wide engine and what a sandbox handle holds.
use crate::error::ApiError;
use crate::registry::{self, Kind};
use crate::wire::sandbox::Opened;
use lockbox_engine::{Engine, Sandbox};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// The engine over `$LOCKBOX_HOME`, made on first use. A failure (no home)
/// is not cached, so fixing the environment and retrying works.
pub(super) fn engine() -> Result<Arc<Engine>, ApiError> {
    static ENGINE: Mutex<Option<Arc<Engine>>> = Mutex::new(None);
    let mut g = ENGINE
        .lock()
        .map_err(|_| ApiError::internal("engine lock poisoned"))?;
    if let Some(e) = g.as_ref() {
        return Ok(e.clone());
    }
    let e = Arc::new(Engine::new()?);
    *g = Some(e.clone());
    Ok(e)
}

/// What a sandbox handle holds. Releasing the last reference (closing the
/// handle) stops and removes a non-detached sandbox; a detached one keeps
/// running and only the connection goes.
pub(super) struct SandboxObj {
    sb: Arc<Sandbox>,
    engine: Arc<Engine>,
    /// Set once the engine-side close has been started (by `sandbox.close`
    /// or by the drop): it runs exactly once per handle.
    closed: AtomicBool,
}

impl SandboxObj {
    /// Starts the engine-side close unless it was started already.
    pub(super) fn start_close(&self) -> Option<tokio::task::JoinHandle<()>> {
        if self.closed.swap(true, Ordering::AcqRel) {
            return None;
        }
        let (sb, engine) = (self.sb.clone(), self.engine.clone());
        Some(crate::runtime::runtime().spawn(async move {
            let _ = engine.close(&sb).await;
        }))
    }
}

impl Drop for SandboxObj {
    fn drop(&mut self) {
        self.start_close();
    }
}

/// The sandbox behind a live sandbox handle.
pub(super) fn sandbox(h: u64) -> Result<Arc<Sandbox>, ApiError> {
    Ok(registry::global()
        .get::<SandboxObj>(h, Kind::Sandbox)?
        .sb
        .clone())
}

/// Issues a handle for a sandbox just created or connected to.
pub(super) fn open(engine: Arc<Engine>, sb: Arc<Sandbox>) -> Result<Opened, ApiError> {
    let info = sb.info()?;
    let sandbox = registry::global().insert(
        Kind::Sandbox,
        Arc::new(SandboxObj {
            sb,
            engine,
            closed: AtomicBool::new(false),
        }),
    );
    Ok(Opened {
        sandbox,
        name: info.name.clone(),
        id: info.id.clone(),
        info,
    })
}
