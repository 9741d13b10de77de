//! The backend seam. To the engine a sandbox is "an isolated environment
//! running the agent, reached through a byte stream": a backend builds one
//! from a `Plan`, says how to reach its agent, and ends it. Everything
//! above (state files, names, handles, exec, files, streams) is the same
//! for every backend.
//!
//! Who owns what (docs/engine.md, "Backends"):
//! - **The host process.** Each sandbox has one host process whose life is
//!   the sandbox's (native: `lockbox-helper`, PID 1's supervisor; microVM:
//!   the confined VMM's supervisor). Its pid and start time are the
//!   sandbox's handle in `state.json`; killing it ends the sandbox.
//! - **The cgroup** is made by that process before the workload (or the
//!   VMM) starts, at `…/lockbox/<id>`, and reported in
//!   `Launched::report.cgroup`. From then on the engine owns it: metrics,
//!   the freezer, removal. The engine never makes one itself. Pause and
//!   Resume are therefore the cgroup freezer for every backend (a frozen
//!   VMM's vCPU threads stop its guest too); a VM backend may add its
//!   VMM's own stop so the guest's clock does not see the gap.
//! - **The stream** is the agent protocol over a Unix stream socket in the
//!   sandbox's directory (native: the agent listens on it; microVM: the
//!   VMM's host end of a virtio-serial or vsock channel). `connect` returns
//!   the multiplexing client over it.
//! - **Info** says which backend runs the sandbox and what stands between
//!   it and the host; what each layer enforced is the launch report's
//!   `enforced` / `not_enforced`, as for every backend.

pub(crate) mod microvm;
pub(crate) mod native;
pub(crate) mod process;

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::process::ChildStdin;

use lockbox_protocol::{MountSpec, SandboxReport};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::client::AgentClient;
use crate::error::{EngineError, Result};
use crate::plan::Plan;
use crate::state::SandboxState;

pub(crate) type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What `Info()` reports about the backend of a sandbox.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendInfo {
    /// "native" (namespaces on the host kernel) or "microvm" (a guest
    /// kernel in a confined VMM).
    pub kind: String,
    /// What stands between the workload and the host kernel.
    pub boundary: String,
}

impl BackendInfo {
    pub fn is_unknown(&self) -> bool {
        self.kind.is_empty()
    }
}

/// What a backend is asked to build.
pub(crate) struct LaunchRequest<'a> {
    /// Unique id: cgroup names, and anything else that must not collide.
    pub id: &'a str,
    /// The sandbox's directory: the backend's own files (sockets, writable
    /// layer, logs) live here and go with it.
    pub dir: &'a Path,
    pub plan: &'a Plan,
    /// The plan's mounts with their host sources resolved by the engine
    /// (link-free paths, named volumes made), in the plan's order.
    pub mounts: Vec<MountSpec>,
    /// Start the VM from this checkpoint instead of booting it (microVM
    /// only; the engine never asks another backend).
    pub restore: Option<&'a microvm::checkpoint::Restore>,
}

/// A running sandbox, as its backend hands it over.
pub(crate) struct Launched {
    /// The host process whose life is the sandbox's.
    pub pid: u32,
    /// What was enforced and where the cgroup is.
    pub report: SandboxReport,
    /// The write end of the lifeline (non-detached only): dropping it tells
    /// the sandbox's host process to tear it down.
    pub lifeline: Option<ChildStdin>,
    /// Becomes true when the host process has exited.
    pub exited: watch::Receiver<bool>,
}

pub(crate) trait Backend: Send + Sync {
    fn info(&self) -> BackendInfo;

    /// Builds and starts the sandbox; returns once its agent accepts
    /// connections. Dropping the future (or an error) leaves nothing
    /// running.
    fn launch<'a>(&'a self, req: LaunchRequest<'a>) -> BoxFuture<'a, Result<Launched>>;

    /// A new connection to the agent of the sandbox in `dir`, checked to
    /// be the one named `name`.
    fn connect<'a>(&'a self, dir: &'a Path, name: &'a str) -> BoxFuture<'a, Result<AgentClient>> {
        Box::pin(AgentClient::connect(dir, name))
    }

    /// SIGKILL to the sandbox's host process (verified by start time): the
    /// whole sandbox dies with it.
    fn kill(&self, st: &SandboxState) {
        process::kill_verified(st.helper_pid, st.helper_start);
    }

    /// Watches the host process of a sandbox this process did not start
    /// (reattach).
    fn watch(&self, st: &SandboxState) -> watch::Receiver<bool> {
        process::watch_exit(st.helper_pid, None)
    }
}

pub(crate) const NATIVE: &str = "native";

/// The kind recorded for sandboxes made before backends were recorded.
pub(crate) fn default_kind() -> String {
    NATIVE.into()
}

static NATIVE_BACKEND: native::Native = native::Native::new();
static MICROVM_BACKEND: microvm::MicroVm = microvm::MicroVm::new();

/// The backend a sandbox of `kind` runs on.
pub(crate) fn of(kind: &str) -> Result<&'static dyn Backend> {
    match kind {
        NATIVE | "" => Ok(&NATIVE_BACKEND),
        microvm::MICROVM => Ok(&MICROVM_BACKEND),
        k => Err(EngineError::unsupported(format!(
            "sandbox backend {k:?} is not available in this build"
        ))),
    }
}

/// `info()` of a recorded kind; a kind this build does not know is
/// reported by name alone.
pub(crate) fn info_of(kind: &str) -> BackendInfo {
    of(kind).map(|b| b.info()).unwrap_or_else(|_| BackendInfo {
        kind: kind.to_string(),
        ..Default::default()
    })
}
