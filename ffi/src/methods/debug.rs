//! Test-only methods (feature `test-hooks`): never in release bundles.
use super::mem_pipe::MemPipe;
use super::{params, CallCtx, Table};
use crate::error::ApiError;
use crate::registry;
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

pub fn register(t: &mut Table) {
    t.add("debug.sleep", sleep);
    t.add("debug.panic", panic);
    t.add("debug.pipe", pipe);
    t.add("debug.stats", stats);
    t.add_async("debug.sleep", |p, _| Box::pin(sleep_async(p)));
    t.add_async("debug.panic", |_, _| {
        Box::pin(async { panic!("debug.panic was called") })
    });
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SleepParams {
    ms: u64,
}

fn sleep(p: Value, ctx: &CallCtx) -> Result<Value, ApiError> {
    ctx.block_on(sleep_async(p))
}

async fn sleep_async(p: Value) -> Result<Value, ApiError> {
    let p: SleepParams = params("debug.sleep", p)?;
    tokio::time::sleep(Duration::from_millis(p.ms)).await;
    Ok(json!({}))
}

fn panic(_: Value, _: &CallCtx) -> Result<Value, ApiError> {
    panic!("debug.panic was called");
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct PipeParams {
    #[serde(default)]
    capacity: Option<usize>,
}

/// An in-memory pipe behind one stream handle: what is written can be read.
fn pipe(p: Value, _: &CallCtx) -> Result<Value, ApiError> {
    let p: PipeParams = if p.is_null() {
        PipeParams::default()
    } else {
        params("debug.pipe", p)?
    };
    let cap = p.capacity.unwrap_or(64 * 1024);
    if cap == 0 || cap > 64 << 20 {
        return Err(ApiError::invalid_argument(
            "debug.pipe: capacity must be 1..=64MiB",
        ));
    }
    let h = registry::global().insert_stream(Arc::new(MemPipe::new(cap)));
    Ok(json!({ "handle": h }))
}

/// Live handles and cancel slots, for leak checks.
fn stats(_: Value, _: &CallCtx) -> Result<Value, ApiError> {
    Ok(json!({
        "handles": registry::global().len(),
        "cancel_slots": crate::cancel::table().len(),
        "completions": crate::completion::queue().len(),
    }))
}
