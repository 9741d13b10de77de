//! fs.*: file operations inside a sandbox; file contents move through
//! stream handles (fs.open / fs.create), never through JSON.
use super::engine::sandbox;
use super::streams::{CreateStream, ReadStream};
use super::CallCtx;
use crate::error::ApiError;
use crate::registry;
use crate::wire::fs::{
    Copied, CopyFromHostParams, CopyToHostParams, CreateParams, DirEntries, FileInfo, MkdirParams,
    OpenParams, PathParams, RenameParams, SymlinkParams,
};
use crate::wire::{Empty, StreamRef};
use lockbox_engine::{Files, DEFAULT_COPY_MAX_BYTES};
use std::path::PathBuf;
use std::sync::Arc;

/// The sandbox's file calls, acting as `user` when one is given.
fn files(handle: u64, user: Option<&str>) -> Result<Files, ApiError> {
    Ok(sandbox(handle)?.files(user)?)
}

pub(super) fn stat(p: PathParams, ctx: &CallCtx) -> Result<FileInfo, ApiError> {
    let c = files(p.sandbox, p.user.as_deref())?;
    let i = ctx.block_on(async { Ok(c.stat(&p.path).await?) })?;
    Ok(i.into())
}

pub(super) fn read_dir(p: PathParams, ctx: &CallCtx) -> Result<DirEntries, ApiError> {
    let c = files(p.sandbox, p.user.as_deref())?;
    let entries = ctx.block_on(async { Ok(c.read_dir(&p.path).await?) })?;
    Ok(DirEntries {
        entries: entries.into_iter().map(FileInfo::from).collect(),
    })
}

pub(super) fn mkdir_all(p: MkdirParams, ctx: &CallCtx) -> Result<Empty, ApiError> {
    let c = files(p.sandbox, p.user.as_deref())?;
    ctx.block_on(async { Ok(c.mkdir_all(&p.path, p.mode).await?) })?;
    Ok(Empty {})
}

pub(super) fn remove(p: PathParams, ctx: &CallCtx) -> Result<Empty, ApiError> {
    let c = files(p.sandbox, p.user.as_deref())?;
    ctx.block_on(async { Ok(c.remove(&p.path).await?) })?;
    Ok(Empty {})
}

pub(super) fn remove_all(p: PathParams, ctx: &CallCtx) -> Result<Empty, ApiError> {
    let c = files(p.sandbox, p.user.as_deref())?;
    ctx.block_on(async { Ok(c.remove_all(&p.path).await?) })?;
    Ok(Empty {})
}

pub(super) fn rename(p: RenameParams, ctx: &CallCtx) -> Result<Empty, ApiError> {
    let c = files(p.sandbox, p.user.as_deref())?;
    ctx.block_on(async { Ok(c.rename(&p.from, &p.to).await?) })?;
    Ok(Empty {})
}

pub(super) fn symlink(p: SymlinkParams, ctx: &CallCtx) -> Result<Empty, ApiError> {
    let c = files(p.sandbox, p.user.as_deref())?;
    ctx.block_on(async { Ok(c.symlink(&p.target, &p.link).await?) })?;
    Ok(Empty {})
}

pub(super) fn open(p: OpenParams, ctx: &CallCtx) -> Result<StreamRef, ApiError> {
    let c = files(p.sandbox, p.user.as_deref())?;
    let r = ctx.block_on(async {
        Ok(if p.regular {
            c.open_regular(&p.path).await?
        } else {
            c.open(&p.path).await?
        })
    })?;
    let stream = registry::global().insert_stream(Arc::new(ReadStream(Arc::new(r))));
    Ok(StreamRef { stream })
}

pub(super) fn create(p: CreateParams, ctx: &CallCtx) -> Result<StreamRef, ApiError> {
    let c = files(p.sandbox, p.user.as_deref())?;
    let w = ctx.block_on(async { Ok(c.create(&p.path, p.mode).await?) })?;
    let stream = registry::global().insert_stream(Arc::new(CreateStream(w)));
    Ok(StreamRef { stream })
}

pub(super) fn copy_to_host(p: CopyToHostParams, ctx: &CallCtx) -> Result<Copied, ApiError> {
    let c = files(p.sandbox, p.user.as_deref())?;
    let dst = PathBuf::from(&p.dst);
    if !dst.is_absolute() {
        return Err(ApiError::invalid_argument(
            "fs.copy_to_host: dst must be an absolute host path",
        ));
    }
    let max = p.max_bytes.unwrap_or(DEFAULT_COPY_MAX_BYTES);
    let bytes = ctx.block_on(async { Ok(c.copy_to_host(&p.src, &dst, max).await?) })?;
    Ok(Copied { bytes })
}

pub(super) fn copy_from_host(p: CopyFromHostParams, ctx: &CallCtx) -> Result<Copied, ApiError> {
    let c = files(p.sandbox, p.user.as_deref())?;
    let src = PathBuf::from(&p.src);
    if !src.is_absolute() {
        return Err(ApiError::invalid_argument(
            "fs.copy_from_host: src must be an absolute host path",
        ));
    }
    let bytes = ctx.block_on(async { Ok(c.copy_from_host(&src, &p.dst).await?) })?;
    Ok(Copied { bytes })
}
