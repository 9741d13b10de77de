//! sandbox.pause, sandbox.resume, sandbox.snapshot, sandbox.fork,
//! sandbox.checkpoint, sandbox.restore, checkpoint.list/remove: the work
//! is in lockbox_engine::{freezer, snapshot, fork, checkpoint}.
use super::engine::{engine, open, sandbox};
use super::CallCtx;
use crate::error::ApiError;
use crate::wire::image::ImageInfo;
use crate::wire::sandbox::Opened;
use crate::wire::sandbox::SandboxRef;
use crate::wire::snapshot::{
    CheckpointInfo, CheckpointList, CheckpointParams, ExportParams, Exported, ForkParams, Forked,
    RestoreParams, SnapshotParams,
};
use crate::wire::{Empty, Name};

pub(super) fn pause(p: SandboxRef, ctx: &CallCtx) -> Result<Empty, ApiError> {
    let sb = sandbox(p.sandbox)?;
    // The freeze waits (bounded) for every task to stop: off the runtime.
    ctx.block_on(async {
        tokio::task::spawn_blocking(move || lockbox_engine::freezer::pause(&sb))
            .await
            .map_err(|e| ApiError::internal(format!("pause task: {e}")))??;
        Ok(())
    })?;
    Ok(Empty {})
}

pub(super) fn resume(p: SandboxRef, _: &CallCtx) -> Result<Empty, ApiError> {
    let sb = sandbox(p.sandbox)?;
    lockbox_engine::freezer::resume(&sb)?;
    Ok(Empty {})
}

pub(super) fn snapshot(p: SnapshotParams, ctx: &CallCtx) -> Result<ImageInfo, ApiError> {
    let sb = sandbox(p.sandbox)?;
    let home = engine()?.home().to_path_buf();
    ctx.block_on(async { Ok(lockbox_engine::snapshot::snapshot(&sb, &home, p.name).await?) })
}

pub(super) fn fork(p: ForkParams, ctx: &CallCtx) -> Result<Forked, ApiError> {
    let sb = sandbox(p.sandbox)?;
    let engine = engine()?;
    let kids = ctx.block_on(async {
        Ok(lockbox_engine::fork::fork(&engine, &sb, p.n as usize, p.config).await?)
    })?;
    let mut sandboxes = Vec::with_capacity(kids.len());
    for k in kids {
        sandboxes.push(open(engine.clone(), k)?);
    }
    Ok(Forked { sandboxes })
}

pub(super) fn export(p: ExportParams, ctx: &CallCtx) -> Result<Exported, ApiError> {
    let home = engine()?.home().to_path_buf();
    let digest = ctx.block_on(async {
        Ok(lockbox_engine::snapshot::export(&home, p.name, p.path, p.reference).await?)
    })?;
    Ok(Exported { digest })
}

pub(super) fn checkpoint(p: CheckpointParams, ctx: &CallCtx) -> Result<CheckpointInfo, ApiError> {
    let sb = sandbox(p.sandbox)?;
    let home = engine()?.home().to_path_buf();
    ctx.block_on(async { Ok(lockbox_engine::checkpoint::checkpoint(&sb, &home, &p.name).await?) })
}

pub(super) fn restore(p: RestoreParams, ctx: &CallCtx) -> Result<Opened, ApiError> {
    let engine = engine()?;
    let sb = ctx.block_on(async {
        Ok(lockbox_engine::checkpoint::restore(&engine, &p.name, p.config).await?)
    })?;
    open(engine, sb)
}

pub(super) fn checkpoint_list(_: Empty, _: &CallCtx) -> Result<CheckpointList, ApiError> {
    let home = engine()?.home().to_path_buf();
    Ok(CheckpointList {
        checkpoints: lockbox_engine::checkpoint::list(&home)?,
    })
}

pub(super) fn checkpoint_remove(p: Name, _: &CallCtx) -> Result<Empty, ApiError> {
    let home = engine()?.home().to_path_buf();
    lockbox_engine::checkpoint::remove(&home, &p.name)?;
    Ok(Empty {})
}
