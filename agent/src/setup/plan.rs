//! What the supervisor hands the sandbox child besides the spec: which
//! layers and volumes arrive as prepared (idmapped) mount fds and which
//! must be opened by path.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Source {
    /// Index into the fds received with the plan.
    Fd(usize),
    Path(String),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Plan {
    /// One per `rootfs.lower`, same order.
    pub lowers: Vec<Source>,
    /// The directory holding upper and work, plus their names inside it.
    pub upper_base: Source,
    pub upper_name: String,
    pub work_name: String,
    /// One per `MountSpec::Bind` in the spec, same order.
    pub binds: Vec<Source>,
    /// Mount fds already carry ro/nosuid/nodev; path sources need a remount.
    pub rootless: bool,
    /// PID 1's pid on the host (reported in HelloAck).
    pub host_pid: u32,
}

/// The supervisor's second message, after the plan: the child is in its
/// cgroup and the user namespace's quotas are set, so the child may make
/// its cgroup namespace and become the agent.
pub const GO: &[u8] = b"go";

/// The child's answer once the sandbox is set up (or failed).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SetupResult {
    pub error: Option<String>,
    pub code: Option<lockbox_protocol::ErrorCode>,
    pub report: crate::report::Report,
    /// The child's step timestamps when LOCKBOX_TRACE is on (see `trace`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trace: Vec<(String, u64)>,
}
