//! Name -> digest references, one small JSON file per name, written
//! atomically. The file name is the sha256 of the name so any reference
//! string (`registry:5000/a/b:tag`) is a safe file name.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::error::{IoContext, Result};
use crate::fsutil::write_atomic;

/// Identity of a release asset when it was imported, so the warm path is
/// a stat, not a re-hash.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SourceStamp {
    pub path: PathBuf,
    pub size: u64,
    pub mtime_ns: i128,
    pub ino: u64,
}

impl SourceStamp {
    pub(crate) fn of(path: &Path) -> Result<Self> {
        let m = std::fs::metadata(path).ctx("stat", path)?;
        Ok(SourceStamp {
            path: path.to_path_buf(),
            size: m.len(),
            mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
            ino: m.ino(),
        })
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Ref {
    pub name: String,
    pub digest: Digest,
    #[serde(default)]
    pub source: Option<SourceStamp>,
}

pub(crate) fn ref_path(refs_dir: &Path, name: &str) -> PathBuf {
    refs_dir.join(format!("{}.json", Digest::of_bytes(name.as_bytes()).hex()))
}

pub(crate) fn read(refs_dir: &Path, name: &str) -> Option<Ref> {
    let data = std::fs::read(ref_path(refs_dir, name)).ok()?;
    serde_json::from_slice::<Ref>(&data)
        .ok()
        .filter(|r| r.name == name)
}

pub(crate) fn write(refs_dir: &Path, r: &Ref) -> Result<()> {
    let data = serde_json::to_vec_pretty(r).expect("ref serializes");
    write_atomic(&ref_path(refs_dir, &r.name), &data)
}

pub(crate) fn all(refs_dir: &Path) -> Result<Vec<Ref>> {
    let mut out = Vec::new();
    let list = match std::fs::read_dir(refs_dir) {
        Ok(l) => l,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(crate::error::ImageError::io("readdir", refs_dir, e)),
    };
    for ent in list {
        let ent = ent.ctx("readdir", refs_dir)?;
        if ent.path().extension().is_some_and(|e| e == "json") {
            if let Ok(data) = std::fs::read(ent.path()) {
                if let Ok(r) = serde_json::from_slice::<Ref>(&data) {
                    out.push(r);
                }
            }
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}
