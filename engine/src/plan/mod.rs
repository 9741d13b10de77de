//! The plan: a user's `SandboxConfig` in, the resolved launch contract out.
//! Pure (no filesystem, no processes): every default, every validation
//! and every limit of a sandbox is decided here, once, and unit-tested
//! without starting anything. What needs the host (the image store, host
//! paths, named volumes) is resolved by the engine before or after; what
//! needs the sandbox's root (user names) by the agent inside it.
//!
//! create: `check` (config alone) → the engine resolves the root →
//! `sandbox` (config + root → `Plan`) → the engine resolves mount sources
//! → a backend launches the `Plan`. exec: `exec` (the stored sandbox +
//! `ExecOptions` → a complete `ExecRequest`; the agent applies no default
//! but HOME, which depends on the user only it resolves).

pub mod check;
pub mod env;

use lockbox_protocol::{ExecRequest, Limits, NetworkSpec, PortSpec};
use serde::{Deserialize, Serialize};

use crate::config::SandboxConfig;
use crate::error::{EngineError, Result};
use crate::sandbox::{ExecOptions, ImageUsed, StoredConfig};

pub use check::check;

/// The image a sandbox gets when it names none and has no rootfs.
pub const DEFAULT_IMAGE: &str = "base";
/// First in every sandbox's environment; the image's and the caller's
/// entries override it.
pub const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// Root of the sandbox's user namespace, when neither config nor image
/// names a user.
pub const DEFAULT_USER: &str = "0:0";
pub const DEFAULT_WORKDIR: &str = "/";
pub const DEFAULT_TMPFS_MIB: u64 = 64;
/// The writable layer's budget when `disk_mib` is not given. Without one,
/// what the sandbox writes lands on the host's disk with no bound; 0 asks
/// for exactly that (no budget) explicitly.
pub const DEFAULT_DISK_MIB: u64 = 1024;

/// The root filesystem as the engine resolved it: read-only layers and
/// what the image brings.
#[derive(Debug, Clone, Default)]
pub struct Root {
    /// Topmost first; host directories free of links.
    pub layers: Vec<String>,
    /// The image's env (KEY=VALUE entries only), workdir and user.
    pub env: Vec<String>,
    pub workdir: Option<String>,
    pub user: Option<String>,
    pub image: Option<ImageUsed>,
}

/// Where a mount's content comes from, before the engine resolved it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum MountSource {
    /// A host path, as the caller gave it (absolute).
    Host {
        path: String,
    },
    /// A named volume under the engine's home.
    Volume {
        name: String,
    },
    Tmpfs {
        size_mib: u64,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mount {
    pub source: MountSource,
    /// Normalized, absolute, never /, /proc, /dev, /sys or below them.
    pub target: String,
    pub read_only: bool,
}

/// The launch contract: what any backend must build. Nothing here is
/// specific to how it is built (no socket path, no overlay work dir).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub name: String,
    pub hostname: String,
    /// Read-only root layers, topmost first.
    pub layers: Vec<String>,
    pub image: Option<ImageUsed>,
    pub mounts: Vec<Mount>,
    /// The sandbox's environment: defaults, then the image's, then the
    /// caller's, merged by key; bounded.
    pub env: Vec<String>,
    pub workdir: String,
    /// "uid", "uid:gid", "name" or "name:group": resolved by the agent in
    /// the sandbox's root (a name that is not there fails the launch).
    pub user: String,
    pub limits: Limits,
    pub network: NetworkSpec,
    /// The forwarder's policy and secrets (values included): never
    /// serialized, so no plan written anywhere holds a secret.
    #[serde(skip)]
    pub net: Option<crate::network::NetPlan>,
    pub detached: bool,
}

