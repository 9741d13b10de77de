//! host.*: what this host can run. `host.vm_check` probes KVM with a
//! bounded boot (cached per host and guest kernel under the engine's
//! home), so it may take up to ~20 s the first time; it has an async form.
use super::CallCtx;
use crate::error::ApiError;
use crate::wire::host::VmCheck;
use crate::wire::Empty;

pub(super) fn vm_check(p: Empty, ctx: &CallCtx) -> Result<VmCheck, ApiError> {
    ctx.block_on(vm_check_async(p))
}

pub(super) async fn vm_check_async(_: Empty) -> Result<VmCheck, ApiError> {
    let engine = super::engine::engine()?;
    Ok(lockbox_engine::vm_check(engine.home()).await)
}
