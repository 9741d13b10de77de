//! `verify`: re-checks a release directory (dist/<version>, before it is
//! published or after it was copied to a mirror) from scratch: signature,
//! every artifact's size, sha256 and mode, and no stray files. An
//! installed version directory passes too: its `.complete` must then name
//! the manifest, and its VM assets may be absent (they are installed only
//! when asked for), but only both together with their `vm/` directory.

use std::collections::HashSet;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use crate::error::{Error, Result};
use crate::fsutil::{hash_reader, open_trusted, read_trusted, sha256_hex};
use crate::manifest::{
    Manifest, ABI_VERSION, MANIFEST, MARKER, MAX_MANIFEST_BYTES, MAX_SIGNATURE_BYTES, SIGNATURE,
    VM_DIR,
};
use crate::signing::TrustedKeys;

pub fn verify_tree(dir: &Path, trusted: &TrustedKeys, platform: &str) -> Result<Manifest> {
    // Only regular files, never through a link, never blocking on a FIFO.
    let bytes = read_trusted(&dir.join(MANIFEST), MAX_MANIFEST_BYTES)?;
    trusted.verify(
        &bytes,
        &read_trusted(&dir.join(SIGNATURE), MAX_SIGNATURE_BYTES)?,
    )?;
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
    let mut expected: HashSet<String> = [MANIFEST, SIGNATURE].map(String::from).into();
    let installed = fs::symlink_metadata(dir.join(MARKER)).is_ok();
    let vm_absent = fs::symlink_metadata(dir.join(VM_DIR))
        .is_err_and(|e| e.kind() == std::io::ErrorKind::NotFound);
    if installed {
        let marker = read_trusted(&dir.join(MARKER), 128)?;
        if marker != format!("{}\n", sha256_hex(&bytes)).as_bytes() {
            return Err(Error::Verification(format!(
                "{} does not name this manifest",
                dir.join(MARKER).display()
            )));
        }
        expected.insert(MARKER.into());
    }
    for a in manifest.artifacts_for(platform)? {
        if a.kind.is_vm() && installed && vm_absent {
            continue;
        }
        let p = dir.join(&a.path);
        if fs::symlink_metadata(&p).is_err_and(|e| e.kind() == std::io::ErrorKind::NotFound) {
            return Err(Error::Verification(format!("{} is missing", a.path)));
        }
        let (f, meta) = open_trusted(&p)?;
        let (size, sum) = hash_reader(f, &p)?;
        if size != a.size || sum != a.sha256 {
            return Err(Error::Verification(format!(
                "{}: {size} bytes sha256 {sum}, manifest says {} bytes sha256 {}",
                a.path, a.size, a.sha256
            )));
        }
        let mode = meta.permissions().mode() & 0o777;
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

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::manifest::current_platform;
    use crate::release::{release, ReleaseRequest};
    use crate::signing::generate_signing_key;

    /// A real release of small files, the trust that accepts it, and its dir.
    fn released(tmp: &Path) -> (PathBuf, TrustedKeys) {
        released_with(tmp, false)
    }

    fn released_with(tmp: &Path, vm: bool) -> (PathBuf, TrustedKeys) {
        let src = tmp.join("src");
        fs::create_dir_all(src.join("vm")).unwrap();
        fs::write(src.join("vm/vmlinuz"), vec![9u8; 5000]).unwrap();
        fs::write(src.join("vm/initramfs.img"), vec![8u8; 3000]).unwrap();
        fs::create_dir_all(src.join("images")).unwrap();
        fs::write(src.join("liblockbox.so"), vec![7u8; 100_000]).unwrap();
        fs::write(src.join("lockbox-helper"), b"#!/bin/sh\n").unwrap();
        fs::write(src.join("images/base.tar.zst"), b"image").unwrap();
        let key = generate_signing_key();
        let mut trusted = TrustedKeys::default();
        trusted.add("test", key.verifying_key());
        let r = release(&ReleaseRequest {
            version: "1.0.0".into(),
            out: tmp.join("dist"),
            key,
            platform: current_platform(),
            library: src.join("liblockbox.so"),
            helpers: vec![src.join("lockbox-helper")],
            images_dir: Some(src.join("images")),
            vm_assets: vm.then(|| src.join("vm")),
            pin_dirs: vec![],
            source: None,
        })
        .unwrap();
        (r.dir, trusted)
    }

    fn verify(dir: &Path, trusted: &TrustedKeys) -> Result<Manifest> {
        verify_tree(dir, trusted, &current_platform())
    }

    #[test]
    fn a_fresh_release_verifies_and_every_change_is_caught() {
        let tmp = tempfile::tempdir().unwrap();
        let (dir, trusted) = released(tmp.path());
        verify(&dir, &trusted).unwrap();

        let lib = dir.join("lib/liblockbox.so");
        let good = fs::read(&lib).unwrap();
        let mut bad = good.clone();
        bad[50_000] ^= 1;
        fs::write(&lib, &bad).unwrap();
        assert!(
            matches!(verify(&dir, &trusted), Err(Error::Verification(e)) if e.contains("sha256"))
        );
        fs::write(&lib, &good[..good.len() - 1]).unwrap();
        assert!(
            matches!(verify(&dir, &trusted), Err(Error::Verification(e)) if e.contains("bytes"))
        );
        fs::write(&lib, &good).unwrap();
        verify(&dir, &trusted).unwrap();

        fs::write(dir.join("bin/extra"), b"x").unwrap();
        assert!(
            matches!(verify(&dir, &trusted), Err(Error::Verification(e)) if e.contains("unexpected"))
        );
        fs::remove_file(dir.join("bin/extra")).unwrap();

        fs::remove_file(dir.join("images/base.tar.zst")).unwrap();
        assert!(
            matches!(verify(&dir, &trusted), Err(Error::Verification(e)) if e.contains("base.tar.zst is missing"))
        );
    }

    // A release must carry its VM assets; an install may lack them, but
    // only as a whole: a vm/ directory present is checked like the rest.
    #[test]
    fn vm_assets_are_checked_and_optional_only_in_an_install() {
        let tmp = tempfile::tempdir().unwrap();
        let (dir, trusted) = released_with(tmp.path(), true);
        let m = verify(&dir, &trusted).unwrap();
        let kinds: Vec<_> = m.platforms.values().flatten().map(|a| a.kind).collect();
        assert!(kinds.contains(&crate::manifest::ArtifactKind::VmKernel));
        assert!(kinds.contains(&crate::manifest::ArtifactKind::VmInitramfs));

        let initramfs = dir.join("vm/initramfs.img");
        let good = fs::read(&initramfs).unwrap();
        let mut bad = good.clone();
        bad[1000] ^= 1;
        fs::write(&initramfs, &bad).unwrap();
        assert!(
            matches!(verify(&dir, &trusted), Err(Error::Verification(e)) if e.contains("vm/initramfs.img"))
        );
        fs::write(&initramfs, &good).unwrap();

        let vm = tmp.path().join("vm-aside");
        fs::rename(dir.join("vm"), &vm).unwrap();
        assert!(
            matches!(verify(&dir, &trusted), Err(Error::Verification(e)) if e.contains("vm/vmlinuz is missing")),
            "a release without its VM assets verified"
        );
        let sum = sha256_hex(&fs::read(dir.join(MANIFEST)).unwrap());
        fs::write(dir.join(MARKER), format!("{sum}\n")).unwrap();
        verify(&dir, &trusted).unwrap();

        // Half of them is not "not installed".
        fs::create_dir(dir.join("vm")).unwrap();
        fs::copy(vm.join("vmlinuz"), dir.join("vm/vmlinuz")).unwrap();
        assert!(
            matches!(verify(&dir, &trusted), Err(Error::Verification(e)) if e.contains("vm/initramfs.img is missing"))
        );
        fs::copy(vm.join("initramfs.img"), dir.join("vm/initramfs.img")).unwrap();
        verify(&dir, &trusted).unwrap();
    }

    #[test]
    fn a_changed_manifest_or_another_key_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let (dir, trusted) = released(tmp.path());
        let mut other = TrustedKeys::default();
        other.add("other", generate_signing_key().verifying_key());
        assert!(
            matches!(verify(&dir, &other), Err(Error::Verification(e)) if e.contains("signature"))
        );

        let manifest = dir.join(MANIFEST);
        let mut bytes = fs::read(&manifest).unwrap();
        bytes.push(b' ');
        fs::write(&manifest, bytes).unwrap();
        assert!(
            matches!(verify(&dir, &trusted), Err(Error::Verification(e)) if e.contains("signature"))
        );
    }

    #[test]
    fn links_and_a_wrong_marker_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let (dir, trusted) = released(tmp.path());
        fs::write(dir.join(MARKER), "0".repeat(64) + "\n").unwrap();
        assert!(
            matches!(verify(&dir, &trusted), Err(Error::Verification(e)) if e.contains(MARKER))
        );
        let sum = sha256_hex(&fs::read(dir.join(MANIFEST)).unwrap());
        fs::write(dir.join(MARKER), format!("{sum}\n")).unwrap();
        verify(&dir, &trusted).unwrap();

        // A link to a file with the right bytes is still a link.
        let lib = dir.join("lib/liblockbox.so");
        let copy = tmp.path().join("copy.so");
        fs::copy(&lib, &copy).unwrap();
        fs::remove_file(&lib).unwrap();
        std::os::unix::fs::symlink(&copy, &lib).unwrap();
        assert!(
            matches!(verify(&dir, &trusted), Err(Error::Unsafe(e)) if e.contains("symbolic link"))
        );
    }
}
