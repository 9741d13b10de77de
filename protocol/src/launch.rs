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
    /// The sandbox's user: "uid", "uid:gid", "name" or "name:group". Names
    /// are resolved by the agent against the sandbox's own /etc/passwd and
    /// /etc/group, once the root is built; an unknown name fails the launch.
    pub user: String,
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

/// Bounds of the limits, shared by the engine's plan (which refuses a
/// config outside them) and the helper (which refuses a spec outside them):
/// one set of numbers for both sides.
pub mod bounds {
    pub const MIN_MEMORY_MIB: u64 = 8;
    pub const MAX_MEMORY_MIB: u64 = 1 << 20; // 1 TiB
    pub const MAX_CPUS: f64 = 1024.0;
    pub const MAX_PIDS: u64 = 1 << 22;
    pub const MAX_DISK_MIB: u64 = 1 << 24; // 16 TiB
    pub const MAX_NOFILE: u64 = 1 << 20;
    /// A user spec ("name:group"): user and group names are at most 32
    /// bytes on Linux; this leaves room and bounds what an error quotes.
    pub const MAX_USER_SPEC_BYTES: usize = 256;
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

impl Limits {
    /// Every limit inside `bounds`; the message names the first one that
    /// is not.
    pub fn check(&self) -> Result<(), String> {
        use bounds::*;
        let range = |what: &str, v: Option<u64>, min: u64, max: u64| match v {
            Some(v) if v < min || v > max => {
                Err(format!("{what} {v} is out of range ({min}..={max})"))
            }
            _ => Ok(()),
        };
        range(
            "memory (MiB)",
            self.memory_mib,
            MIN_MEMORY_MIB,
            MAX_MEMORY_MIB,
        )?;
        range("pids", self.pids, 1, MAX_PIDS)?;
        range("disk (MiB)", self.disk_mib, 1, MAX_DISK_MIB)?;
        range("nofile", self.nofile, 1, MAX_NOFILE)?;
        if let Some(c) = self.cpus {
            if !c.is_finite() || c <= 0.0 || c > MAX_CPUS {
                return Err(format!("cpus {c} is out of range (0 < cpus <= {MAX_CPUS})"));
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkSpec {
    pub mode: NetworkMode,
    /// (host port on 127.0.0.1, guest port)
    pub ports: Vec<PortSpec>,
    /// The sandbox's only interface is a tap served by the lockbox-net
    /// forwarder, which the helper starts (mode must be `None`; published
    /// ports are bound by the helper and relayed by the forwarder);
    /// the engine sends the policy over `<dir>/net.sock`.
    #[serde(default)]
    pub forwarder: bool,
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
