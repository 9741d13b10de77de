//! fs.* methods: file operations inside a sandbox; file contents move
//! through stream handles (fs.open / fs.create), never through JSON.
use super::exec::ReadStream;
use super::sandbox::{api, sandbox};
use super::{params, CallCtx, Table};
use crate::error::ApiError;
use crate::registry;
use crate::stream::{BoxFuture, ByteStream};
use lockbox_engine::fs::{self, FileWriter};
use serde::Deserialize;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::sync::Arc;

pub fn register(t: &mut Table) {
    t.add("fs.stat", stat);
    t.add("fs.read_dir", read_dir);
    t.add("fs.mkdir_all", mkdir_all);
    t.add("fs.remove", remove);
    t.add("fs.remove_all", remove_all);
    t.add("fs.rename", rename);
    t.add("fs.symlink", symlink);
    t.add("fs.open", open);
    t.add("fs.create", create);
    t.add("fs.copy_to_host", copy_to_host);
    t.add("fs.copy_from_host", copy_from_host);
}

/// A file being written: close_write completes it and reports any error.
struct CreateStream(FileWriter);

impl ByteStream for CreateStream {
    fn write<'a>(&'a self, data: &'a [u8]) -> BoxFuture<'a, Result<(), ApiError>> {
        Box::pin(async move { self.0.write_all(data).await.map_err(api) })
    }
    fn close_write(&self) -> BoxFuture<'_, Result<(), ApiError>> {
        Box::pin(async move { self.0.finish().await.map(|_| ()).map_err(api) })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PathParams {
    sandbox: u64,
    /// Act as this user inside instead of the sandbox's own (opt-in).
    #[serde(default)]
    user: Option<String>,
    path: String,
}

/// The sandbox's agent connection, acting as `user` when one is given.
fn client(
    handle: u64,
    user: &Option<String>,
) -> Result<lockbox_engine::client::AgentClient, ApiError> {
    sandbox(handle)?.client_as(user.as_deref()).map_err(api)
}

fn to_json<T: serde::Serialize>(v: T) -> Result<Value, ApiError> {
    serde_json::to_value(v).map_err(|e| ApiError::internal(e.to_string()))
}

fn stat(p: Value, ctx: &CallCtx) -> Result<Value, ApiError> {
    let p: PathParams = params("fs.stat", p)?;
    let c = client(p.sandbox, &p.user)?;
    to_json(ctx.block_on(async { fs::stat(&c, &p.path).await.map_err(api) })?)
}

fn read_dir(p: Value, ctx: &CallCtx) -> Result<Value, ApiError> {
    let p: PathParams = params("fs.read_dir", p)?;
    let c = client(p.sandbox, &p.user)?;
    let entries = ctx.block_on(async { fs::read_dir(&c, &p.path).await.map_err(api) })?;
    Ok(json!({ "entries": entries }))
}

fn mkdir_all(p: Value, ctx: &CallCtx) -> Result<Value, ApiError> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct P {
        sandbox: u64,
        /// Act as this user inside instead of the sandbox's own (opt-in).
        #[serde(default)]
        user: Option<String>,
        path: String,
        #[serde(default = "dir_mode")]
        mode: u32,
    }
    let p: P = params("fs.mkdir_all", p)?;
    let c = client(p.sandbox, &p.user)?;
    ctx.block_on(async { fs::mkdir_all(&c, &p.path, p.mode).await.map_err(api) })?;
    Ok(json!({}))
}

fn dir_mode() -> u32 {
    0o755
}

fn copy_max_bytes() -> u64 {
    fs::DEFAULT_COPY_MAX_BYTES
}

fn file_mode() -> u32 {
    0o644
}

fn remove(p: Value, ctx: &CallCtx) -> Result<Value, ApiError> {
    let p: PathParams = params("fs.remove", p)?;
    let c = client(p.sandbox, &p.user)?;
    ctx.block_on(async { fs::remove(&c, &p.path).await.map_err(api) })?;
    Ok(json!({}))
}

fn remove_all(p: Value, ctx: &CallCtx) -> Result<Value, ApiError> {
    let p: PathParams = params("fs.remove_all", p)?;
    let c = client(p.sandbox, &p.user)?;
    ctx.block_on(async { fs::remove_all(&c, &p.path).await.map_err(api) })?;
    Ok(json!({}))
}

