//! The methods behind `lockbox_call` and `lockbox_submit`: one table (the
//! [`Method`] enum), one dispatch.
//!
//! Adding a method: its params and result types go in `wire/<group>.rs`,
//! its handler in `methods/<group>.rs`, one line in the table below, and a
//! golden file `ffi/tests/golden/<name>.json` (the test fails without it).
//! A handler gets its params decoded (unknown fields are
//! `invalid_argument`) and runs async engine work with
//! [`CallCtx::block_on`], which honours the call's cancel id.
//!
//! Methods that mostly wait also have an async form (`async ...` in the
//! table): `lockbox_submit` runs it on the runtime without holding a caller
//! thread (see completion.rs). Write the body once as an `async fn` and
//! make the sync handler `ctx.block_on` it.
use crate::cancel::CancelToken;
use crate::error::ApiError;
use crate::stream::BoxFuture;
use crate::wire::{self, Empty, Name, StreamRef};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::borrow::Cow;
use std::future::Future;

mod core;
#[cfg(feature = "test-hooks")]
mod debug;
mod engine;
mod exec;
mod fs;
mod host;
mod image;
#[cfg(any(test, feature = "test-hooks"))]
pub(crate) mod mem_pipe;
mod sandbox;
mod snapshot;
mod streams;
mod table;
mod volume;

pub(crate) use self::core::version_info;

use table::{async_form, methods};

