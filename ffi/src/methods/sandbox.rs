//! sandbox.* methods, plus the glue every engine-backed method group shares:
//! the process-wide engine, error mapping, and the sandbox handle object.
use super::{params, CallCtx, Table};
use crate::error::ApiError;
use crate::registry::{self, Kind};
use lockbox_engine::{Engine, EngineError, Sandbox, SandboxConfig};
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub fn register(t: &mut Table) {
    t.add("sandbox.create", create);
    t.add("sandbox.get", get);
    t.add("sandbox.list", list);
    t.add("sandbox.remove", remove);
    t.add("sandbox.info", info);
    t.add("sandbox.metrics", metrics);
    t.add("sandbox.stop", stop);
    t.add("sandbox.kill", kill);
    t.add("sandbox.close", close);
    // Only awaits the close task (already on the runtime): safe to run
    // there without a caller thread. create/remove/stop/kill do blocking
    // filesystem and process work inline and keep their sync form only.
    t.add_async("sandbox.close", |p, _| Box::pin(close_async(p)));
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        ApiError::new(e.code, e.message)
    }
}

pub(crate) fn api(e: EngineError) -> ApiError {
    e.into()
}

/// The engine over `$LOCKBOX_HOME`, made on first use. A failure (no home)
/// is not cached, so fixing the environment and retrying works.
pub(crate) fn engine() -> Result<Arc<Engine>, ApiError> {
    static ENGINE: Mutex<Option<Arc<Engine>>> = Mutex::new(None);
    let mut g = ENGINE
        .lock()
        .map_err(|_| ApiError::internal("engine lock poisoned"))?;
    if let Some(e) = g.as_ref() {
        return Ok(e.clone());
    }
    let e = Arc::new(Engine::new().map_err(api)?);
    *g = Some(e.clone());
    Ok(e)
}

/// What a sandbox handle holds. Releasing the last reference (closing the
/// handle) stops and removes a non-detached sandbox; a detached one keeps
/// running and only the connection goes.
pub struct SandboxObj {
    pub sb: Arc<Sandbox>,
    engine: Arc<Engine>,
    /// Set once the engine-side close has been started (by `sandbox.close`
    /// or by the drop): it runs exactly once per handle.
    closed: std::sync::atomic::AtomicBool,
}

impl SandboxObj {
    fn start_close(&self) -> Option<tokio::task::JoinHandle<()>> {
        if self.closed.swap(true, std::sync::atomic::Ordering::AcqRel) {
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

/// Closes a sandbox handle and waits until the engine has finished with it
/// (a non-detached sandbox is then gone), unlike `lockbox_close`, which
/// returns at once and finishes in the background. If the call is
/// canceled, the close still completes in the background.
fn close(p: Value, ctx: &CallCtx) -> Result<Value, ApiError> {
    ctx.block_on(close_async(p))
}

async fn close_async(p: Value) -> Result<Value, ApiError> {
    let p: HandleParams = params("sandbox.close", p)?;
    if let Some(obj) = registry::global().take::<SandboxObj>(p.handle, Kind::Sandbox)? {
        if let Some(task) = obj.start_close() {
            task.await
                .map_err(|e| ApiError::internal(format!("close task failed: {e}")))?;
        }
    }
    Ok(json!({}))
}

pub(crate) fn sandbox(h: u64) -> Result<Arc<Sandbox>, ApiError> {
    Ok(registry::global()
        .get::<SandboxObj>(h, Kind::Sandbox)?
        .sb
        .clone())
}

fn issue(engine: Arc<Engine>, sb: Arc<Sandbox>) -> Result<Value, ApiError> {
    let info = sb.info().map_err(api)?;
    let h = registry::global().insert(
        Kind::Sandbox,
        Arc::new(SandboxObj {
            sb,
            engine,
            closed: Default::default(),
        }),
    );
    Ok(json!({ "handle": h, "name": info.name, "id": info.id, "info": info }))
}

fn create(p: Value, ctx: &CallCtx) -> Result<Value, ApiError> {
    let cfg: SandboxConfig = params("sandbox.create", p)?;
    let engine = engine()?;
    let sb = ctx.block_on(async { engine.create(cfg).await.map_err(api) })?;
    issue(engine, sb)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NameParams {
    name: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HandleParams {
    handle: u64,
}

fn get(p: Value, ctx: &CallCtx) -> Result<Value, ApiError> {
    let p: NameParams = params("sandbox.get", p)?;
    let engine = engine()?;
    let sb = ctx.block_on(async { engine.get(&p.name).await.map_err(api) })?;
    issue(engine, sb)
}

fn list(_: Value, _: &CallCtx) -> Result<Value, ApiError> {
    let l = engine()?.list().map_err(api)?;
    Ok(json!({ "sandboxes": l }))
}

fn remove(p: Value, ctx: &CallCtx) -> Result<Value, ApiError> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct P {
        name: Option<String>,
        handle: Option<u64>,
    }
    let p: P = params("sandbox.remove", p)?;
    let name = match (p.name, p.handle) {
        (Some(n), None) => n,
        (None, Some(h)) => sandbox(h)?.name.clone(),
        _ => {
            return Err(ApiError::invalid_argument(
                "sandbox.remove: give name or handle",
            ))
        }
    };
    let engine = engine()?;
    ctx.block_on(async { engine.remove(&name).await.map_err(api) })?;
    Ok(json!({}))
}

fn info(p: Value, _: &CallCtx) -> Result<Value, ApiError> {
    let p: HandleParams = params("sandbox.info", p)?;
    serde_json::to_value(sandbox(p.handle)?.info().map_err(api)?)
        .map_err(|e| ApiError::internal(e.to_string()))
}

fn metrics(p: Value, _: &CallCtx) -> Result<Value, ApiError> {
    let p: HandleParams = params("sandbox.metrics", p)?;
    serde_json::to_value(sandbox(p.handle)?.metrics().map_err(api)?)
        .map_err(|e| ApiError::internal(e.to_string()))
}

fn stop(p: Value, ctx: &CallCtx) -> Result<Value, ApiError> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct P {
        handle: u64,
        grace_ms: Option<u64>,
    }
    let p: P = params("sandbox.stop", p)?;
    let sb = sandbox(p.handle)?;
    let grace = p
        .grace_ms
        .map(Duration::from_millis)
        .unwrap_or(lockbox_engine::sandbox::STOP_GRACE);
    ctx.block_on(async { sb.stop(grace).await.map_err(api) })?;
    Ok(json!({}))
}

fn kill(p: Value, ctx: &CallCtx) -> Result<Value, ApiError> {
    let p: HandleParams = params("sandbox.kill", p)?;
    let sb = sandbox(p.handle)?;
    ctx.block_on(async { sb.kill().await.map_err(api) })?;
    Ok(json!({}))
}