fn rename(p: Value, ctx: &CallCtx) -> Result<Value, ApiError> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct P {
        sandbox: u64,
        /// Act as this user inside instead of the sandbox's own (opt-in).
        #[serde(default)]
        user: Option<String>,
        from: String,
        to: String,
    }
    let p: P = params("fs.rename", p)?;
    let c = client(p.sandbox, &p.user)?;
    ctx.block_on(async { fs::rename(&c, &p.from, &p.to).await.map_err(api) })?;
    Ok(json!({}))
}

fn symlink(p: Value, ctx: &CallCtx) -> Result<Value, ApiError> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct P {
        sandbox: u64,
        /// Act as this user inside instead of the sandbox's own (opt-in).
        #[serde(default)]
        user: Option<String>,
        target: String,
        link: String,
    }
    let p: P = params("fs.symlink", p)?;
    let c = client(p.sandbox, &p.user)?;
    ctx.block_on(async { fs::symlink(&c, &p.target, &p.link).await.map_err(api) })?;
    Ok(json!({}))
}

fn open(p: Value, ctx: &CallCtx) -> Result<Value, ApiError> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct P {
        sandbox: u64,
        /// Act as this user inside instead of the sandbox's own (opt-in).
        #[serde(default)]
        user: Option<String>,
        path: String,
        /// Refuse anything but a regular file (after following links).
        #[serde(default)]
        regular: bool,
    }
    let p: P = params("fs.open", p)?;
    let c = client(p.sandbox, &p.user)?;
    let r = ctx.block_on(async {
        if p.regular {
            fs::open_regular(&c, &p.path).await
        } else {
            fs::open(&c, &p.path).await
        }
        .map_err(api)
    })?;
    let h = registry::global().insert_stream(Arc::new(ReadStream(Arc::new(r))));
    Ok(json!({ "stream": h }))
}

fn create(p: Value, ctx: &CallCtx) -> Result<Value, ApiError> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct P {
        sandbox: u64,
        /// Act as this user inside instead of the sandbox's own (opt-in).
        #[serde(default)]
        user: Option<String>,
        path: String,
        #[serde(default = "file_mode")]
        mode: u32,
    }
    let p: P = params("fs.create", p)?;
    let c = client(p.sandbox, &p.user)?;
    let w = ctx.block_on(async { fs::create(&c, &p.path, p.mode).await.map_err(api) })?;
    let h = registry::global().insert_stream(Arc::new(CreateStream(w)));
    Ok(json!({ "stream": h }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CopyParams {
    sandbox: u64,
    /// Act as this user inside instead of the sandbox's own (opt-in).
    #[serde(default)]
    user: Option<String>,
    src: String,
    dst: String,
}

fn copy_to_host(p: Value, ctx: &CallCtx) -> Result<Value, ApiError> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct P {
        sandbox: u64,
        /// Act as this user inside instead of the sandbox's own (opt-in).
        #[serde(default)]
        user: Option<String>,
        src: String,
        dst: String,
        /// Cap on the file bytes written to the host (default 1 GiB).
        #[serde(default = "copy_max_bytes")]
        max_bytes: u64,
    }
    let p: P = params("fs.copy_to_host", p)?;
    let c = client(p.sandbox, &p.user)?;
    let dst = PathBuf::from(&p.dst);
    if !dst.is_absolute() {
        return Err(ApiError::invalid_argument(
            "fs.copy_to_host: dst must be an absolute host path",
        ));
    }
    let n = ctx.block_on(async {
        fs::copy_to_host(&c, &p.src, &dst, p.max_bytes)
            .await
            .map_err(api)
    })?;
    Ok(json!({ "bytes": n }))
}

fn copy_from_host(p: Value, ctx: &CallCtx) -> Result<Value, ApiError> {
    let p: CopyParams = params("fs.copy_from_host", p)?;
    let c = client(p.sandbox, &p.user)?;
    let src = PathBuf::from(&p.src);
    if !src.is_absolute() {
        return Err(ApiError::invalid_argument(
            "fs.copy_from_host: src must be an absolute host path",
        ));
    }
    let n = ctx.block_on(async { fs::copy_from_host(&c, &src, &p.dst).await.map_err(api) })?;
    Ok(json!({ "bytes": n }))
}
