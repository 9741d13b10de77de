//! The guest's kernel and initramfs are re-hashed before a boot against
//! the record of what was verified when they were made or installed:
//! - an installed release: `<version dir>/manifest.json` (the manifest
//!   whose signature the installer checked, beside `vm/`), entries of
//!   kind vm-kernel and vm-initramfs for this platform;
//! - a dev build (`make vm-assets`, LOCKBOX_VM_ASSETS=build/vm):
//!   `assets.json` in the assets directory (scripts/vm/build-assets.sh).
//!
//! A file that differs is refused (ErrorCode::Unavailable: the backend
//! is there, its assets are not usable until reinstalled). Without any
//! record the default location (an install) is refused too; a directory
//! named by LOCKBOX_VM_ASSETS without a record boots unverified, and
//! the sandbox's Info says so (`vm_assets_verified` not enforced).
//!
//! Each verdict is cached in the process by (dev, inode, size, mtime,
//! ctime): a boot re-hashes only a file that changed (hashing both
//! takes ~100 ms here, more than a third of a warm restore).

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use lockbox_protocol::ErrorCode;
use serde_json::Value;

use super::host::{ASSETS_ENV, INITRAMFS, KERNEL};
use crate::error::{EngineError, Result};

/// What the check found: verified against a record (which), or booted
/// unverified (why).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Verified(&'static str),
    Unverified(String),
}

type Key = (u64, u64, u64, i64, i64, i64, i64);

fn key(m: &std::fs::Metadata) -> Key {
    (
        m.dev(),
        m.ino(),
        m.size(),
        m.mtime(),
        m.mtime_nsec(),
        m.ctime(),
        m.ctime_nsec(),
    )
}

/// (path, sha256) verified, by the file's identity at the time.
static VERIFIED: Mutex<Option<HashMap<Key, (PathBuf, String)>>> = Mutex::new(None);

