//! exec.*: start a process (its stdio become stream handles), wait,
//! signal, resize.
use super::engine::sandbox;
use super::streams::{ReadStream, WriteStream};
use super::CallCtx;
use crate::error::ApiError;
use crate::registry::{self, Kind};
use crate::wire::exec::{ExecRef, Exited, ResizeParams, SignalParams, StartParams, Started};
use crate::wire::Empty;
use lockbox_engine::ExecProcess;
use std::sync::Arc;

pub(super) fn start(p: StartParams, ctx: &CallCtx) -> Result<Started, ApiError> {
    ctx.block_on(start_async(p))
}

pub(super) async fn start_async(p: StartParams) -> Result<Started, ApiError> {
    let (h, opts) = p.into_parts();
    let sb = sandbox(h)?;
    let mut proc = sb.exec_start(&opts).await?;
    // The stream handles own the streams: closing one discards the rest of
    // that output instead of stalling the process.
    let (w_in, r_out, r_err) = proc.take_stdio();
    let reg = registry::global();
    let stdout = r_out.map(|r| reg.insert_stream(Arc::new(ReadStream(r))));
    let stderr = r_err.map(|r| reg.insert_stream(Arc::new(ReadStream(r))));
    let stdin = w_in.map(|w| reg.insert_stream(Arc::new(WriteStream(w))));
    let pid = proc.pid;
    let exec = reg.insert(Kind::Exec, Arc::new(proc));
    Ok(Started {
        exec,
        pid,
        stdin,
        stdout,
        stderr,
    })
}

fn process(h: u64) -> Result<Arc<ExecProcess>, ApiError> {
    registry::global().get::<ExecProcess>(h, Kind::Exec)
}

pub(super) fn wait(p: ExecRef, ctx: &CallCtx) -> Result<Exited, ApiError> {
    ctx.block_on(wait_async(p))
}

pub(super) async fn wait_async(p: ExecRef) -> Result<Exited, ApiError> {
    let st = process(p.exec)?.wait().await?;
    Ok(Exited {
        exit_code: st.exit_code(),
        code: st.code,
        signal: st.signal,
        timed_out: st.timed_out,
    })
}

pub(super) fn signal(p: SignalParams, _: &CallCtx) -> Result<Empty, ApiError> {
    process(p.exec)?.signal(p.signal)?;
    Ok(Empty {})
}

pub(super) fn resize(p: ResizeParams, _: &CallCtx) -> Result<Empty, ApiError> {
    process(p.exec)?.resize(p.rows, p.cols)?;
    Ok(Empty {})
}
