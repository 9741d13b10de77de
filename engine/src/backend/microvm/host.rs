//! What a host needs to run microVMs: qemu, the guest's kernel and
//! initramfs, and an acceleration. Found the same way by `launch` and by
//! `host.vm_check` (the report `Check`/`doctor` print).

use std::path::{Path, PathBuf};

use crate::error::{EngineError, Result};

pub const ACCEL_ENV: &str = "LOCKBOX_VM_ACCEL";
pub const ASSETS_ENV: &str = "LOCKBOX_VM_ASSETS";
pub const KERNEL: &str = "vmlinuz";
pub const INITRAMFS: &str = "initramfs.img";
/// Debian's qemu-system-x86 puts it here; the jail shows only /usr.
const QEMU_CANDIDATES: &[&str] = &["/usr/bin/qemu-system-x86_64", "/usr/libexec/qemu-kvm"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    pub fn name(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

pub fn qemu() -> Option<PathBuf> {
    QEMU_CANDIDATES
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
}

/// `LOCKBOX_VM_ASSETS`, else `<libdir>/../vm` (docs/microvm.md,
/// contracts C3); the directory must hold both files.
pub fn assets() -> std::result::Result<PathBuf, String> {
    let dir = match std::env::var_os(ASSETS_ENV).filter(|v| !v.is_empty()) {
        Some(d) => PathBuf::from(d),
        None => match crate::paths::own_object_dir() {
            Some(lib) => lib.join("../vm"),
            None => {
                return Err(format!(
                    "cannot locate the library's directory; set {ASSETS_ENV}"
                ))
            }
        },
    };
    let missing: Vec<&str> = [KERNEL, INITRAMFS]
        .into_iter()
        .filter(|f| !dir.join(f).is_file())
        .collect();
    if missing.is_empty() {
        Ok(std::fs::canonicalize(&dir).unwrap_or(dir))
    } else {
        Err(format!(
            "VM assets missing in {} ({}): install them (the VM assets install option) or set {ASSETS_ENV}",
            dir.display(),
            missing.join(", ")
        ))
    }
}

/// The accel asked for with `LOCKBOX_VM_ACCEL`, if any.
pub fn accel_from_env() -> Result<Option<Accel>> {
    match std::env::var(ACCEL_ENV).ok().as_deref() {
        None | Some("") => Ok(None),
        Some("tcg") => Ok(Some(Accel::Tcg)),
        Some("kvm") => Ok(Some(Accel::Kvm)),
        Some(v) => Err(EngineError::invalid(format!(
            "{ACCEL_ENV}={v:?}: expected \"tcg\" or \"kvm\""
        ))),
    }
}

/// Everything a launch needs, or the reason this host cannot.
pub struct Host {
    pub qemu: PathBuf,
    pub assets: PathBuf,
    pub accel: Accel,
    /// Whether the kernel and initramfs matched their record.
    pub assets_check: super::asset_check::Verdict,
}

pub async fn detect(state_dir: &Path) -> Result<Host> {
    let qemu = qemu().ok_or_else(|| {
        EngineError::unsupported(
            "microvm backend: qemu-system-x86_64 is not installed (Debian: qemu-system-x86)",
        )
    })?;
    let assets = assets().map_err(|m| EngineError::unsupported(format!("microvm backend: {m}")))?;
    let assets_check = super::asset_check::verify(&assets)?;
    let accel = match accel_from_env()? {
        Some(a) => a,
        None => {
            let p = super::probe::kvm(state_dir, &qemu, &assets).await;
            if p.verdict == super::probe::Verdict::Usable {
                Accel::Kvm
            } else {
                return Err(EngineError::unsupported(format!(
                    "microvm backend: KVM is {} ({}); software emulation is used only when asked for: set {ACCEL_ENV}=tcg",
                    p.verdict.name(),
                    p.reason
                )));
            }
        }
    };
    Ok(Host {
        qemu,
        assets,
        accel,
        assets_check,
    })
}
