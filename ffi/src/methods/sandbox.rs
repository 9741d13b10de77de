//! sandbox.*: create, connect, list, remove, inspect, stop and close.
use super::engine::{engine, open, sandbox, SandboxObj};
use super::CallCtx;
use crate::error::ApiError;
use crate::registry::{self, Kind};
use crate::wire::sandbox::{
    Metrics, NetworkEvents, NetworkEventsParams, Opened, RemoveParams, SandboxConfig, SandboxInfo,
    SandboxList, SandboxRef, SetNetworkPolicyParams, StopParams,
};
use crate::wire::{Empty, Name};
use std::time::Duration;

pub(super) fn create(cfg: SandboxConfig, ctx: &CallCtx) -> Result<Opened, ApiError> {
    let engine = engine()?;
    let sb = ctx.block_on(async { Ok(engine.create(cfg).await?) })?;
    open(engine, sb)
}

pub(super) fn get(p: Name, ctx: &CallCtx) -> Result<Opened, ApiError> {
    let engine = engine()?;
    let sb = ctx.block_on(async { Ok(engine.get(&p.name).await?) })?;
    open(engine, sb)
}

pub(super) fn list(_: Empty, _: &CallCtx) -> Result<SandboxList, ApiError> {
    Ok(SandboxList {
        sandboxes: engine()?.list()?,
    })
}

pub(super) fn remove(p: RemoveParams, ctx: &CallCtx) -> Result<Empty, ApiError> {
    let name = match (p.name, p.sandbox) {
        (Some(n), None) => n,
        (None, Some(h)) => sandbox(h)?.name.clone(),
        _ => {
            return Err(ApiError::invalid_argument(
                "sandbox.remove: give name or sandbox",
            ))
        }
    };
    let engine = engine()?;
    ctx.block_on(async { Ok(engine.remove(&name).await?) })?;
    Ok(Empty {})
}

pub(super) fn info(p: SandboxRef, _: &CallCtx) -> Result<SandboxInfo, ApiError> {
    Ok(sandbox(p.sandbox)?.info()?)
}

pub(super) fn metrics(p: SandboxRef, _: &CallCtx) -> Result<Metrics, ApiError> {
    Ok(sandbox(p.sandbox)?.metrics()?)
}

pub(super) fn stop(p: StopParams, ctx: &CallCtx) -> Result<Empty, ApiError> {
    let sb = sandbox(p.sandbox)?;
    let grace = p
        .grace_ms
        .map(Duration::from_millis)
        .unwrap_or(lockbox_engine::STOP_GRACE);
    ctx.block_on(async { Ok(sb.stop(grace).await?) })?;
    Ok(Empty {})
}

pub(super) fn kill(p: SandboxRef, ctx: &CallCtx) -> Result<Empty, ApiError> {
    let sb = sandbox(p.sandbox)?;
    ctx.block_on(async { Ok(sb.kill().await?) })?;
    Ok(Empty {})
}

/// Closes a sandbox handle and waits until the engine has finished with it
/// (a non-detached sandbox is then gone), unlike `lockbox_close`, which
/// returns at once and finishes in the background. If the call is
/// canceled, the close still completes in the background.
pub(super) fn close(p: SandboxRef, ctx: &CallCtx) -> Result<Empty, ApiError> {
    ctx.block_on(close_async(p))
}

pub(super) async fn close_async(p: SandboxRef) -> Result<Empty, ApiError> {
    if let Some(obj) = registry::global().take::<SandboxObj>(p.sandbox, Kind::Sandbox)? {
        if let Some(task) = obj.start_close() {
            task.await
                .map_err(|e| ApiError::internal(format!("close task failed: {e}")))?;
        }
    }
    Ok(Empty {})
}

pub(super) fn set_network_policy(
    p: SetNetworkPolicyParams,
    ctx: &CallCtx,
) -> Result<Empty, ApiError> {
    let sb = sandbox(p.sandbox)?;
    ctx.block_on(async { Ok(sb.set_network_policy(&p.policy).await?) })?;
    Ok(Empty {})
}

/// Most events one call returns unless the caller asks for fewer.
const DEFAULT_EVENTS: u32 = 256;
const MAX_EVENTS: u32 = 1024;
const MAX_WAIT_MS: u64 = 30_000;

pub(super) fn network_events(
    p: NetworkEventsParams,
    ctx: &CallCtx,
) -> Result<NetworkEvents, ApiError> {
    let wait = p.wait_ms.unwrap_or(0);
    if wait > MAX_WAIT_MS {
        return Err(ApiError::invalid_argument(format!(
            "sandbox.network_events: wait_ms {wait} is over {MAX_WAIT_MS}"
        )));
    }
    let max = p.max.unwrap_or(DEFAULT_EVENTS);
    if max == 0 || max > MAX_EVENTS {
        return Err(ApiError::invalid_argument(format!(
            "sandbox.network_events: max {max} is out of range (1..={MAX_EVENTS})"
        )));
    }
    let sb = sandbox(p.sandbox)?;
    ctx.block_on(async {
        Ok(sb
            .network_events(Duration::from_millis(wait), max as usize)
            .await?)
    })
}
