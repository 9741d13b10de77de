//! `verify`: re-checks an installed version directory from scratch:
//! signature, marker, every artifact's size, sha256 and mode, and no
//! stray files.

use std::collections::HashSet;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use crate::error::{Error, Result};
use crate::fsutil::{hash_reader, open_trusted, read_trusted, sha256_hex};
use crate::layout::{marker_content, MANIFEST, MARKER, SIGNATURE};
use crate::manifest::{Manifest, ABI_VERSION, MAX_MANIFEST_BYTES};
use crate::signing::TrustedKeys;

pub fn verify_tree(dir: &Path, trusted: &TrustedKeys, platform: &str) -> Result<Manifest> {
    // Only regular files, never through a link, never blocking on a FIFO.
    let read = |name: &str| read_trusted(&dir.join(name), MAX_MANIFEST_BYTES);
    let bytes = read(MANIFEST)?;
    trusted.verify(&bytes, &read(SIGNATURE)?)?;
    let manifest = Manifest::parse(&bytes)?;
    if manifest.abi_version != ABI_VERSION {
        return Err(Error::Verification(format!("ABI {}", manifest.abi_version)));
    }
    if dir
        .file_name()
        .map(|n| n.to_string_lossy() != manifest.version.as_str())
        == Some(true)
    {
        return Err(Error::Verification(format!(
            "{} holds version {}",
            dir.display(),
            manifest.version
        )));
    }
    let marker = read(MARKER).unwrap_or_default();
    if marker != marker_content(&sha256_hex(&bytes)).as_bytes() {
        return Err(Error::Verification(format!(
            "{} is missing or does not match the manifest",
            dir.join(MARKER).display()
        )));
    }
    let mut expected: HashSet<String> = [MANIFEST, SIGNATURE, MARKER].map(String::from).into();
    for a in manifest.artifacts_for(platform)? {
        let p = dir.join(&a.path);
        let (f, _) = open_trusted(&p)?;
        let (size, sum) = hash_reader(f, &p)?;
        if size != a.size || sum != a.sha256 {
            return Err(Error::Verification(format!(
                "{}: {size} bytes sha256 {sum}, manifest says {} bytes sha256 {}",
                a.path, a.size, a.sha256
            )));
        }
        let mode = fs::metadata(&p)
            .map_err(|e| Error::io_at("stat", &p, e))?
            .permissions()
            .mode()
            & 0o777;
        if mode != a.kind.mode() {
            return Err(Error::Verification(format!(
                "{}: mode {mode:o}, want {:o}",
                a.path,
                a.kind.mode()
            )));
        }
        expected.insert(a.path.clone());
    }
    for entry in walk(dir)? {
        if !expected.contains(&entry) {
            return Err(Error::Verification(format!("unexpected file {entry}")));
        }
    }
    Ok(manifest)
}

/// Relative paths of all non-directories under `root`.
fn walk(root: &Path) -> Result<Vec<String>> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d)
            .map_err(|e| Error::io_at("list", &d, e))?
            .flatten()
        {
            let p = e.path();
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                stack.push(p);
            } else {
                out.push(p.strip_prefix(root).unwrap().to_string_lossy().into_owned());
            }
        }
    }
    Ok(out)
}