methods! {
    Version = "version": Empty => wire::core::Version, core::version;
    Noop = "noop": Empty => Empty, core::noop;
    HandleCreate = "handle.create": Empty => wire::core::HandleRef, core::handle_create;
    HandleKind = "handle.kind": wire::core::HandleRef => wire::core::HandleKind, core::handle_kind;
    LogSetLevel = "log.set_level": wire::core::LogParams => Empty, core::log_set_level;

    SandboxCreate = "sandbox.create": wire::sandbox::SandboxConfig => wire::sandbox::Opened, sandbox::create;
    SandboxGet = "sandbox.get": Name => wire::sandbox::Opened, sandbox::get;
    SandboxList = "sandbox.list": Empty => wire::sandbox::SandboxList, sandbox::list;
    SandboxRemove = "sandbox.remove": wire::sandbox::RemoveParams => Empty, sandbox::remove;
    SandboxInfo = "sandbox.info": wire::sandbox::SandboxRef => wire::sandbox::SandboxInfo, sandbox::info;
    SandboxMetrics = "sandbox.metrics": wire::sandbox::SandboxRef => wire::sandbox::Metrics, sandbox::metrics;
    SandboxStop = "sandbox.stop": wire::sandbox::StopParams => Empty, sandbox::stop;
    SandboxKill = "sandbox.kill": wire::sandbox::SandboxRef => Empty, sandbox::kill;
    // Only awaits the close task (already on the runtime), so it can run
    // there without a caller thread; create/remove/stop/kill do blocking
    // filesystem and process work inline and stay sync-only.
    SandboxClose = "sandbox.close": wire::sandbox::SandboxRef => Empty, sandbox::close, async sandbox::close_async;
    SandboxPause = "sandbox.pause": wire::sandbox::SandboxRef => Empty, snapshot::pause;
    SandboxResume = "sandbox.resume": wire::sandbox::SandboxRef => Empty, snapshot::resume;
    SandboxSnapshot = "sandbox.snapshot": wire::snapshot::SnapshotParams => wire::image::ImageInfo, snapshot::snapshot;
    SandboxFork = "sandbox.fork": wire::snapshot::ForkParams => wire::snapshot::Forked, snapshot::fork;
    SandboxCheckpoint = "sandbox.checkpoint": wire::snapshot::CheckpointParams => wire::snapshot::CheckpointInfo, snapshot::checkpoint;
    SandboxRestore = "sandbox.restore": wire::snapshot::RestoreParams => wire::sandbox::Opened, snapshot::restore;
    CheckpointList = "checkpoint.list": Empty => wire::snapshot::CheckpointList, snapshot::checkpoint_list;
    CheckpointRemove = "checkpoint.remove": Name => Empty, snapshot::checkpoint_remove;
    SandboxSetNetworkPolicy = "sandbox.set_network_policy": wire::sandbox::SetNetworkPolicyParams => Empty, sandbox::set_network_policy;
    SandboxNetworkEvents = "sandbox.network_events": wire::sandbox::NetworkEventsParams => wire::sandbox::NetworkEvents, sandbox::network_events;

    ExecStart = "exec.start": wire::exec::StartParams => wire::exec::Started, exec::start, async exec::start_async;
    ExecWait = "exec.wait": wire::exec::ExecRef => wire::exec::Exited, exec::wait, async exec::wait_async;
    ExecSignal = "exec.signal": wire::exec::SignalParams => Empty, exec::signal;
    ExecResize = "exec.resize": wire::exec::ResizeParams => Empty, exec::resize;

    FsStat = "fs.stat": wire::fs::PathParams => wire::fs::FileInfo, fs::stat;
    FsReadDir = "fs.read_dir": wire::fs::PathParams => wire::fs::DirEntries, fs::read_dir;
    FsMkdirAll = "fs.mkdir_all": wire::fs::MkdirParams => Empty, fs::mkdir_all;
    FsRemove = "fs.remove": wire::fs::PathParams => Empty, fs::remove;
    FsRemoveAll = "fs.remove_all": wire::fs::PathParams => Empty, fs::remove_all;
    FsRename = "fs.rename": wire::fs::RenameParams => Empty, fs::rename;
    FsSymlink = "fs.symlink": wire::fs::SymlinkParams => Empty, fs::symlink;
    FsOpen = "fs.open": wire::fs::OpenParams => StreamRef, fs::open;
    FsCreate = "fs.create": wire::fs::CreateParams => StreamRef, fs::create;
    FsCopyToHost = "fs.copy_to_host": wire::fs::CopyToHostParams => wire::fs::Copied, fs::copy_to_host;
    FsCopyFromHost = "fs.copy_from_host": wire::fs::CopyFromHostParams => wire::fs::Copied, fs::copy_from_host;

    ImageList = "image.list": Empty => wire::image::ImageList, image::list;
    ImageInspect = "image.inspect": Name => wire::image::ImageInfo, image::inspect;
    ImageRemove = "image.remove": Name => Empty, image::remove;
    ImagePrune = "image.prune": Empty => wire::image::PruneReport, image::prune;
    ImageImport = "image.import": wire::image::ImportParams => wire::image::ImageInfo, image::import;
    ImagePull = "image.pull": wire::image::PullParams => wire::image::ImageInfo, image::pull;
    ImageExport = "image.export": wire::snapshot::ExportParams => wire::snapshot::Exported, snapshot::export;

    HostVmCheck = "host.vm_check": Empty => wire::host::VmCheck, host::vm_check, async host::vm_check_async;

    VolumeCreate = "volume.create": Name => wire::volume::VolumeInfo, volume::create;
    VolumeList = "volume.list": Empty => wire::volume::VolumeList, volume::list;
    VolumeRemove = "volume.remove": Name => Empty, volume::remove;

    #[cfg(feature = "test-hooks")]
    DebugSleep = "debug.sleep": wire::debug::SleepParams => Empty, debug::sleep, async debug::sleep_async;
    #[cfg(feature = "test-hooks")]
    DebugPanic = "debug.panic": Empty => Empty, debug::panic, async debug::panic_async;
    #[cfg(feature = "test-hooks")]
    DebugPipe = "debug.pipe": wire::debug::PipeParams => wire::core::HandleRef, debug::pipe;
    #[cfg(feature = "test-hooks")]
    DebugStats = "debug.stats": Empty => wire::debug::Stats, debug::stats;
}

