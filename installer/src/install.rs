//! The install algorithm, identical in the Go SDK (go/install*.go):
//! warm check -> lock -> re-check -> fetch + verify manifest -> stage and
//! verify every artifact -> fsync -> rename into place -> `.complete` last.
//!
//! Every directory it makes is 0700, every file is opened without
//! following links, and an install tree is used only if it and every
//! directory above it belong to this user or root and are not writable by
//! others (fsutil.rs). Downloads go to unpredictable names inside the
//! staging dir and are never resumed across runs.

use std::fs::{self, OpenOptions};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::error::{Error, Result};
use crate::fsutil::{
    check_dir, check_node, create_exclusive, ensure_dir, read_trusted, remove_tree, resolve_root,
    sha256_hex, sync_dir, write_atomic, PRIVATE_DIR_MODE,
};
use crate::layout::{marker_content, VersionPaths, MANIFEST, SIGNATURE};
use crate::lock::InstallLock;
use crate::manifest::{Manifest, ABI_VERSION, MAX_MANIFEST_BYTES, MAX_SIGNATURE_BYTES};
use crate::signing::TrustedKeys;
use crate::source::Source;

pub struct InstallRequest {
    pub version: String,
    pub root: PathBuf,
    pub source: Option<Source>,
    pub trusted: TrustedKeys,
    pub offline: bool,
    pub platform: String,
    /// When set, the manifest must hash to exactly this (a pinned install).
    pub pinned_manifest_sha256: Option<String>,
    /// Bounds the wait for another process's install lock (the source's
    /// limits bound the downloads).
    pub deadline: Option<Instant>,
}

#[derive(Debug)]
pub struct Installed {
    pub dir: PathBuf,
    pub manifest: Manifest,
    /// True when it was already installed and nothing was fetched.
    pub warm: bool,
}

#[derive(Debug)]
pub enum Event<'a> {
    Manifest { signed_by: &'a str },
    Artifact { path: &'a str, have: u64, size: u64 },
    Complete,
}

pub fn install(req: &InstallRequest, on_event: &mut dyn FnMut(Event)) -> Result<Installed> {
    crate::manifest::validate_version(&req.version)?;
    match check_complete(req) {
        Ok(Some((paths, m))) => return Ok(installed(&paths, m, true)),
        Ok(None) => {}
        Err(e) if req.offline => {
            let paths = VersionPaths::new(&req.root, &req.version);
            return Err(Error::Offline(format!(
                "{} ({e})",
                describe_missing(&paths, &req.platform)
            )));
        }
        // Say why the tree there is not used, rather than "no source".
        Err(e @ Error::Unsafe(_)) if req.source.is_none() => return Err(e),
        Err(_) => {} // replaced under the lock, or refused by resolve_root below
    }
    if req.offline {
        let paths = VersionPaths::new(&req.root, &req.version);
        return Err(Error::Offline(describe_missing(&paths, &req.platform)));
    }
    let source = req.source.as_ref().ok_or_else(|| {
        Error::Usage(
            "no release source: pass --from URL|DIR or set LOCKBOX_RELEASE_URL \
             (there is no default download server)"
                .into(),
        )
    })?;
    let root = resolve_root(&req.root, true)?.expect("created");
    let paths = VersionPaths::new(&root, &req.version);
    ensure_dir(&paths.versions)?;
    let _lock = InstallLock::acquire(&paths.lock, req.deadline)?;
    // Another process may have finished while we waited for the lock.
    if let Ok(Some((paths, m))) = check_complete(req) {
        return Ok(installed(&paths, m, true));
    }
    clear_leftovers(&paths)?;

    let manifest_rel = format!("{}/{MANIFEST}", req.version);
    let manifest_bytes = source.fetch_small(&manifest_rel, MAX_MANIFEST_BYTES)?;
    let sig_bytes =
        source.fetch_small(&format!("{}/{SIGNATURE}", req.version), MAX_SIGNATURE_BYTES)?;
    let manifest = verify_manifest(req, &manifest_bytes, &sig_bytes, on_event)?;
    let artifacts = manifest.artifacts_for(&req.platform)?;

    let staging = paths.new_scratch("staging");
    let staged = (|| {
        fs::DirBuilder::new()
            .mode(PRIVATE_DIR_MODE)
            .create(&staging)
            .map_err(|e| Error::io_at("create", &staging, e))?;
        check_dir(&staging)?;
        write_file(&staging.join(MANIFEST), &manifest_bytes)?;
        write_file(&staging.join(SIGNATURE), &sig_bytes)?;
        for a in artifacts {
            let dest = staging.join(&a.path);
            let parent = dest.parent().expect("artifact path has a directory");
            ensure_dir(parent)?;
            let (mut f, part) = create_exclusive(parent, ".download-")?;
            let fetched = source
                .download(
                    &format!("{}/{}", req.version, a.path),
                    a,
                    &mut f,
                    &mut |have, size| {
                        on_event(Event::Artifact {
                            path: &a.path,
                            have,
                            size,
                        })
                    },
                )
                .and_then(|_| {
                    f.set_permissions(fs::Permissions::from_mode(a.kind.mode()))
                        .and_then(|_| f.sync_all())
                        .map_err(|e| Error::io_at("finish", &part, e))
                });
            drop(f);
            if let Err(e) = fetched {
                let _ = fs::remove_file(&part);
                return Err(e);
            }
            fs::rename(&part, &dest).map_err(|e| Error::io_at("move into", &dest, e))?;
        }
        for sub in ["lib", "bin", "images"] {
            let d = staging.join(sub);
            if d.is_dir() {
                sync_dir(&d)?;
            }
        }
        sync_dir(&staging)
    })();
    if let Err(e) = staged {
        let _ = remove_tree(&staging);
        return Err(e);
    }
    fs::rename(&staging, &paths.dir).map_err(|e| Error::io_at("rename into", &paths.dir, e))?;
    sync_dir(&paths.versions)?;
    write_atomic(
        &paths.marker(),
        marker_content(&sha256_hex(&manifest_bytes)).as_bytes(),
        0o644,
    )?;
    on_event(Event::Complete);
    Ok(installed(&paths, manifest, false))
}

fn installed(paths: &VersionPaths, manifest: Manifest, warm: bool) -> Installed {
    Installed {
        dir: paths.dir.clone(),
        manifest,
        warm,
    }
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| Error::io_at("create", path, e))?;
    std::io::Write::write_all(&mut f, bytes)
        .and_then(|_| f.sync_all())
        .map_err(|e| Error::io_at("write", path, e))
}

