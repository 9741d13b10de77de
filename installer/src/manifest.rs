//! The release manifest: what a version consists of, per platform.
//!
//! The signature covers the exact bytes of manifest.json, so the bytes are
//! never re-serialized after signing: parsing is only for reading.

use std::collections::{BTreeMap, HashSet};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

pub const SCHEMA_VERSION: u32 = 1;
pub const PRODUCT: &str = "lockbox";
/// The C ABI version the installed library must implement (docs/abi.md).
pub const ABI_VERSION: u32 = 1;
/// A manifest larger than this is refused before parsing.
pub const MAX_MANIFEST_BYTES: u64 = 1 << 20;
pub const MAX_SIGNATURE_BYTES: u64 = 4096;

/// The files of a release (and of an installed) version directory besides
/// its artifacts.
pub const MANIFEST: &str = "manifest.json";
pub const SIGNATURE: &str = "manifest.json.sig";
/// Written by the installer (go/install*) last: the manifest's sha256 and
/// a newline. A release directory has none.
pub const MARKER: &str = ".complete";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub schema_version: u32,
    pub product: String,
    pub version: String,
    pub abi_version: u32,
    /// What the artifacts were built from, when the release recorded it:
    /// `make check-pin` rebuilds and compares only when this source is
    /// what the checkout has. Older manifests have none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<BuildSource>,
    /// Keyed by platform, e.g. "linux-x86_64".
    pub platforms: BTreeMap<String, Vec<Artifact>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildSource {
    /// The last commit that changed a build input of the library or the
    /// helper (the Makefile's REPRO_INPUTS); the library embeds it too.
    pub commit: String,
    /// `rustc -V` of the toolchain that built them.
    pub rustc: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Artifact {
    pub name: String,
    /// Relative path inside the version directory, '/'-separated.
    pub path: String,
    pub kind: ArtifactKind,
    pub size: u64,
    /// Lowercase hex.
    pub sha256: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ArtifactKind {
    Library,
    Helper,
    Image,
    /// The microVM guest's kernel: installed only when asked for.
    VmKernel,
    /// The microVM guest's initramfs (the release helper as /init).
    VmInitramfs,
}

/// The one file name the engine looks for per VM kind (`<version
/// dir>/vm/<name>`): a manifest may not name them otherwise.
pub const VM_KERNEL_FILE: &str = "vmlinuz";
pub const VM_INITRAMFS_FILE: &str = "initramfs.img";
pub const VM_DIR: &str = "vm";

impl ArtifactKind {
    /// The directory of the install tree that holds artifacts of this kind.
    pub fn dir(self) -> &'static str {
        match self {
            ArtifactKind::Library => "lib",
            ArtifactKind::Helper => "bin",
            ArtifactKind::Image => "images",
            ArtifactKind::VmKernel | ArtifactKind::VmInitramfs => VM_DIR,
        }
    }

    /// The manifest's spelling.
    pub fn name(self) -> &'static str {
        match self {
            ArtifactKind::Library => "library",
            ArtifactKind::Helper => "helper",
            ArtifactKind::Image => "image",
            ArtifactKind::VmKernel => "vm-kernel",
            ArtifactKind::VmInitramfs => "vm-initramfs",
        }
    }

    /// VM assets are an optional group: an install holds both or neither.
    pub fn is_vm(self) -> bool {
        matches!(self, ArtifactKind::VmKernel | ArtifactKind::VmInitramfs)
    }

    fn fixed_file(self) -> Option<&'static str> {
        match self {
            ArtifactKind::VmKernel => Some(VM_KERNEL_FILE),
            ArtifactKind::VmInitramfs => Some(VM_INITRAMFS_FILE),
            _ => None,
        }
    }

    pub fn is_executable(self) -> bool {
        self == ArtifactKind::Helper
    }

    pub fn mode(self) -> u32 {
        if self.is_executable() {
            0o755
        } else {
            0o644
        }
    }
}

/// "linux-x86_64", "linux-aarch64": OS and CPU as Rust names them (the Go
/// SDK maps GOARCH to the same names).
pub fn current_platform() -> String {
    format!("{}-{}", std::env::consts::OS, std::env::consts::ARCH)
}