/// The sha256s the record holds for (kernel, initramfs), and its name.
fn record(dir: &Path) -> Result<Option<(&'static str, String, String)>> {
    let read = |p: PathBuf| -> Result<Option<Value>> {
        match std::fs::read(&p) {
            Ok(b) if b.len() <= 1 << 20 => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|e| corrupt(format!("{}: {e}", p.display()))),
            Ok(_) => Err(corrupt(format!("{}: over 1 MiB", p.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(EngineError::io(p.display(), e)),
        }
    };
    if let Some(m) = read(dir.join("../manifest.json"))? {
        let platform = format!("{}-{}", std::env::consts::OS, std::env::consts::ARCH);
        let arts = m["platforms"][&platform]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let sha = |kind: &str| {
            arts.iter()
                .find(|a| a["kind"] == kind)
                .and_then(|a| a["sha256"].as_str())
                .map(str::to_string)
        };
        return match (sha("vm-kernel"), sha("vm-initramfs")) {
            (Some(k), Some(i)) => Ok(Some(("manifest.json", k, i))),
            _ => Err(corrupt(format!(
                "{} has no VM assets for {platform}, yet {} holds some",
                dir.join("../manifest.json").display(),
                dir.display()
            ))),
        };
    }
    if let Some(a) = read(dir.join("assets.json"))? {
        let sha = |k: &str| a[k]["sha256"].as_str().map(str::to_string);
        return match (sha("kernel"), sha("initramfs")) {
            (Some(k), Some(i)) => Ok(Some(("assets.json", k, i))),
            _ => Err(corrupt(format!(
                "{}: no kernel/initramfs sha256",
                dir.join("assets.json").display()
            ))),
        };
    }
    Ok(None)
}

fn corrupt(m: String) -> EngineError {
    EngineError::new(
        ErrorCode::Unavailable,
        format!("microvm backend: VM assets: {m}; reinstall them (the VM assets install option)"),
    )
}

fn check_file(path: &Path, want: &str, record: &str) -> Result<()> {
    let meta = std::fs::metadata(path).map_err(|e| EngineError::io(path.display(), e))?;
    let k = key(&meta);
    let hit = |c: &Option<HashMap<Key, (PathBuf, String)>>| {
        c.as_ref()
            .and_then(|m| m.get(&k))
            .is_some_and(|(p, s)| p == path && s == want)
    };
    if hit(&VERIFIED.lock().unwrap_or_else(|e| e.into_inner())) {
        return Ok(());
    }
    let bytes = std::fs::read(path).map_err(|e| EngineError::io(path.display(), e))?;
    let got = super::disks::sha256_hex(&bytes);
    // The file may have changed while it was read: the verdict is cached
    // under the identity it had before, and only if it still has it.
    let after = std::fs::metadata(path).map_err(|e| EngineError::io(path.display(), e))?;
    if got != want {
        return Err(corrupt(format!(
            "{} has sha256 {got}, {record} says {want}: refusing to boot it",
            path.display()
        )));
    }
    if key(&after) == k {
        VERIFIED
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_or_insert_with(HashMap::new)
            .insert(k, (path.to_path_buf(), want.to_string()));
    }
    Ok(())
}

impl Verdict {
    /// Says it in the sandbox's Info.
    pub fn report(&self, r: &mut lockbox_protocol::SandboxReport) {
        match self {
            Verdict::Verified(_) => r.enforced.push("vm_assets_verified".into()),
            Verdict::Unverified(why) => r.not_enforced.push(lockbox_protocol::NotEnforced {
                feature: "vm_assets_verified".into(),
                reason: why.clone(),
            }),
        }
    }
}

/// Checks the kernel and initramfs in `dir` (host::assets()).
pub fn verify(dir: &Path) -> Result<Verdict> {
    match record(dir)? {
        Some((name, kernel, initramfs)) => {
            check_file(&dir.join(KERNEL), &kernel, name)?;
            check_file(&dir.join(INITRAMFS), &initramfs, name)?;
            Ok(Verdict::Verified(name))
        }
        None if std::env::var_os(ASSETS_ENV).is_some_and(|v| !v.is_empty()) => {
            Ok(Verdict::Unverified(format!(
                "{ASSETS_ENV}={} has no record of its assets' hashes (manifest.json beside it or assets.json in it): booted unverified",
                dir.display()
            )))
        }
        None => Err(corrupt(format!(
            "no record of their hashes beside {} (an installed release has manifest.json)",
            dir.display()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sha(b: &[u8]) -> String {
        super::super::disks::sha256_hex(b)
    }

    fn dev_dir(kernel: &[u8], initramfs: &[u8]) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        let vm = d.path().join("vm");
        std::fs::create_dir(&vm).unwrap();
        std::fs::write(vm.join(KERNEL), kernel).unwrap();
        std::fs::write(vm.join(INITRAMFS), initramfs).unwrap();
        d
    }

    #[test]
    fn dev_record_verifies_and_catches_a_changed_file() {
        let d = dev_dir(b"kernel", b"initramfs");
        let vm = d.path().join("vm");
        let rec = format!(
            r#"{{"kernel": {{"sha256": "{}"}}, "initramfs": {{"sha256": "{}"}}}}"#,
            sha(b"kernel"),
            sha(b"initramfs")
        );
        std::fs::write(vm.join("assets.json"), rec).unwrap();
        // Control: the untouched files verify (twice: the second from the cache).
        assert_eq!(verify(&vm).unwrap(), Verdict::Verified("assets.json"));
        assert_eq!(verify(&vm).unwrap(), Verdict::Verified("assets.json"));
        // Same size, new content: the cache must not hide it.
        std::fs::write(vm.join(KERNEL), b"KERNEL").unwrap();
        let e = verify(&vm).unwrap_err();
        assert_eq!(e.code, ErrorCode::Unavailable, "{e:?}");
        assert!(e.message.contains("refusing to boot"), "{}", e.message);
        // Truncated.
        std::fs::write(vm.join(KERNEL), b"").unwrap();
        assert!(verify(&vm).is_err());
    }

    #[test]
    fn installed_manifest_is_the_record_and_is_required() {
        let d = dev_dir(b"k2", b"i2");
        let vm = d.path().join("vm");
        let platform = format!("{}-{}", std::env::consts::OS, std::env::consts::ARCH);
        let m = serde_json::json!({"platforms": {platform: [
            {"kind": "library", "sha256": "00"},
            {"kind": "vm-kernel", "sha256": sha(b"k2")},
            {"kind": "vm-initramfs", "sha256": sha(b"i2")},
        ]}});
        std::fs::write(d.path().join("manifest.json"), m.to_string()).unwrap();
        assert_eq!(verify(&vm).unwrap(), Verdict::Verified("manifest.json"));
        std::fs::write(vm.join(INITRAMFS), b"i3").unwrap();
        assert!(verify(&vm).is_err(), "a tampered initramfs verified");
        // A manifest without VM entries beside a vm/ dir is not a record.
        std::fs::write(
            d.path().join("manifest.json"),
            serde_json::json!({"platforms": {}}).to_string(),
        )
        .unwrap();
        assert!(verify(&vm).is_err());
    }
}
