//! Where things live in an install root ($LOCKBOX_HOME):
//!   versions/<v>/          the installed tree (complete iff `.complete` matches)
//!   versions/<v>.lock      cross-process install lock
//!   versions/.staging-<v>-*  in-progress installs (removed by the next installer);
//!                          downloads land only in there, under unpredictable names
//!   versions/.partial-<v>/ resumable downloads of older installers: deleted, never read

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

pub const MARKER: &str = ".complete";
pub const MANIFEST: &str = "manifest.json";
pub const SIGNATURE: &str = "manifest.json.sig";

/// The install root: explicit dir, else LOCKBOX_HOME, else the per-user
/// data dir (the same path the Go SDK and the engine use).
pub fn install_root(explicit: Option<&Path>) -> Result<PathBuf> {
    if let Some(d) = explicit {
        return Ok(d.to_path_buf());
    }
    if let Some(h) = std::env::var_os("LOCKBOX_HOME").filter(|h| !h.is_empty()) {
        return Ok(PathBuf::from(h));
    }
    directories::ProjectDirs::from("dev", "lockbox", "lockbox")
        .map(|p| p.data_dir().to_path_buf())
        .ok_or_else(|| Error::Usage("no home directory: pass --dir or set LOCKBOX_HOME".into()))
}

#[derive(Debug, Clone)]
pub struct VersionPaths {
    pub versions: PathBuf,
    pub dir: PathBuf,
    pub lock: PathBuf,
    pub version: String,
}

impl VersionPaths {
    pub fn new(root: &Path, version: &str) -> VersionPaths {
        let versions = root.join("versions");
        VersionPaths {
            dir: versions.join(version),
            lock: versions.join(format!("{version}.lock")),
            versions,
            version: version.to_string(),
        }
    }

    /// Where older installers kept downloads across runs. Those bytes were
    /// never verified: the next install deletes them unread.
    pub fn legacy_partial(&self) -> PathBuf {
        self.versions.join(format!(".partial-{}", self.version))
    }

    pub fn marker(&self) -> PathBuf {
        self.dir.join(MARKER)
    }

    /// Prefix of staging and trash dirs that belong to this version. The
    /// lock holder owns all of them: anything with it is left over.
    pub fn scratch_prefixes(&self) -> [String; 2] {
        [
            format!(".staging-{}-", self.version),
            format!(".trash-{}-", self.version),
        ]
    }

    pub fn new_scratch(&self, kind: &str) -> PathBuf {
        let nonce: u64 = rand::random();
        self.versions.join(format!(
            ".{kind}-{}-{}-{nonce:016x}",
            self.version,
            std::process::id()
        ))
    }
}

/// The content of `.complete`: the manifest's sha256 and a newline.
pub fn marker_content(manifest_sha256: &str) -> String {
    format!("{manifest_sha256}\n")
}