/// The whole plan of a sandbox named `name` over `root`. `cfg` must have
/// passed `check` (create calls it before resolving the root, so nothing
/// is looked up for bad input); it is checked again here, which is cheap,
/// so a plan is never made from an unchecked config.
pub fn sandbox(cfg: &SandboxConfig, name: &str, root: Root) -> Result<Plan> {
    let limits = check(cfg)?;
    if root.layers.is_empty() {
        return Err(EngineError::internal("a root with no layers"));
    }
    let mut mounts = Vec::new();
    for v in &cfg.volumes {
        mounts.push(Mount {
            source: MountSource::Host {
                path: v.host_path.clone(),
            },
            target: check::guest_path("volume", &v.guest_path)?,
            read_only: v.read_only,
        });
    }
    for v in &cfg.named_volumes {
        mounts.push(Mount {
            source: MountSource::Volume {
                name: v.name.clone(),
            },
            target: check::guest_path("volume", &v.guest_path)?,
            read_only: v.read_only,
        });
    }
    for t in &cfg.tmpfs {
        mounts.push(Mount {
            source: MountSource::Tmpfs {
                size_mib: t.size_mib.map_or(DEFAULT_TMPFS_MIB, |s| s as u64),
            },
            target: check::guest_path("tmpfs", &t.guest_path)?,
            read_only: false,
        });
    }
    let hostname = hostname_for(cfg, name);
    let base = vec![DEFAULT_PATH.to_string(), format!("HOSTNAME={hostname}")];
    // The image's env is image content: bounded like the caller's.
    let env = env::merge("image env", &base, &root.env)?;
    let env = env::merge("env", &env, &cfg.env)?;
    let net = crate::network::plan(cfg)?;
    // The placeholders and CA variables win over the caller's entries of
    // the same names: a secret's name is its variable.
    let env = match &net {
        Some(n) => env::merge("env", &env, &crate::network::env(n))?,
        None => env,
    };
    let workdir = match cfg.workdir.as_ref().or(root.workdir.as_ref()) {
        Some(w) => check::guest_path("workdir", w)?,
        None => DEFAULT_WORKDIR.into(),
    };
    let user = match cfg.user.as_ref().or(root.user.as_ref()) {
        Some(u) => {
            check::check_user(u)?;
            u.clone()
        }
        None => DEFAULT_USER.into(),
    };
    Ok(Plan {
        name: name.to_string(),
        hostname,
        layers: root.layers,
        image: root.image,
        mounts,
        env,
        workdir,
        user,
        limits,
        network: NetworkSpec {
            mode: cfg.network,
            ports: cfg
                .ports
                .iter()
                .map(|p| PortSpec {
                    host: p.host as u16,
                    guest: p.guest as u16,
                })
                .collect(),
            forwarder: net.is_some(),
        },
        net,
        detached: cfg.detached,
    })
}

/// A complete exec request: the sandbox's environment under the exec's,
/// its workdir unless the exec names one. The user stays a spec (the
/// agent resolves names in the sandbox's own /etc/passwd); `None` is the
/// sandbox's user as the agent resolved it at launch.
pub fn exec(stored: &StoredConfig, o: &ExecOptions) -> Result<ExecRequest> {
    if o.argv.is_empty() || o.argv[0].is_empty() {
        return Err(EngineError::invalid("exec needs a program name"));
    }
    if o.argv.iter().any(|a| a.contains('\0')) {
        return Err(EngineError::invalid("an argument contains a NUL byte"));
    }
    env::check_list("exec env", &o.env)?;
    let env = env::merge("exec env", &stored.env, &o.env)?;
    if let Some(u) = &o.user {
        check::check_user(u)?;
    }
    let cwd = match &o.cwd {
        Some(c) => check::guest_path("exec dir", c)?,
        None => stored.workdir.clone(),
    };
    if o.timeout_ms == Some(0) {
        return Err(EngineError::invalid("exec timeout must be positive"));
    }
    Ok(ExecRequest {
        argv: o.argv.clone(),
        env,
        cwd,
        user: o.user.clone(),
        tty: o.tty,
        timeout_ms: o.timeout_ms,
        stdin: o.stdin,
        rows: o.rows,
        cols: o.cols,
    })
}

/// The configured host name, or one made from the sandbox name.
pub fn hostname_for(cfg: &SandboxConfig, name: &str) -> String {
    if let Some(h) = &cfg.hostname {
        return h.clone();
    }
    let h: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '-'
            }
        })
        .take(63)
        .collect();
    if h.is_empty() {
        "sandbox".into()
    } else {
        h
    }
}

#[cfg(test)]
mod tests;
