//! Named volumes: host directories under `$LOCKBOX_HOME/volumes/<name>/data`
//! that outlive sandboxes and can be mounted into several of them.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::error::{EngineError, Result};
use crate::paths::Layout;
use crate::state::{now_unix, read_json, write_json};

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeInfo {
    pub name: String,
    /// The host directory holding the volume's files.
    pub path: String,
    pub created_unix: i64,
}

fn meta_path(l: &Layout, name: &str) -> PathBuf {
    l.volume(name).join("volume.json")
}

pub fn data_dir(l: &Layout, name: &str) -> PathBuf {
    l.volume(name).join("data")
}

/// Makes a new volume; `already_exists` if the name is taken.
pub fn create(l: &Layout, name: &str) -> Result<VolumeInfo> {
    crate::names::validate("volume", name)?;
    std::fs::create_dir_all(l.volumes()).map_err(|e| EngineError::io(l.volumes().display(), e))?;
    let dir = l.volume(name);
    match std::fs::create_dir(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            return Err(EngineError::already_exists(format!(
                "volume {name:?} already exists"
            )))
        }
        Err(e) => return Err(EngineError::io(dir.display(), e)),
    }
    let data = data_dir(l, name);
    let info = VolumeInfo {
        name: name.to_string(),
        path: data.to_string_lossy().into_owned(),
        created_unix: now_unix(),
    };
    let res = std::fs::create_dir(&data)
        .and_then(|_| hand_to_sandboxes(&data))
        .map_err(|e| EngineError::io(data.display(), e))
        .and_then(|_| write_json(&meta_path(l, name), &info));
    if let Err(e) = res {
        let _ = std::fs::remove_dir_all(&dir);
        return Err(e);
    }
    Ok(info)
}

/// As root, sandbox ids 0..65536 are host ids 100000.. (the helper's
/// HOST_ID_BASE) and a writable volume owned by host root is not writable
/// by sandbox root: the volume's directory belongs to sandbox root.
/// Rootless, sandbox root is the caller, who already owns it.
fn hand_to_sandboxes(data: &std::path::Path) -> std::io::Result<()> {
    const SANDBOX_ROOT_ON_HOST: u32 = 100_000;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(());
    }
    std::os::unix::fs::chown(data, Some(SANDBOX_ROOT_ON_HOST), Some(SANDBOX_ROOT_ON_HOST))
}

pub fn get(l: &Layout, name: &str) -> Result<VolumeInfo> {
    crate::names::validate("volume", name)?;
    let p = meta_path(l, name);
    if !p.exists() {
        return Err(EngineError::not_found(format!(
            "volume {name:?} does not exist"
        )));
    }
    read_json(&p)
}

/// Returns the volume, creating it on first use.
pub fn ensure(l: &Layout, name: &str) -> Result<VolumeInfo> {
    match create(l, name) {
        Err(e) if e.code == lockbox_protocol::ErrorCode::AlreadyExists => get(l, name),
        r => r,
    }
}

pub fn list(l: &Layout) -> Result<Vec<VolumeInfo>> {
    let rd = match std::fs::read_dir(l.volumes()) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(EngineError::io(l.volumes().display(), e)),
    };
    let mut out = Vec::new();
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Ok(v) = get(l, &name) {
            out.push(v);
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Deletes a volume and its files. `in_use` names the running sandboxes
/// that mount it; a volume in use is not removed.
pub fn remove(l: &Layout, name: &str, in_use: &[String]) -> Result<()> {
    get(l, name)?;
    if !in_use.is_empty() {
        return Err(EngineError::new(
            lockbox_protocol::ErrorCode::AlreadyExists,
            format!(
                "volume {name:?} is in use by sandbox(es) {}",
                in_use.join(", ")
            ),
        ));
    }
    // Rename first so a half-deleted volume is never visible under its name.
    let dir = l.volume(name);
    let trash = l
        .volumes()
        .join(format!(".trash-{}-{}", name, crate::names::new_id()));
    std::fs::rename(&dir, &trash).map_err(|e| EngineError::io(dir.display(), e))?;
    crate::tree::remove_tree(&trash).map_err(|e| EngineError::io(trash.display(), e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use lockbox_protocol::ErrorCode;

    #[test]
    fn lifecycle() {
        let d = tempfile::tempdir().unwrap();
        let l = Layout::new(d.path().to_path_buf());
        assert!(list(&l).unwrap().is_empty());
        let v = create(&l, "data").unwrap();
        std::fs::write(PathBuf::from(&v.path).join("f"), b"x").unwrap();
        assert_eq!(
            create(&l, "data").unwrap_err().code,
            ErrorCode::AlreadyExists
        );
        assert_eq!(ensure(&l, "data").unwrap(), v);
        assert_eq!(list(&l).unwrap(), vec![v.clone()]);
        assert!(remove(&l, "data", &["sb".into()]).is_err());
        assert!(PathBuf::from(&v.path).join("f").exists());
        remove(&l, "data", &[]).unwrap();
        assert_eq!(get(&l, "data").unwrap_err().code, ErrorCode::NotFound);
        assert_eq!(
            remove(&l, "data", &[]).unwrap_err().code,
            ErrorCode::NotFound
        );
        assert!(create(&l, "../x").is_err());
    }
}
