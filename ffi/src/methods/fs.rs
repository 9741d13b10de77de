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
use lockbox_engine::client::AgentClient;
use lockbox_engine::fs;
use std::path::PathBuf;
use std::sync::Arc;

/// The sandbox's agent connection, acting as `user` when one is given.
fn client(handle: u64, user: Option<&str>) -> Result<AgentClient, ApiError> {
    Ok(sandbox(handle)?.client_as(user)?)
}

pub(super) fn stat(p: PathParams, ctx: &CallCtx) -> Result<FileInfo, ApiError> {
    let c = client(p.sandbox, p.user.as_deref())?;
    let i = ctx.block_on(async { Ok(fs::stat(&c, &p.path).await?) })?;
    Ok(i.into())
}

pub(super) fn read_dir(p: PathParams, ctx: &CallCtx) -> Result<DirEntries, ApiError> {
    let c = client(p.sandbox, p.user.as_deref())?;
    let entries = ctx.block_on(async { Ok(fs::read_dir(&c, &p.path).await?) })?;
    Ok(DirEntries {
        entries: entries.into_iter().map(FileInfo::from).collect(),
    })
}

pub(super) fn mkdir_all(p: MkdirParams, ctx: &CallCtx) -> Result<Empty, ApiError> {
    let c = client(p.sandbox, p.user.as_deref())?;
    ctx.block_on(async { Ok(fs::mkdir_all(&c, &p.path, p.mode).await?) })?;
    Ok(Empty {})
}

pub(super) fn remove(p: PathParams, ctx: &CallCtx) -> Result<Empty, ApiError> {
    let c = client(p.sandbox, p.user.as_deref())?;
    ctx.block_on(async { Ok(fs::remove(&c, &p.path).await?) })?;
    Ok(Empty {})
}

pub(super) fn remove_all(p: PathParams, ctx: &CallCtx) -> Result<Empty, ApiError> {
    let c = client(p.sandbox, p.user.as_deref())?;
    ctx.block_on(async { Ok(fs::remove_all(&c, &p.path).await?) })?;
    Ok(Empty {})
}

pub(super) fn rename(p: RenameParams, ctx: &CallCtx) -> Result<Empty, ApiError> {
    let c = client(p.sandbox, p.user.as_deref())?;
    ctx.block_on(async { Ok(fs::rename(&c, &p.from, &p.to).await?) })?;
    Ok(Empty {})
}

pub(super) fn symlink(p: SymlinkParams, ctx: &CallCtx) -> Result<Empty, ApiError> {
    let c = client(p.sandbox, p.user.as_deref())?;
    ctx.block_on(async { Ok(fs::symlink(&c, &p.target, &p.link).await?) })?;
    Ok(Empty {})
}

pub(super) fn open(p: OpenParams, ctx: &CallCtx) -> Result<StreamRef, ApiError> {
    let c = client(p.sandbox, p.user.as_deref())?;
    let r = ctx.block_on(async {
        Ok(if p.regular {
            fs::open_regular(&c, &p.path).await?
        } else {
            fs::open(&c, &p.path).await?
        })
    })?;
    let stream = registry::global().insert_stream(Arc::new(ReadStream(Arc::new(r))));
    Ok(StreamRef { stream })
}

pub(super) fn create(p: CreateParams, ctx: &CallCtx) -> Result<StreamRef, ApiError> {
    let c = client(p.sandbox, p.user.as_deref())?;
    let w = ctx.block_on(async { Ok(fs::create(&c, &p.path, p.mode).await?) })?;
    let stream = registry::global().insert_stream(Arc::new(CreateStream(w)));
    Ok(StreamRef { stream })
}

pub(super) fn copy_to_host(p: CopyToHostParams, ctx: &CallCtx) -> Result<Copied, ApiError> {
    let c = client(p.sandbox, p.user.as_deref())?;
    let dst = PathBuf::from(&p.dst);
    if !dst.is_absolute() {
        return Err(ApiError::invalid_argument(
            "fs.copy_to_host: dst must be an absolute host path",
        ));
    }
    let max = p.max_bytes.unwrap_or(fs::DEFAULT_COPY_MAX_BYTES);
    let bytes = ctx.block_on(async { Ok(fs::copy_to_host(&c, &p.src, &dst, max).await?) })?;
    Ok(Copied { bytes })
}

pub(super) fn copy_from_host(p: CopyFromHostParams, ctx: &CallCtx) -> Result<Copied, ApiError> {
    let c = client(p.sandbox, p.user.as_deref())?;
    let src = PathBuf::from(&p.src);
    if !src.is_absolute() {
        return Err(ApiError::invalid_argument(
            "fs.copy_from_host: src must be an absolute host path",
        ));
    }
    let bytes = ctx.block_on(async { Ok(fs::copy_from_host(&c, &src, &p.dst).await?) })?;
    Ok(Copied { bytes })
}
