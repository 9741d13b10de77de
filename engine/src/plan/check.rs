//! Validation of a `SandboxConfig` and the bounds on what a caller hands
//! the engine. Resource limits are range-checked by `Limits::check` (crate
//! lockbox-protocol), the same function the helper runs on its spec: one
//! set of numbers on both sides.

use std::collections::BTreeMap;
use std::path::{Component, Path};

use lockbox_protocol::{bounds, Limits};

use crate::config::SandboxConfig;
use crate::error::{EngineError, Result};

// Bounds on what a caller hands the engine, so input can cost neither
// unbounded memory (every ListSandboxes returns labels and config again)
// nor unbounded time. docs/configuration.md ("Input limits") lists them;
// past one the call is `invalid_argument`.

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

fn in_range(what: &str, v: Option<i64>, min: u64, max: u64) -> Result<Option<u64>> {
    match v {
        None => Ok(None),
        Some(v) if v < 0 || (v as u64) < min || v as u64 > max => Err(EngineError::invalid(
            format!("{what} {v} is out of range ({min}..={max})"),
        )),
        Some(v) => Ok(Some(v as u64)),
    }
}

/// A negative number is refused here; the range is `Limits::check`'s.
fn not_negative(what: &str, v: Option<i64>) -> Result<Option<u64>> {
    match v {
        Some(v) if v < 0 => Err(EngineError::invalid(format!("{what} {v} is negative"))),
        v => Ok(v.map(|v| v as u64)),
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

/// Everything about a config that needs neither the filesystem nor the
/// image: refused here, nothing is made. Returns the limits with their
/// defaults applied, inside the bounds the helper also enforces.
pub fn check(cfg: &SandboxConfig) -> Result<Limits> {
    if let Some(n) = &cfg.name {
        crate::names::validate("sandbox", n)?;
    }
    if let Some(i) = &cfg.image {
        if i.is_empty() {
            return Err(EngineError::invalid(
                "image is empty; leave it out for the default image",
            ));
        }
        crate::images::form_of(i)?;
    }
    if cfg.image.is_some() && cfg.rootfs.is_some() {
        return Err(EngineError::invalid(
            "give either an image or a rootfs directory, not both",
        ));
    }
    let limits = Limits {
        memory_mib: not_negative("memory (MiB)", cfg.memory_mib)?,
        cpus: cfg.cpus,
        pids: not_negative("pids", cfg.pids)?,
        disk_mib: disk_budget(cfg.disk_mib)?,
        nofile: None,
    };
    limits.check().map_err(EngineError::invalid)?;
    super::env::check_list("env", &cfg.env)?;
    if let Some(w) = &cfg.workdir {
        guest_path("workdir", w)?;
    }
    if let Some(h) = &cfg.hostname {
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
    for v in &cfg.volumes {
        if !Path::new(&v.host_path).is_absolute() {
            return Err(EngineError::invalid(format!(
                "volume host path {:?} must be absolute",
                v.host_path
            )));
        }
        target(mount_target("volume path", &v.guest_path)?)?;
    }
    for v in &cfg.named_volumes {
        crate::names::validate("volume", &v.name)?;
        target(mount_target("volume path", &v.guest_path)?)?;
    }
    for t in &cfg.tmpfs {
        in_range("tmpfs size (MiB)", t.size_mib, 1, bounds::MAX_MEMORY_MIB)?;
        target(mount_target("tmpfs path", &t.guest_path)?)?;
    }
    let mut host_ports = std::collections::HashSet::new();
    for p in &cfg.ports {
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
    check_labels(&cfg.labels)?;
    if let Some(u) = &cfg.user {
        check_user(u)?;
    }
    crate::network::check(cfg)?;
    Ok(limits)
}

/// The writable layer's budget: the default when none was given, `None`
/// (no budget) for an explicit 0.
pub fn disk_budget(disk_mib: Option<i64>) -> Result<Option<u64>> {
    match disk_mib {
        None => Ok(Some(super::DEFAULT_DISK_MIB)),
        Some(0) => Ok(None),
        v => not_negative("disk (MiB)", v),
    }
}

/// A user spec's shape; whether the name exists is the agent's to say.
pub fn check_user(u: &str) -> Result<()> {
    if u.is_empty() || u.starts_with(':') {
        return Err(EngineError::invalid("user is empty"));
    }
    if u.len() > bounds::MAX_USER_SPEC_BYTES || u.contains('\0') {
        return Err(EngineError::invalid(format!(
            "user {} is not valid (at most {} bytes, no NUL)",
            shown(u),
            bounds::MAX_USER_SPEC_BYTES
        )));
    }
    Ok(())
}
/// An error message quotes at most this much of what it rejects.
pub(crate) fn shown(s: &str) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::DEFAULT_DISK_MIB;

    fn cfg(json: &str) -> Result<Limits> {
        let c: SandboxConfig = serde_json::from_str(json).unwrap();
        check(&c)
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
        assert_eq!(disk_budget(None).unwrap(), Some(DEFAULT_DISK_MIB));
        assert_eq!(disk_budget(Some(0)).unwrap(), None);
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

    fn with_env(env: Vec<String>) -> Result<Limits> {
        check(&SandboxConfig {
            env,
            ..Default::default()
        })
    }

    fn code(r: Result<Limits>) -> lockbox_protocol::ErrorCode {
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
        check(&labels(
            MAX_LABELS,
            MAX_LABEL_KEY_BYTES,
            MAX_LABEL_VALUE_BYTES,
        ))
        .unwrap();
        for c in [
            labels(MAX_LABELS + 1, 8, 1),
            labels(1, MAX_LABEL_KEY_BYTES + 1, 1),
            labels(1, 8, MAX_LABEL_VALUE_BYTES + 1),
        ] {
            assert_eq!(check(&c).unwrap_err().code, InvalidArgument);
        }
        let named = |n: &str| SandboxConfig {
            name: Some(n.into()),
            ..Default::default()
        };
        check(&named(&"a".repeat(MAX_NAME_BYTES))).unwrap();
        assert_eq!(
            code(check(&named(&"a".repeat(MAX_NAME_BYTES + 1)))),
            InvalidArgument
        );
        let host = |h: &str| SandboxConfig {
            hostname: Some(h.into()),
            ..Default::default()
        };
        check(&host(&"h".repeat(MAX_HOSTNAME_BYTES))).unwrap();
        assert_eq!(
            code(check(&host(&"h".repeat(MAX_HOSTNAME_BYTES + 1)))),
            InvalidArgument
        );
        // Only a missing image means the default one.
        let e = cfg(r#"{"image": ""}"#).unwrap_err();
        assert_eq!(e.code, InvalidArgument);
        assert!(e.message.contains("leave it out"), "{}", e.message);
        cfg(r#"{}"#).unwrap();
    }
}
