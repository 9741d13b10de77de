//! What the engine tells `lockbox-helper` when it starts a sandbox, and
//! what the helper reports back about what it could enforce.
//!
//! The engine writes a `LaunchSpec` as JSON to `<sandbox dir>/launch.json`
//! and runs `lockbox-helper run <that path>` with:
//! - stdin: the lifeline, a pipe whose write end only the engine holds. When
//!   it reaches EOF (the host process died or closed the sandbox) a
//!   non-detached sandbox is torn down. Detached sandboxes get /dev/null and
//!   ignore it.
//! - stdout: the status pipe. The helper writes exactly one JSON line, a
//!   `LaunchStatus`, once the agent socket accepts connections (or setup
//!   failed), then closes it.
//! - stderr: `<sandbox dir>/helper.log`.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LaunchSpec {
    /// User-visible unique name.
    pub name: String,
    /// Unique id (also used for cgroup names).
    pub id: String,
    /// The sandbox's directory on the host (state, upper dir, sockets).
    pub dir: String,
    /// The agent listens here (created before entering namespaces).
    pub socket_path: String,
    pub rootfs: RootfsSpec,
    pub hostname: String,
    /// Default environment for every exec (KEY=VALUE).
    pub env: Vec<String>,
    pub workdir: String,
    pub uid: u32,
    pub gid: u32,
    pub mounts: Vec<MountSpec>,
    pub limits: Limits,
    pub network: NetworkSpec,
    pub detached: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootfsSpec {
    /// Read-only lower layers, topmost first (image directories, or a
    /// user-given directory). Never written to.
    pub lower: Vec<String>,
    /// Per-sandbox writable layer and overlayfs work dir (inside `dir`).
    pub upper: String,
    pub work: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum MountSpec {
    /// Bind a host path (file or directory) at `target` inside.
    Bind {
        source: String,
        target: String,
        read_only: bool,
    },
    /// A fresh tmpfs at `target` of at most `size_mib`.
    Tmpfs { target: String, size_mib: u64 },
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Limits {
    pub memory_mib: Option<u64>,
    /// Fractional CPUs (1.5 = one and a half cores).
    pub cpus: Option<f64>,
    pub pids: Option<u64>,
    /// Size budget for the writable layer.
    pub disk_mib: Option<u64>,
    /// RLIMIT_NOFILE for processes in the sandbox.
    pub nofile: Option<u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkSpec {
    pub mode: NetworkMode,
    /// (host port on 127.0.0.1, guest port)
    pub ports: Vec<PortSpec>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NetworkMode {
    /// A new network namespace with only loopback.
    #[default]
    None,
    /// User-mode networking (pasta) for outbound connections.
    Outbound,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortSpec {
    pub host: u16,
    pub guest: u16,
}

/// The helper's one-line answer on the status pipe.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LaunchStatus {
    pub ok: bool,
    /// On failure: what went wrong, with context.
    pub error: Option<String>,
    /// On failure: an error code name (see `ErrorCode`).
    pub code: Option<crate::ErrorCode>,
    /// Host pid of the supervising helper process.
    pub helper_pid: Option<u32>,
    pub report: Option<SandboxReport>,
}

/// What the sandbox actually got. Nothing requested is dropped silently:
/// it is either in `enforced` or in `not_enforced` with a reason.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SandboxReport {
    /// e.g. "userns", "mountns", "pidns", "netns", "seccomp", "landlock",
    /// "no_new_privs", "caps", "memory", "cpus", "pids", "disk", "rlimits".
    pub enforced: Vec<String>,
    pub not_enforced: Vec<NotEnforced>,
    pub cgroup: CgroupPaths,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotEnforced {
    pub feature: String,
    pub reason: String,
}

/// Where the sandbox's cgroup lives, for metrics and cleanup.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CgroupPaths {
    /// 1 or 2; 0 when no cgroup could be made.
    pub version: u8,
    /// v2: the one directory. v1: the memory controller's directory.
    pub memory: Option<String>,
    /// v1: cpu,cpuacct directory (v2: same as memory).
    pub cpu: Option<String>,
    /// v1: pids controller directory (v2: same as memory).
    pub pids: Option<String>,
    /// Every directory the sandbox's processes were placed in, one per
    /// hierarchy (v1 may mount cpuacct, for one, apart from cpu): cleanup
    /// removes all of these, not only the three above. Absent in state
    /// written before it existed.
    #[serde(default)]
    pub dirs: Vec<String>,
}
