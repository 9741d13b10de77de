//! exec.* methods: start a process (its stdio become stream handles), wait,
//! signal, resize.
use super::sandbox::{api, sandbox};
use super::{params, CallCtx, Table};
use crate::error::ApiError;
use crate::registry::{self, Kind};
use crate::stream::{BoxFuture, ByteStream};
use lockbox_engine::{ExecOptions, ExecProcess, StreamReader, StreamWriter};
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;

pub fn register(t: &mut Table) {
    t.add("exec.start", start);
    t.add("exec.wait", wait);
    t.add("exec.signal", signal);
    t.add("exec.resize", resize);
    t.add_async("exec.start", |p, _| Box::pin(start_async(p)));
    t.add_async("exec.wait", |p, _| Box::pin(wait_async(p)));
}

/// A read-only stream handle over an engine reader.
pub(crate) struct ReadStream(pub Arc<StreamReader>);

impl ByteStream for ReadStream {
    fn read<'a>(&'a self, buf: &'a mut [u8]) -> BoxFuture<'a, Result<usize, ApiError>> {
        Box::pin(async move { self.0.read(buf).await.map_err(api) })
    }
}

/// A write-only stream handle over an engine writer (exec stdin).
struct WriteStream(Arc<StreamWriter>);

impl ByteStream for WriteStream {
    fn write<'a>(&'a self, data: &'a [u8]) -> BoxFuture<'a, Result<(), ApiError>> {
        Box::pin(async move { self.0.write_all(data).await.map_err(api) })
    }
    fn close_write(&self) -> BoxFuture<'_, Result<(), ApiError>> {
        Box::pin(async move { self.0.close_write().await.map_err(api) })
    }
}

/// Params: `{"sandbox": handle, ...ExecOptions}`.
fn start(p: Value, ctx: &CallCtx) -> Result<Value, ApiError> {
    ctx.block_on(start_async(p))
}

async fn start_async(mut p: Value) -> Result<Value, ApiError> {
    let h = p
        .as_object_mut()
        .and_then(|m| m.remove("sandbox"))
        .and_then(|v| v.as_u64())
        .ok_or_else(|| ApiError::invalid_argument("exec.start: missing sandbox handle"))?;
    let opts: ExecOptions = params("exec.start", p)?;
    let sb = sandbox(h)?;
    let mut proc = sb.exec_start(&opts).await.map_err(api)?;
    // The stream handles own the streams: closing one discards the rest of
    // that output instead of stalling the process.
    let (w_in, r_out, r_err) = proc.take_stdio();
    let reg = registry::global();
    let stdout = r_out.map(|r| reg.insert_stream(Arc::new(ReadStream(r))));
    let stderr = r_err.map(|r| reg.insert_stream(Arc::new(ReadStream(r))));
    let stdin = w_in.map(|w| reg.insert_stream(Arc::new(WriteStream(w))));
    let pid = proc.pid;
    let h = reg.insert(Kind::Exec, Arc::new(proc));
    Ok(json!({ "exec": h, "pid": pid, "stdin": stdin, "stdout": stdout, "stderr": stderr }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ExecHandle {
    exec: u64,
}

fn wait(p: Value, ctx: &CallCtx) -> Result<Value, ApiError> {
    ctx.block_on(wait_async(p))
}

async fn wait_async(p: Value) -> Result<Value, ApiError> {
    let p: ExecHandle = params("exec.wait", p)?;
    let proc = registry::global().get::<ExecProcess>(p.exec, Kind::Exec)?;
    let st = proc.wait().await.map_err(api)?;
    Ok(json!({
        "exit_code": st.exit_code(),
        "code": st.code,
        "signal": st.signal,
        "timed_out": st.timed_out,
    }))
}

fn signal(p: Value, _: &CallCtx) -> Result<Value, ApiError> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct P {
        exec: u64,
        signal: i32,
    }
    let p: P = params("exec.signal", p)?;
    let proc = registry::global().get::<ExecProcess>(p.exec, Kind::Exec)?;
    proc.signal(p.signal).map_err(api)?;
    Ok(json!({}))
}

fn resize(p: Value, _: &CallCtx) -> Result<Value, ApiError> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct P {
        exec: u64,
        rows: u16,
        cols: u16,
    }
    let p: P = params("exec.resize", p)?;
    let proc = registry::global().get::<ExecProcess>(p.exec, Kind::Exec)?;
    proc.resize(p.rows, p.cols).map_err(api)?;
    Ok(json!({}))
}