/// Signature, then version/ABI/pin: the manifest is only parsed once its
/// bytes are known to come from a trusted key.
fn verify_manifest(
    req: &InstallRequest,
    bytes: &[u8],
    sig: &[u8],
    on_event: &mut dyn FnMut(Event),
) -> Result<Manifest> {
    if req.trusted.is_empty() {
        return Err(Error::Verification("no trusted keys".into()));
    }
    let signer = req.trusted.verify(bytes, sig)?;
    on_event(Event::Manifest { signed_by: signer });
    if let Some(pin) = &req.pinned_manifest_sha256 {
        let got = sha256_hex(bytes);
        if &got != pin {
            return Err(Error::Verification(format!(
                "manifest sha256 {got} differs from the pinned {pin}"
            )));
        }
    }
    let m = Manifest::parse(bytes)?;
    if m.version != req.version {
        return Err(Error::Verification(format!(
            "manifest is for version {}, asked for {}",
            m.version, req.version
        )));
    }
    if m.abi_version != ABI_VERSION {
        return Err(Error::Verification(format!(
            "manifest has ABI {}, this installer wants {ABI_VERSION}",
            m.abi_version
        )));
    }
    Ok(m)
}

/// The warm path. The marker is public (the manifest's hash), so it only
/// says which manifest to check: that manifest must match it (and the pin)
/// and still carry a trusted signature, and every artifact must be a
/// regular file of the manifest's size, owned by this user or root and not
/// writable by others, in directories with the same property up to /.
/// Artifacts are not re-hashed (that is `verify`). `Ok(None)`: nothing
/// complete is there; `Err`: something is there that must not be used.
fn check_complete(req: &InstallRequest) -> Result<Option<(VersionPaths, Manifest)>> {
    let Some(root) = resolve_root(&req.root, false)? else {
        return Ok(None);
    };
    let paths = VersionPaths::new(&root, &req.version);
    for d in [&paths.versions, &paths.dir] {
        match fs::symlink_metadata(d) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io_at("stat", d, e)),
            Ok(m) => check_node(d, &m, true, true)?,
        }
    }
    let marker = match read_trusted(&paths.marker(), 256) {
        Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            return Ok(None)
        }
        r => r?,
    };
    let bytes = read_trusted(&paths.dir.join(MANIFEST), MAX_MANIFEST_BYTES)?;
    let sum = sha256_hex(&bytes);
    if marker != marker_content(&sum).as_bytes()
        || req
            .pinned_manifest_sha256
            .as_ref()
            .is_some_and(|p| p != &sum)
    {
        return Ok(None);
    }
    let sig = read_trusted(&paths.dir.join(SIGNATURE), MAX_SIGNATURE_BYTES)?;
    let m = verify_manifest(req, &bytes, &sig, &mut |_| {})?;
    for a in m.artifacts_for(&req.platform)? {
        let p = paths.dir.join(&a.path);
        check_dir(p.parent().expect("artifact path has a directory"))?;
        let meta = fs::symlink_metadata(&p).map_err(|e| Error::io_at("stat", &p, e))?;
        check_node(&p, &meta, false, true)?;
        if meta.size() != a.size {
            return Err(Error::Verification(format!(
                "{}: {} bytes, the manifest says {}",
                p.display(),
                meta.size(),
                a.size
            )));
        }
    }
    Ok(Some((paths, m)))
}

