//! Turning tar entry names into paths that cannot leave the layer root.
//!
//! Entry names must be relative and free of `..`; every directory on the
//! way to an entry must be a real directory, never a symlink, so nothing is
//! ever written through a link (even one pointing inside the root: the
//! target would be resolved by the host, not by the sandbox).

use std::path::{Component, Path, PathBuf};

use crate::error::{ImageError, IoContext, Result};

/// The entry name as a clean relative path (`./a/./b` -> `a/b`). An empty
/// result means the root itself.
pub(crate) fn clean_relative(name: &Path) -> Result<PathBuf> {
    let mut out = PathBuf::new();
    for c in name.components() {
        match c {
            Component::CurDir => {}
            Component::Normal(p) => out.push(p),
            Component::ParentDir => {
                return Err(ImageError::invalid_image(format!(
                    "entry {name:?} escapes the root with '..'"
                )))
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err(ImageError::invalid_image(format!(
                    "entry {name:?} is an absolute path"
                )))
            }
        }
    }
    Ok(out)
}

/// Checks (and with `create`, makes) every parent directory of `rel`
/// under `root`. Returns the directories it created.
pub(crate) fn prepare_parents(root: &Path, rel: &Path, create: bool) -> Result<Vec<PathBuf>> {
    let mut created = Vec::new();
    let mut cur = root.to_path_buf();
    let parent = rel.parent().unwrap_or(Path::new(""));
    for comp in parent.components() {
        cur.push(comp);
        match std::fs::symlink_metadata(&cur) {
            Ok(m) if m.file_type().is_dir() => {}
            Ok(m) if m.file_type().is_symlink() => {
                return Err(ImageError::invalid_image(format!(
                    "entry {rel:?} goes through the symlink {:?}",
                    cur.strip_prefix(root).unwrap_or(&cur)
                )))
            }
            Ok(_) => {
                return Err(ImageError::invalid_image(format!(
                    "entry {rel:?}: {:?} is not a directory",
                    cur.strip_prefix(root).unwrap_or(&cur)
                )))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && create => {
                std::fs::create_dir(&cur).ctx("mkdir", &cur)?;
                created.push(cur.clone());
            }
            Err(e) => return Err(ImageError::io("stat", &cur, e)),
        }
    }
    Ok(created)
}

/// Removes whatever is at `path` (file, link or whole tree) without
/// following links. Missing is fine.
pub(crate) fn remove_any(path: &Path) -> Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_dir() => std::fs::remove_dir_all(path).ctx("remove", path),
        Ok(_) => std::fs::remove_file(path).ctx("remove", path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(ImageError::io("stat", path, e)),
    }
}