/// Versions become directory names, so they are restricted to a safe set.
pub fn validate_version(v: &str) -> Result<()> {
    let ok = !v.is_empty()
        && v.len() <= 64
        && !v.starts_with('.')
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._+-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(Error::Usage(format!("invalid version {v:?}")))
    }
}

fn valid_file_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && !s.starts_with('.')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._+-".contains(&b))
}

impl Manifest {
    pub fn parse(bytes: &[u8]) -> Result<Manifest> {
        let m: Manifest = serde_json::from_slice(bytes)
            .map_err(|e| Error::Verification(format!("manifest is not valid JSON: {e}")))?;
        m.validate()?;
        Ok(m)
    }

    /// Pretty JSON with a trailing newline: the bytes that get signed.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = serde_json::to_vec_pretty(self).expect("manifest serializes");
        out.push(b'\n');
        out
    }

    pub fn validate(&self) -> Result<()> {
        let bad = |msg: String| Err(Error::Verification(format!("manifest: {msg}")));
        if self.schema_version != SCHEMA_VERSION {
            return bad(format!(
                "schema_version {} (this installer reads {SCHEMA_VERSION})",
                self.schema_version
            ));
        }
        if self.product != PRODUCT {
            return bad(format!("product {:?}", self.product));
        }
        if validate_version(&self.version).is_err() {
            return bad(format!("version {:?}", self.version));
        }
        for (platform, artifacts) in &self.platforms {
            let mut paths = HashSet::new();
            for a in artifacts {
                if let Err(e) = a.validate() {
                    return bad(format!("{platform}: {e}"));
                }
                if !paths.insert(a.path.as_str()) {
                    return bad(format!("{platform}: duplicate path {}", a.path));
                }
            }
            let libs = artifacts
                .iter()
                .filter(|a| a.kind == ArtifactKind::Library)
                .count();
            if libs != 1 {
                return bad(format!("{platform}: {libs} libraries (want exactly 1)"));
            }
            let kernels = artifacts
                .iter()
                .filter(|a| a.kind == ArtifactKind::VmKernel)
                .count();
            let initramfs = artifacts
                .iter()
                .filter(|a| a.kind == ArtifactKind::VmInitramfs)
                .count();
            if kernels != initramfs {
                return bad(format!(
                    "{platform}: {kernels} VM kernels and {initramfs} initramfs (VM assets come as a pair)"
                ));
            }
        }
        Ok(())
    }

    pub fn artifacts_for(&self, platform: &str) -> Result<&[Artifact]> {
        self.platforms
            .get(platform)
            .map(Vec::as_slice)
            .ok_or_else(|| {
                Error::Verification(format!(
                    "release {} has no artifacts for platform {platform} (it has: {})",
                    self.version,
                    self.platforms
                        .keys()
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            })
    }
}

impl Artifact {
    /// The path must be `<kind dir>/<file name>`: nothing can land outside
    /// the version directory or over the manifest and marker files.
    pub fn validate(&self) -> std::result::Result<(), String> {
        let Some((dir, file)) = self.path.split_once('/') else {
            return Err(format!("path {:?} has no directory", self.path));
        };
        if dir != self.kind.dir() || !valid_file_name(file) {
            return Err(format!(
                "path {:?} is not {}/<file> for a {}",
                self.path,
                self.kind.dir(),
                self.kind.name()
            ));
        }
        if let Some(want) = self.kind.fixed_file().filter(|w| *w != file) {
            return Err(format!(
                "path {:?}: a {} is {}/{want}",
                self.path,
                self.kind.name(),
                self.kind.dir()
            ));
        }
        if !valid_file_name(&self.name) {
            return Err(format!("name {:?}", self.name));
        }
        if self.sha256.len() != 64
            || !self
                .sha256
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(format!(
                "{}: sha256 is not 64 lowercase hex digits",
                self.path
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn artifact(path: &str, kind: ArtifactKind) -> Artifact {
        Artifact {
            name: path.rsplit('/').next().unwrap().to_string(),
            path: path.to_string(),
            kind,
            size: 3,
            sha256: "ab".repeat(32),
        }
    }

    fn manifest(artifacts: Vec<Artifact>) -> Manifest {
        Manifest {
            schema_version: SCHEMA_VERSION,
            product: PRODUCT.into(),
            version: "1.2.3".into(),
            abi_version: ABI_VERSION,
            source: None,
            platforms: [("linux-x86_64".to_string(), artifacts)].into(),
        }
    }

    #[test]
    fn round_trips_through_bytes() {
        let mut m = manifest(vec![
            artifact("lib/liblockbox.so", ArtifactKind::Library),
            artifact("bin/lockbox-helper", ArtifactKind::Helper),
        ]);
        assert_eq!(Manifest::parse(&m.to_bytes()).unwrap(), m);
        m.source = Some(BuildSource {
            commit: "c".repeat(40),
            rustc: "rustc 1.95.0".into(),
        });
        assert_eq!(Manifest::parse(&m.to_bytes()).unwrap(), m);
    }

    // The source record is optional: a pin made before it existed still
    // reads, and writes back to the very bytes that were signed.
    #[test]
    fn the_committed_pin_reads_and_serializes_to_its_signed_bytes() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../manifests/",
            env!("CARGO_PKG_VERSION"),
            "/manifest.json"
        );
        let bytes = std::fs::read(path).unwrap();
        assert_eq!(Manifest::parse(&bytes).unwrap().to_bytes(), bytes);
    }

    #[test]
    fn rejects_paths_that_escape_or_mismatch_kind() {
        for path in [
            "lib/../../etc/passwd",
            "../lib/x.so",
            "/lib/x.so",
            "lib/.complete",
            "bin/liblockbox.so",
            "lib/a/b.so",
        ] {
            let m = manifest(vec![artifact(path, ArtifactKind::Library)]);
            assert!(
                matches!(m.validate(), Err(Error::Verification(_))),
                "{path} accepted"
            );
        }
    }

    #[test]
    fn rejects_bad_hash_duplicates_and_missing_library() {
        let mut a = artifact("lib/liblockbox.so", ArtifactKind::Library);
        a.sha256 = "AB".repeat(32);
        assert!(manifest(vec![a]).validate().is_err());
        let lib = artifact("lib/liblockbox.so", ArtifactKind::Library);
        assert!(manifest(vec![lib.clone(), lib]).validate().is_err());
        assert!(manifest(vec![artifact("bin/h", ArtifactKind::Helper)])
            .validate()
            .is_err());
    }

    #[test]
    fn vm_assets_have_fixed_paths_and_come_as_a_pair() {
        let lib = artifact("lib/liblockbox.so", ArtifactKind::Library);
        let kernel = artifact("vm/vmlinuz", ArtifactKind::VmKernel);
        let initramfs = artifact("vm/initramfs.img", ArtifactKind::VmInitramfs);
        let m = manifest(vec![lib.clone(), kernel.clone(), initramfs.clone()]);
        assert_eq!(Manifest::parse(&m.to_bytes()).unwrap(), m);
        let text = String::from_utf8(m.to_bytes()).unwrap();
        assert!(text.contains(r#""kind": "vm-kernel""#), "{text}");
        assert!(text.contains(r#""kind": "vm-initramfs""#), "{text}");

        assert!(manifest(vec![lib.clone(), kernel.clone()])
            .validate()
            .is_err());
        assert!(manifest(vec![lib.clone(), initramfs.clone()])
            .validate()
            .is_err());
        for (path, kind) in [
            ("vm/bzImage", ArtifactKind::VmKernel),
            ("vm/vmlinuz", ArtifactKind::VmInitramfs),
            ("lib/vmlinuz", ArtifactKind::VmKernel),
            ("vm/liblockbox.so", ArtifactKind::Library),
        ] {
            let mut a = artifact(path, kind);
            a.kind = kind;
            assert!(a.validate().is_err(), "{path} as {kind:?} accepted");
        }
    }

    #[test]
    fn rejects_other_schema_and_unknown_platform() {
        let mut m = manifest(vec![artifact("lib/liblockbox.so", ArtifactKind::Library)]);
        assert!(matches!(
            m.artifacts_for("plan9-mips"),
            Err(Error::Verification(_))
        ));
        m.schema_version = 2;
        assert!(Manifest::parse(&m.to_bytes()).is_err());
    }

    #[test]
    fn versions_are_safe_directory_names() {
        for v in ["0.1.0", "1.0.0-rc.1", "2+build"] {
            validate_version(v).unwrap();
        }
        for v in ["", "..", "../x", "a/b", ".hidden", "a b"] {
            assert!(validate_version(v).is_err(), "{v:?} accepted");
        }
    }
}
