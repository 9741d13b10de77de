//! Test-only methods (feature `test-hooks`): never in release bundles.
use super::mem_pipe::MemPipe;
use super::CallCtx;
use crate::error::ApiError;
use crate::registry;
use crate::wire::core::HandleRef;
use crate::wire::debug::{PipeParams, SleepParams, Stats};
use crate::wire::Empty;
use std::sync::Arc;
use std::time::Duration;

pub(super) fn sleep(p: SleepParams, ctx: &CallCtx) -> Result<Empty, ApiError> {
    ctx.block_on(sleep_async(p))
}

pub(super) async fn sleep_async(p: SleepParams) -> Result<Empty, ApiError> {
    tokio::time::sleep(Duration::from_millis(p.ms)).await;
    Ok(Empty {})
}

pub(super) fn panic(_: Empty, _: &CallCtx) -> Result<Empty, ApiError> {
    panic!("debug.panic was called");
}

pub(super) async fn panic_async(_: Empty) -> Result<Empty, ApiError> {
    panic!("debug.panic was called");
}

/// An in-memory pipe behind one stream handle: what is written can be read.
pub(super) fn pipe(p: PipeParams, _: &CallCtx) -> Result<HandleRef, ApiError> {
    let cap = p.capacity.unwrap_or(64 * 1024);
    if cap == 0 || cap > 64 << 20 {
        return Err(ApiError::invalid_argument(
            "debug.pipe: capacity must be 1..=64MiB",
        ));
    }
    let handle = registry::global().insert_stream(Arc::new(MemPipe::new(cap)));
    Ok(HandleRef { handle })
}

/// Live handles and cancel slots, for leak checks.
pub(super) fn stats(_: Empty, _: &CallCtx) -> Result<Stats, ApiError> {
    Ok(Stats {
        handles: registry::global().len(),
        cancel_slots: crate::cancel::table().len(),
        completions: crate::completion::queue().len(),
    })
}
