//! Where things live: the state home, the helper executable and the image
//! directory. The lookup order is the one in the team brief, so the Go SDK,
//! the installer and the engine all agree.

use std::path::{Path, PathBuf};

use crate::error::{EngineError, Result};

/// `$LOCKBOX_HOME`, else the per-user data dir.
pub fn default_home() -> Result<PathBuf> {
    if let Some(h) = std::env::var_os("LOCKBOX_HOME").filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(h));
    }
    directories::ProjectDirs::from("dev", "lockbox", "lockbox")
        .map(|d| d.data_dir().to_path_buf())
        .ok_or_else(|| EngineError::unavailable("no home directory: set LOCKBOX_HOME"))
}

/// The directory of the shared object (or executable) this code was linked
/// into: `liblockbox.so`'s dir when loaded by a host, the test binary's dir
/// in cargo tests.
pub fn own_object_dir() -> Option<PathBuf> {
    // SAFETY: dladdr only reads loader tables; the address is a function of
    // this crate, so it lies inside the object we want to locate.
    unsafe {
        let mut info: libc::Dl_info = std::mem::zeroed();
        let addr = own_object_dir as *const libc::c_void;
        if libc::dladdr(addr, &mut info) == 0 || info.dli_fname.is_null() {
            return None;
        }
        let name = std::ffi::CStr::from_ptr(info.dli_fname);
        let p = PathBuf::from(std::ffi::OsStr::from_encoded_bytes_unchecked(
            name.to_bytes(),
        ));
        let p = std::fs::canonicalize(&p).unwrap_or(p);
        p.parent().map(Path::to_path_buf)
    }
}

/// `LOCKBOX_HELPER`, else `<libdir>/../bin/lockbox-helper`, else next to the
/// library (dev builds: target/release).
pub fn find_helper() -> Result<PathBuf> {
    if let Some(h) = std::env::var_os("LOCKBOX_HELPER").filter(|v| !v.is_empty()) {
        let p = PathBuf::from(h);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(EngineError::not_found(format!(
                "LOCKBOX_HELPER={} is not a file",
                p.display()
            )))
        };
    }
    let mut tried = Vec::new();
    if let Some(dir) = own_object_dir() {
        let mut candidates = vec![
            dir.join("../bin/lockbox-helper"),
            dir.join("lockbox-helper"),
        ];
        // cargo test binaries live in target/<profile>/deps; test copies of
        // the library in another dir under target/ use a cargo-built helper.
        candidates.push(dir.join("../lockbox-helper"));
        candidates.push(dir.join("../release/lockbox-helper"));
        candidates.push(dir.join("../debug/lockbox-helper"));
        for c in candidates {
            if c.is_file() {
                return Ok(c);
            }
            tried.push(c.display().to_string());
        }
    }
    Err(EngineError::not_found(format!(
        "lockbox-helper not found (set LOCKBOX_HELPER); tried {}",
        tried.join(", ")
    )))
}

/// Candidate image roots in lookup order: `LOCKBOX_IMAGES`, `<libdir>/../images`,
/// then the dev tree's `build/images`.
pub fn image_roots() -> Vec<PathBuf> {
    let mut roots = Vec::new();
    if let Some(h) = std::env::var_os("LOCKBOX_IMAGES").filter(|v| !v.is_empty()) {
        roots.push(PathBuf::from(h));
    }
    if let Some(dir) = own_object_dir() {
        roots.push(dir.join("../images"));
        // dev: <repo>/target/<profile>/ and <repo>/target/<profile>/deps/
        roots.push(dir.join("../../build/images"));
        roots.push(dir.join("../../../build/images"));
    }
    // A debug build's own checkout; never in a release library, whose
    // bytes must not depend on where it was built.
    #[cfg(debug_assertions)]
    roots.push(Path::new(env!("CARGO_MANIFEST_DIR")).join("../build/images"));
    roots
}

/// Resolves a named image to its unpacked root filesystem directory.
pub fn resolve_image(name: &str) -> Result<PathBuf> {
    crate::names::validate("image", name)?;
    let roots = image_roots();
    for r in &roots {
        let p = r.join(name).join("rootfs");
        if p.is_dir() {
            return Ok(std::fs::canonicalize(&p).unwrap_or(p));
        }
    }
    Err(EngineError::not_found(format!(
        "image {name:?} not found (looked in {})",
        roots
            .iter()
            .map(|r| r.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    )))
}

/// Where state lives under one home.
#[derive(Debug, Clone)]
pub struct Layout {
    pub home: PathBuf,
}

impl Layout {
    pub fn new(home: PathBuf) -> Layout {
        Layout { home }
    }
    pub fn sandboxes(&self) -> PathBuf {
        self.home.join("sandboxes")
    }
    pub fn sandbox(&self, name: &str) -> PathBuf {
        self.sandboxes().join(name)
    }
    pub fn volumes(&self) -> PathBuf {
        self.home.join("volumes")
    }
    pub fn volume(&self, name: &str) -> PathBuf {
        self.volumes().join(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_paths() {
        let l = Layout::new(PathBuf::from("/h"));
        assert_eq!(l.sandbox("a"), PathBuf::from("/h/sandboxes/a"));
        assert_eq!(l.volume("v"), PathBuf::from("/h/volumes/v"));
    }

    #[test]
    fn own_dir_is_found() {
        assert!(own_object_dir().unwrap().is_dir());
    }

    #[test]
    fn missing_image_is_not_found() {
        let e = resolve_image("no-such-image-xyz").unwrap_err();
        assert_eq!(e.code, lockbox_protocol::ErrorCode::NotFound);
        assert!(resolve_image("../etc").is_err());
    }
}
