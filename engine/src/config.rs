//! What a user asks for when creating a sandbox, and its validation. Limits
//! that are negative, zero or absurd are rejected here, before anything is
//! made on disk.

use std::collections::BTreeMap;
use std::path::{Component, Path};

use lockbox_protocol::NetworkMode;
use serde::{Deserialize, Serialize};

use crate::error::{EngineError, Result};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SandboxConfig {
    pub name: Option<String>,
    /// A named image, an OCI reference or a `sha256:` digest (resolved
    /// through the image store, see images.rs).
    pub image: Option<String>,
    /// A host directory used read-only as the root (instead of an image).
    pub rootfs: Option<String>,
    pub cpus: Option<f64>,
    pub memory_mib: Option<i64>,
    pub pids: Option<i64>,
    pub disk_mib: Option<i64>,
    pub env: Vec<String>,
    pub workdir: Option<String>,
    pub hostname: Option<String>,
    /// "uid", "uid:gid", or a user name from the image's /etc/passwd.
    pub user: Option<String>,
    pub volumes: Vec<VolumeMount>,
    pub named_volumes: Vec<NamedVolumeMount>,
    pub tmpfs: Vec<TmpfsMount>,
    pub network: NetworkMode,
    pub ports: Vec<Port>,
    pub detached: bool,
    pub replace: bool,
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeMount {
    pub host_path: String,
    pub guest_path: String,
    #[serde(default)]
    pub read_only: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamedVolumeMount {
    pub name: String,
    pub guest_path: String,
    #[serde(default)]
    pub read_only: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TmpfsMount {
    pub guest_path: String,
    #[serde(default)]
    pub size_mib: Option<i64>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Port {
    pub host: i64,
    pub guest: i64,
}

pub const MAX_MEMORY_MIB: i64 = 1 << 20; // 1 TiB
pub const MIN_MEMORY_MIB: i64 = 8;
pub const MAX_CPUS: f64 = 1024.0;
pub const MAX_PIDS: i64 = 1 << 22;
pub const MAX_DISK_MIB: i64 = 1 << 24; // 16 TiB
pub const DEFAULT_TMPFS_MIB: u64 = 64;

// Bounds on what a caller hands the engine, so input can cost neither
// unbounded memory (every ListSandboxes returns labels and config again)
// nor unbounded time. docs/configuration.md ("Input limits") lists them;
// past one the call is `invalid_argument`.

/// Largest `lockbox_call` request, checked before the JSON is parsed (a
/// parse can take ~16x its input in memory).
pub const MAX_REQUEST_BYTES: usize = 8 << 20;
/// Sandbox and volume names (they become directory and cgroup names).
pub const MAX_NAME_BYTES: usize = 63;
/// Host names: the kernel takes 64 bytes (HOST_NAME_MAX); 63 is one DNS
/// label.
pub const MAX_HOSTNAME_BYTES: usize = 63;
/// Entries in one environment: a sandbox's, an exec's, and the merged
/// environment a process starts with.
pub const MAX_ENV_ENTRIES: usize = 4096;
pub const MAX_ENV_KEY_BYTES: usize = 256;
/// One `KEY=VALUE` entry: the kernel's per-string limit for execve
/// (MAX_ARG_STRLEN, 128 KiB with the terminating NUL).
pub const MAX_ENV_ENTRY_BYTES: usize = 128 * 1024 - 1;
/// All entries of one environment together, one NUL each included.
pub const MAX_ENV_TOTAL_BYTES: usize = 1 << 20;
pub const MAX_LABELS: usize = 64;
pub const MAX_LABEL_KEY_BYTES: usize = 128;
pub const MAX_LABEL_VALUE_BYTES: usize = 4096;

/// The writable layer's budget when `disk_mib` is not given. Without one,
/// what the sandbox writes lands on the host's disk with no bound; 0 asks
/// for exactly that (no budget) explicitly.
pub const DEFAULT_DISK_MIB: u64 = 1024;

fn in_range(what: &str, v: Option<i64>, min: i64, max: i64) -> Result<Option<u64>> {
    match v {
        None => Ok(None),
        Some(v) if v < min || v > max => Err(EngineError::invalid(format!(
            "{what} {v} is out of range ({min}..={max})"
        ))),
        Some(v) => Ok(Some(v as u64)),
    }
}

/// An absolute, normalized path inside the sandbox without `..`.
pub fn guest_path(what: &str, p: &str) -> Result<String> {
    let path = Path::new(p);
    if !path.is_absolute() {
        return Err(EngineError::invalid(format!(
            "{what} {p:?} must be an absolute path inside the sandbox"
        )));
    }
    let mut out = String::new();
    for c in path.components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(s) => {
                out.push('/');
                out.push_str(&s.to_string_lossy());
            }
            Component::ParentDir | Component::Prefix(_) => {
                return Err(EngineError::invalid(format!(
                    "{what} {p:?} must not contain '..'"
                )))
            }
        }
    }
    if out.is_empty() {
        out.push('/');
    }
    Ok(out)
}

fn mount_target(what: &str, p: &str) -> Result<String> {
    let g = guest_path(what, p)?;
    // The kernel filesystems the helper mounts itself: a mount over or
    // under them would hide a mask or a read-only flag.
    let kernel = ["/proc", "/dev", "/sys"]
        .iter()
        .any(|k| g == *k || g.starts_with(&format!("{k}/")));
    if g == "/" || kernel {
        return Err(EngineError::invalid(format!(
            "{what} cannot be mounted at {g}"
        )));
    }
    Ok(g)
}

/// Limits, after validation, in the units of the launch spec.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CheckedLimits {
    pub memory_mib: Option<u64>,
    pub cpus: Option<f64>,
    pub pids: Option<u64>,
    pub disk_mib: Option<u64>,
}

impl SandboxConfig {
    /// The writable layer's budget in MiB as applied (the default when none
    /// was given), or `None` when the caller asked for no budget (0).
    pub fn effective_disk_mib(&self) -> Option<u64> {
        match self.disk_mib {
            None => Some(DEFAULT_DISK_MIB),
            Some(v) if v <= 0 => None,
            Some(v) => Some(v as u64),
        }
    }

    /// Validates everything that does not need the filesystem.
    pub fn check(&self) -> Result<CheckedLimits> {
        if let Some(n) = &self.name {
            crate::names::validate("sandbox", n)?;
        }
        if let Some(i) = &self.image {
            if i.is_empty() {
                return Err(EngineError::invalid(
                    "image is empty; leave it out for the default image",
                ));
            }
            crate::images::form_of(i)?;
        }
        if self.image.is_some() && self.rootfs.is_some() {
            return Err(EngineError::invalid(
                "give either an image or a rootfs directory, not both",
            ));
        }
        if let Some(c) = self.cpus {
            if !c.is_finite() || c <= 0.0 || c > MAX_CPUS {
                return Err(EngineError::invalid(format!(
                    "cpus {c} is out of range (0 < cpus <= {MAX_CPUS})"
                )));
            }
        }
        let limits = CheckedLimits {
            memory_mib: in_range(
                "memory (MiB)",
                self.memory_mib,
                MIN_MEMORY_MIB,
                MAX_MEMORY_MIB,
            )?,
            cpus: self.cpus,
            pids: in_range("pids", self.pids, 1, MAX_PIDS)?,
            disk_mib: match self.disk_mib {
                None => Some(DEFAULT_DISK_MIB),
                Some(0) => None,
                v => in_range("disk (MiB)", v, 1, MAX_DISK_MIB)?,
            },
        };
        check_env_list("env", &self.env)?;
        if let Some(w) = &self.workdir {
            guest_path("workdir", w)?;
        }
        if let Some(h) = &self.hostname {
            let ok = !h.is_empty()
                && h.len() <= MAX_HOSTNAME_BYTES
                && h.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
            if !ok {
                return Err(EngineError::invalid(format!("hostname {h:?} is not valid")));
            }
        }
        let mut targets = std::collections::HashSet::new();
        let mut target = |t: String| {
            if targets.insert(t.clone()) {
                Ok(())
            } else {
                Err(EngineError::invalid(format!("two mounts at {t}")))
            }
        };
        for v in &self.volumes {
            if !Path::new(&v.host_path).is_absolute() {
                return Err(EngineError::invalid(format!(
                    "volume host path {:?} must be absolute",
                    v.host_path
                )));
            }
            target(mount_target("volume path", &v.guest_path)?)?;
        }
        for v in &self.named_volumes {
            crate::names::validate("volume", &v.name)?;
            target(mount_target("volume path", &v.guest_path)?)?;
        }
        for t in &self.tmpfs {
            in_range("tmpfs size (MiB)", t.size_mib, 1, MAX_MEMORY_MIB)?;
            target(mount_target("tmpfs path", &t.guest_path)?)?;
        }
        let mut host_ports = std::collections::HashSet::new();
        for p in &self.ports {
            if !(1..=65535).contains(&p.host) || !(1..=65535).contains(&p.guest) {
                return Err(EngineError::invalid(format!(
                    "port {}:{} is out of range (1..=65535)",
                    p.host, p.guest
                )));
            }
            if !host_ports.insert(p.host) {
                return Err(EngineError::invalid(format!(
                    "host port {} given twice",
                    p.host
                )));
            }
        }
        check_labels(&self.labels)?;
        if let Some(u) = &self.user {
            if u.is_empty() {
                return Err(EngineError::invalid("user is empty"));
            }
        }
        Ok(limits)
    }
}

/// An error message quotes at most this much of what it rejects.
fn shown(s: &str) -> String {
    const SHOW: usize = 64;
    if s.len() <= SHOW {
        return format!("{s:?}");
    }
    let mut end = SHOW;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{:?}... ({} bytes)", &s[..end], s.len())
}

/// One `KEY=VALUE` entry: the key is what precedes the first '=', so a key
/// can never hold '=' here; the SDKs reject such keys before joining them.
pub fn check_env(what: &str, e: &str) -> Result<()> {
    let Some((k, _)) = e.split_once('=') else {
        return Err(EngineError::invalid(format!(
            "{what} entry {} must look like KEY=VALUE",
            shown(e)
        )));
    };
    if k.is_empty() || e.contains('\0') {
        return Err(EngineError::invalid(format!(
            "{what} entry {} needs a non-empty key and no NUL byte",
            shown(e)
        )));
    }
    if k.len() > MAX_ENV_KEY_BYTES {
        return Err(EngineError::invalid(format!(
            "{what} key {} is longer than {MAX_ENV_KEY_BYTES} bytes",
            shown(k)
        )));
    }
    if e.len() > MAX_ENV_ENTRY_BYTES {
        return Err(EngineError::invalid(format!(
            "{what} entry {} is longer than {MAX_ENV_ENTRY_BYTES} bytes",
            shown(e)
        )));
    }
    Ok(())
}

/// The count and total size bounds of one environment, then each entry.
/// The count is checked first so a huge list is refused in O(1).
pub fn check_env_list(what: &str, env: &[String]) -> Result<()> {
    check_env_size(what, env)?;
    for e in env {
        check_env(what, e)?;
    }
    Ok(())
}

/// Only the count and total size (for an environment whose entries were
/// checked already, or come from the image).
pub fn check_env_size(what: &str, env: &[String]) -> Result<()> {
    if env.len() > MAX_ENV_ENTRIES {
        return Err(EngineError::invalid(format!(
            "{what} has {} entries; at most {MAX_ENV_ENTRIES}",
            env.len()
        )));
    }
    let total: usize = env.iter().map(|e| e.len() + 1).sum();
    if total > MAX_ENV_TOTAL_BYTES {
        return Err(EngineError::invalid(format!(
            "{what} is {total} bytes; at most {MAX_ENV_TOTAL_BYTES}"
        )));
    }
    Ok(())
}

fn check_labels(labels: &BTreeMap<String, String>) -> Result<()> {
    if labels.len() > MAX_LABELS {
        return Err(EngineError::invalid(format!(
            "{} labels; at most {MAX_LABELS}",
            labels.len()
        )));
    }
    for (k, v) in labels {
        if k.is_empty() || k.len() > MAX_LABEL_KEY_BYTES || k.contains('\0') {
            return Err(EngineError::invalid(format!(
                "label key {} is not valid (1..={MAX_LABEL_KEY_BYTES} bytes, no NUL)",
                shown(k)
            )));
        }
        if v.len() > MAX_LABEL_VALUE_BYTES {
            return Err(EngineError::invalid(format!(
                "label {} has a value of {} bytes; at most {MAX_LABEL_VALUE_BYTES}",
                shown(k),
                v.len()
            )));
        }
    }
    Ok(())
}

/// Resolves "uid", "uid:gid" or a user name (looked up in the root
/// filesystem's /etc/passwd, which is image content, read-only to us).
pub fn resolve_user(user: &str, rootfs_lowers: &[String]) -> Result<(u32, u32)> {
    let (u, g) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let parse_group = |g: &str, default: u32| -> Result<u32> {
        if g.is_empty() {
            return Ok(default);
        }
        if let Ok(n) = g.parse::<u32>() {
            return Ok(n);
        }
        lookup_db(rootfs_lowers, "etc/group", g)
            .map(|f| f.0)
            .ok_or_else(|| EngineError::not_found(format!("group {g:?} is not in the image")))
    };
    if let Ok(uid) = u.parse::<u32>() {
        let gid = match g {
            Some(g) => parse_group(g, uid)?,
            None => uid,
        };
        return Ok((uid, gid));
    }
    let (uid, gid) = lookup_db(rootfs_lowers, "etc/passwd", u).ok_or_else(|| {
        EngineError::not_found(format!("user {u:?} is not in the image's /etc/passwd"))
    })?;
    let gid = match g {
        Some(g) => parse_group(g, gid)?,
        None => gid,
    };
    Ok((uid, gid))
}

/// Finds `name` in a passwd/group-format file of the topmost layer that has
/// it; returns (field 3, field 4) as numbers (field 4 absent in group).
fn lookup_db(lowers: &[String], rel: &str, name: &str) -> Option<(u32, u32)> {
    for l in lowers {
        // Image content: read inside the image only, bounded, never a FIFO
        // or device (see image_file).
        let Ok(Some(bytes)) = crate::image_file::read(Path::new(l), rel) else {
            continue;
        };
        let text = String::from_utf8_lossy(&bytes);
        for line in text.lines() {
            let f: Vec<&str> = line.split(':').collect();
            if f.len() >= 3 && f[0] == name {
                let a = f[2].parse().ok()?;
                let b = f.get(3).and_then(|v| v.parse().ok()).unwrap_or(a);
                return Some((a, b));
            }
        }
        return None;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(json: &str) -> Result<CheckedLimits> {
        let c: SandboxConfig = serde_json::from_str(json).unwrap();
        c.check()
    }

    #[test]
    fn limits_are_range_checked() {
        assert!(cfg(r#"{"memory_mib": -1}"#).is_err());
        assert!(cfg(r#"{"memory_mib": 99999999999}"#).is_err());
        assert!(cfg(r#"{"cpus": 0}"#).is_err());
        assert!(cfg(r#"{"cpus": -0.5}"#).is_err());
        assert!(cfg(r#"{"pids": 0}"#).is_err());
        let l = cfg(r#"{"memory_mib": 64, "cpus": 0.5, "pids": 32, "disk_mib": 10}"#).unwrap();
        assert_eq!(l.memory_mib, Some(64));
        assert_eq!(l.pids, Some(32));
        assert_eq!(l.disk_mib, Some(10));
    }

    #[test]
    fn the_writable_layer_has_a_budget_unless_asked_otherwise() {
        assert_eq!(cfg("{}").unwrap().disk_mib, Some(DEFAULT_DISK_MIB));
        assert_eq!(cfg(r#"{"disk_mib": 0}"#).unwrap().disk_mib, None);
        assert!(cfg(r#"{"disk_mib": -1}"#).is_err());
        let c: SandboxConfig = serde_json::from_str("{}").unwrap();
        assert_eq!(c.effective_disk_mib(), Some(DEFAULT_DISK_MIB));
        let c: SandboxConfig = serde_json::from_str(r#"{"disk_mib": 0}"#).unwrap();
        assert_eq!(c.effective_disk_mib(), None);
    }

    #[test]
    fn unknown_fields_are_rejected() {
        assert!(serde_json::from_str::<SandboxConfig>(r#"{"memroy_mib": 1}"#).is_err());
    }

    #[test]
    fn paths_and_env() {
        assert_eq!(guest_path("p", "/a/./b/").unwrap(), "/a/b");
        assert!(guest_path("p", "a").is_err());
        assert!(guest_path("p", "/a/../b").is_err());
        assert!(cfg(r#"{"env": ["NOEQUALS"]}"#).is_err());
        assert!(cfg(r#"{"env": ["=x"]}"#).is_err());
        cfg(r#"{"env": ["A=b=c", "E="]}"#).unwrap();
        assert!(cfg(r#"{"volumes": [{"host_path": "rel", "guest_path": "/x"}]}"#).is_err());
        assert!(cfg(r#"{"tmpfs": [{"guest_path": "/proc"}]}"#).is_err());
        assert!(cfg(r#"{"tmpfs": [{"guest_path": "/sys/fs"}]}"#).is_err());
        assert!(cfg(r#"{"tmpfs": [{"guest_path": "/system"}]}"#).is_ok());
        assert!(cfg(r#"{"tmpfs": [{"guest_path": "/a"}, {"guest_path": "/a/"}]}"#).is_err());
        assert!(cfg(r#"{"ports": [{"host": 0, "guest": 80}]}"#).is_err());
        assert!(cfg(r#"{"image": "a", "rootfs": "/b"}"#).is_err());
        assert!(cfg(r#"{"name": "../x"}"#).is_err());
        cfg(r#"{"image": "127.0.0.1:5000/repo:tag"}"#).unwrap();
        assert!(cfg(r#"{"image": "../x"}"#).is_err());
    }

    fn with_env(env: Vec<String>) -> Result<CheckedLimits> {
        SandboxConfig {
            env,
            ..Default::default()
        }
        .check()
    }

    fn code(r: Result<CheckedLimits>) -> lockbox_protocol::ErrorCode {
        r.unwrap_err().code
    }

    #[test]
    fn env_bounds() {
        use lockbox_protocol::ErrorCode::InvalidArgument;
        let at = |n: usize| (0..n).map(|i| format!("K{i}=v")).collect::<Vec<_>>();
        with_env(at(MAX_ENV_ENTRIES)).unwrap();
        assert_eq!(code(with_env(at(MAX_ENV_ENTRIES + 1))), InvalidArgument);
        let key = "K".repeat(MAX_ENV_KEY_BYTES);
        with_env(vec![format!("{key}=v")]).unwrap();
        assert_eq!(code(with_env(vec![format!("{key}K=v")])), InvalidArgument);
        let entry = |len: usize| format!("V={}", "x".repeat(len - 2));
        with_env(vec![entry(MAX_ENV_ENTRY_BYTES)]).unwrap();
        assert_eq!(
            code(with_env(vec![entry(MAX_ENV_ENTRY_BYTES + 1)])),
            InvalidArgument
        );
        // 9 entries of 120 KiB: each fine, together over 1 MiB; 8 fit.
        let big: Vec<String> = (0..9)
            .map(|i| format!("K{i}={}", "x".repeat(120 << 10)))
            .collect();
        let e = with_env(big.clone()).unwrap_err();
        assert!(e.message.contains("bytes; at most"), "{}", e.message);
        with_env(big[..8].to_vec()).unwrap();
        for bad in ["A", "=v", "A=\0", "\0=v"] {
            assert_eq!(code(with_env(vec![bad.into()])), InvalidArgument, "{bad:?}");
        }
        // A long rejected entry is quoted in part, not whole.
        let e = with_env(vec!["x".repeat(1 << 20)]).unwrap_err();
        assert!(e.message.len() < 300, "{}", e.message.len());
    }

    #[test]
    fn label_name_hostname_image_bounds() {
        use lockbox_protocol::ErrorCode::InvalidArgument;
        let labels = |n: usize, k: usize, v: usize| SandboxConfig {
            labels: (0..n)
                .map(|i| (format!("{i:0k$}"), "v".repeat(v)))
                .collect(),
            ..Default::default()
        };
        labels(MAX_LABELS, MAX_LABEL_KEY_BYTES, MAX_LABEL_VALUE_BYTES)
            .check()
            .unwrap();
        for c in [
            labels(MAX_LABELS + 1, 8, 1),
            labels(1, MAX_LABEL_KEY_BYTES + 1, 1),
            labels(1, 8, MAX_LABEL_VALUE_BYTES + 1),
        ] {
            assert_eq!(c.check().unwrap_err().code, InvalidArgument);
        }
        let named = |n: &str| SandboxConfig {
            name: Some(n.into()),
            ..Default::default()
        };
        named(&"a".repeat(MAX_NAME_BYTES)).check().unwrap();
        assert_eq!(
            code(named(&"a".repeat(MAX_NAME_BYTES + 1)).check()),
            InvalidArgument
        );
        let host = |h: &str| SandboxConfig {
            hostname: Some(h.into()),
            ..Default::default()
        };
        host(&"h".repeat(MAX_HOSTNAME_BYTES)).check().unwrap();
        assert_eq!(
            code(host(&"h".repeat(MAX_HOSTNAME_BYTES + 1)).check()),
            InvalidArgument
        );
        // Only a missing image means the default one.
        let e = cfg(r#"{"image": ""}"#).unwrap_err();
        assert_eq!(e.code, InvalidArgument);
        assert!(e.message.contains("leave it out"), "{}", e.message);
        cfg(r#"{}"#).unwrap();
    }

    #[test]
    fn users_resolve_from_passwd() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("etc")).unwrap();
        std::fs::write(
            d.path().join("etc/passwd"),
            "root:x:0:0::/root:/bin/sh\nbob:x:1000:1001::/home/bob:/bin/sh\n",
        )
        .unwrap();
        std::fs::write(d.path().join("etc/group"), "root:x:0:\nstaff:x:50:\n").unwrap();
        let l = vec![d.path().to_string_lossy().into_owned()];
        assert_eq!(resolve_user("bob", &l).unwrap(), (1000, 1001));
        assert_eq!(resolve_user("bob:staff", &l).unwrap(), (1000, 50));
        assert_eq!(resolve_user("7:8", &l).unwrap(), (7, 8));
        assert_eq!(resolve_user("7", &l).unwrap(), (7, 7));
        assert_eq!(
            resolve_user("nobody", &l).unwrap_err().code,
            lockbox_protocol::ErrorCode::NotFound
        );
    }
}
