//! Methods every build has: version, noop, inert handles, logging.
use super::CallCtx;
use crate::error::ApiError;
use crate::registry::{self, Kind};
use crate::wire::core::{HandleKind, HandleRef, LogParams, Version};
use crate::wire::Empty;
use std::sync::Arc;

pub(crate) fn version_info() -> Version {
    Version {
        version: env!("CARGO_PKG_VERSION").into(),
        abi: crate::abi::ABI_VERSION,
        git_commit: env!("LOCKBOX_GIT_COMMIT").into(),
        profile: env!("LOCKBOX_BUILD_PROFILE").into(),
        test_hooks: cfg!(feature = "test-hooks"),
    }
}

pub(super) fn version(_: Empty, _: &CallCtx) -> Result<Version, ApiError> {
    Ok(version_info())
}

pub(super) fn noop(_: Empty, _: &CallCtx) -> Result<Empty, ApiError> {
    Ok(Empty {})
}

/// An object with no behaviour: lets tests and the per-call benchmark
/// (bench-ffi, against the release library) exercise the handle lifecycle
/// without an engine.
struct Inert;

pub(super) fn handle_create(_: Empty, _: &CallCtx) -> Result<HandleRef, ApiError> {
    let handle = registry::global().insert(Kind::Object, Arc::new(Inert));
    Ok(HandleRef { handle })
}

pub(super) fn handle_kind(p: HandleRef, _: &CallCtx) -> Result<HandleKind, ApiError> {
    let kind = registry::global().kind(p.handle)?;
    Ok(HandleKind {
        kind: kind.as_str().into(),
    })
}

pub(super) fn log_set_level(p: LogParams, _: &CallCtx) -> Result<Empty, ApiError> {
    let level = crate::log::Level::parse(&p.level)?;
    crate::log::configure(level, p.file.as_deref(), p.stderr)?;
    Ok(Empty {})
}