/// Under the lock: staging/trash dirs of this version are from a killed
/// installer, and a version dir without a valid marker is not installed.
fn clear_leftovers(paths: &VersionPaths) -> Result<()> {
    let prefixes = paths.scratch_prefixes();
    for e in fs::read_dir(&paths.versions)
        .map_err(|e| Error::io_at("list", &paths.versions, e))?
        .flatten()
    {
        let name = e.file_name().to_string_lossy().into_owned();
        if prefixes.iter().any(|p| name.starts_with(p)) || e.path() == paths.legacy_partial() {
            remove_tree(&e.path())?;
        }
    }
    if fs::symlink_metadata(&paths.dir).is_ok() {
        // Rename first so a concurrent reader never sees a half-deleted tree.
        let trash = paths.new_scratch("trash");
        fs::rename(&paths.dir, &trash).map_err(|e| Error::io_at("move aside", &paths.dir, e))?;
        sync_dir(&paths.versions)?;
        remove_tree(&trash)?;
    }
    Ok(())
}

fn describe_missing(paths: &VersionPaths, platform: &str) -> String {
    let mut missing = Vec::new();
    match read_trusted(&paths.dir.join(MANIFEST), MAX_MANIFEST_BYTES)
        .ok()
        .and_then(|b| Manifest::parse(&b).ok())
    {
        None => missing.push(format!("{} (no manifest)", paths.dir.display())),
        Some(m) => {
            for a in m.platforms.get(platform).into_iter().flatten() {
                if fs::symlink_metadata(paths.dir.join(&a.path)).is_err() {
                    missing.push(a.path.clone());
                }
            }
            if fs::symlink_metadata(paths.marker()).is_err() {
                missing.push(crate::layout::MARKER.to_string());
            }
        }
    }
    format!(
        "version {} is not completely installed in {}; missing: {}",
        paths.version,
        paths.dir.display(),
        missing.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::release::{release, ReleaseRequest};
    use crate::signing::generate_signing_key;

    struct Fixture {
        _tmp: tempfile::TempDir,
        dist: PathBuf,
        root: PathBuf,
        trusted: TrustedKeys,
    }

    fn fixture(version: &str) -> Fixture {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        fs::create_dir_all(&src).unwrap();
        fs::write(src.join("liblockbox.so"), vec![7u8; 100_000]).unwrap();
        fs::write(src.join("lockbox-helper"), b"#!/bin/sh\n").unwrap();
        let key = generate_signing_key();
        let mut trusted = TrustedKeys::default();
        trusted.add("test", key.verifying_key());
        let dist = tmp.path().join("dist");
        release(&ReleaseRequest {
            version: version.into(),
            out: dist.clone(),
            key,
            platform: crate::manifest::current_platform(),
            library: src.join("liblockbox.so"),
            helpers: vec![src.join("lockbox-helper")],
            images_dir: None,
            pin_dirs: vec![],
        })
        .unwrap();
        Fixture {
            root: tmp.path().join("home"),
            dist,
            trusted,
            _tmp: tmp,
        }
    }

    fn request(f: &Fixture, version: &str, offline: bool) -> InstallRequest {
        InstallRequest {
            version: version.into(),
            root: f.root.clone(),
            source: Some(Source::Dir(f.dist.clone())),
            trusted: f.trusted.clone(),
            offline,
            platform: crate::manifest::current_platform(),
            pinned_manifest_sha256: None,
            deadline: None,
        }
    }

    #[test]
    fn installs_then_takes_the_warm_path() {
        let f = fixture("1.0.0");
        let first = install(&request(&f, "1.0.0", false), &mut |_| {}).unwrap();
        assert!(!first.warm);
        crate::verify::verify_tree(&first.dir, &f.trusted, &crate::manifest::current_platform())
            .unwrap();
        let second = install(&request(&f, "1.0.0", true), &mut |_| {}).unwrap();
        assert!(second.warm);
    }

    #[test]
    fn pin_mismatch_and_tampering_install_nothing() {
        let f = fixture("1.0.0");
        let mut req = request(&f, "1.0.0", false);
        req.pinned_manifest_sha256 = Some("0".repeat(64));
        assert!(matches!(
            install(&req, &mut |_| {}),
            Err(Error::Verification(_))
        ));

        let manifest = f.dist.join("1.0.0").join(MANIFEST);
        let mut bytes = fs::read(&manifest).unwrap();
        bytes.push(b' ');
        fs::write(&manifest, bytes).unwrap();
        assert!(matches!(
            install(&request(&f, "1.0.0", false), &mut |_| {}),
            Err(Error::Verification(_))
        ));
        let versions = f.root.join("versions");
        let left: Vec<_> = fs::read_dir(&versions)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            left,
            vec!["1.0.0.lock".to_string()],
            "left behind: {left:?}"
        );
    }

    #[test]
    fn leftovers_and_unmarked_trees_are_replaced() {
        let f = fixture("2.0.0");
        let paths = VersionPaths::new(&f.root, "2.0.0");
        fs::create_dir_all(paths.dir.join("lib")).unwrap();
        fs::write(paths.dir.join("lib/liblockbox.so"), b"partial").unwrap();
        let stale = paths.new_scratch("staging");
        fs::create_dir_all(&stale).unwrap();
        assert!(matches!(
            install(&request(&f, "2.0.0", true), &mut |_| {}),
            Err(Error::Offline(_))
        ));
        let done = install(&request(&f, "2.0.0", false), &mut |_| {}).unwrap();
        assert!(!stale.exists());
        crate::verify::verify_tree(&done.dir, &f.trusted, &crate::manifest::current_platform())
            .unwrap();
    }

    #[test]
    fn an_older_installers_partial_is_deleted_unread() {
        let f = fixture("4.0.0");
        let paths = VersionPaths::new(&f.root, "4.0.0");
        fs::create_dir_all(paths.legacy_partial()).unwrap();
        fs::write(
            paths.legacy_partial().join("x-lib_liblockbox.so"),
            b"garbage",
        )
        .unwrap();
        let done = install(&request(&f, "4.0.0", false), &mut |_| {}).unwrap();
        crate::verify::verify_tree(&done.dir, &f.trusted, &crate::manifest::current_platform())
            .unwrap();
        assert!(!paths.legacy_partial().exists());
    }

    #[test]
    fn a_tree_others_can_write_is_refused() {
        let f = fixture("5.0.0");
        install(&request(&f, "5.0.0", false), &mut |_| {}).unwrap();
        let versions = f.root.join("versions");
        fs::set_permissions(&versions, fs::Permissions::from_mode(0o777)).unwrap();
        let err = install(&request(&f, "5.0.0", true), &mut |_| {}).unwrap_err();
        assert!(
            err.to_string().contains("writable by group or others"),
            "{err}"
        );
        assert!(matches!(
            install(&request(&f, "5.0.0", false), &mut |_| {}),
            Err(Error::Unsafe(_))
        ));
        fs::set_permissions(&versions, fs::Permissions::from_mode(0o700)).unwrap();
        // A forged marker over a symlinked library is not an install.
        let lib = versions.join("5.0.0/lib/liblockbox.so");
        fs::remove_file(&lib).unwrap();
        std::os::unix::fs::symlink("/etc/hostname", &lib).unwrap();
        assert!(install(&request(&f, "5.0.0", true), &mut |_| {}).is_err());
        let done = install(&request(&f, "5.0.0", false), &mut |_| {}).unwrap();
        assert!(fs::symlink_metadata(done.dir.join("lib/liblockbox.so"))
            .unwrap()
            .is_file());
    }

    #[test]
    fn wrong_version_in_manifest_is_refused() {
        let f = fixture("3.0.0");
        fs::rename(f.dist.join("3.0.0"), f.dist.join("3.0.1")).unwrap();
        assert!(matches!(
            install(&request(&f, "3.0.1", false), &mut |_| {}),
            Err(Error::Verification(_))
        ));
    }
}