/// A submitted method: decodes its params and runs to its encoded result.
pub(crate) type AsyncHandler = fn(Value) -> BoxFuture<'static, Result<Vec<u8>, ApiError>>;

/// What a handler knows about its call.
pub(crate) struct CallCtx {
    pub cancel: CancelToken,
}

impl CallCtx {
    /// Runs `fut` on the library runtime until it finishes or the call is
    /// canceled (then the future is dropped and `canceled` returned).
    pub fn block_on<T, F>(&self, fut: F) -> Result<T, ApiError>
    where
        F: Future<Output = Result<T, ApiError>>,
    {
        self.cancel.check()?;
        let cancel = self.cancel.clone();
        crate::runtime::runtime().block_on(async move {
            tokio::select! {
                biased;
                _ = cancel.canceled() => Err(ApiError::canceled()),
                r = fut => r,
            }
        })
    }
}

/// A method's params: an object (absent or null reads as `{}`); any
/// mismatch is `invalid_argument`.
fn decode<P: DeserializeOwned>(method: &str, v: Value) -> Result<P, ApiError> {
    let v = match v {
        Value::Null => Value::Object(Default::default()),
        v @ Value::Object(_) => v,
        _ => {
            return Err(ApiError::invalid_argument(format!(
                "{method}: bad params: not an object"
            )))
        }
    };
    serde_json::from_value(v)
        .map_err(|e| ApiError::invalid_argument(format!("{method}: bad params: {e}")))
}

pub(crate) fn encode<R: Serialize>(r: &R) -> Result<Vec<u8>, ApiError> {
    serde_json::to_vec(r).map_err(|e| ApiError::internal(format!("result: {e}")))
}

#[derive(Deserialize)]
struct Request<'a> {
    #[serde(borrow)]
    method: Cow<'a, str>,
    #[serde(default)]
    params: Value,
}

fn parse(req: &[u8]) -> Result<Request<'_>, ApiError> {
    serde_json::from_slice(req)
        .map_err(|e| ApiError::invalid_argument(format!("malformed request: {e}")))
}

/// Parses a request, runs its method, returns the encoded result.
pub(crate) fn dispatch(req: &[u8], ctx: &CallCtx) -> Result<Vec<u8>, ApiError> {
    let req = parse(req)?;
    let method = Method::from_name(&req.method)
        .ok_or_else(|| ApiError::unsupported(format!("unknown method {:?}", req.method)))?;
    crate::lb_log!(crate::log::Level::Debug, "call {}", method.name());
    method.call(req.params, ctx)
}

/// The async form and params for a request; None when its method has no
/// async form (unknown methods included: `lockbox_call` reports them). A
/// malformed request is the error `dispatch` would give.
pub(crate) fn async_dispatch(req: &[u8]) -> Result<Option<(AsyncHandler, Value)>, ApiError> {
    let req = parse(req)?;
    let Some(h) = Method::from_name(&req.method).and_then(Method::async_form) else {
        return Ok(None);
    };
    crate::lb_log!(crate::log::Level::Debug, "call {} (submitted)", req.method);
    Ok(Some((h, req.params)))
}

/// Golden round trip: decoding (unknown fields rejected) and encoding
/// again gives the same JSON value. The golden files fill every field, so
/// this also catches a field the type has and the file lacks, and (for the
/// engine's result types, which accept unknown fields) one it drops.
#[cfg(test)]
fn same<T: Serialize + DeserializeOwned>(what: &str, golden: &Value) -> Result<(), String> {
    let typed: T =
        serde_json::from_value(golden.clone()).map_err(|e| format!("{what}: decode: {e}"))?;
    let again = serde_json::to_value(&typed).map_err(|e| format!("{what}: encode: {e}"))?;
    if &again != golden {
        return Err(format!(
            "{what}: differs after a round trip\n golden: {golden}\n  again: {again}"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
