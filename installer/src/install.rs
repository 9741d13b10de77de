//! The install algorithm, identical in the Go SDK (go/install*.go):
//! warm check -> lock -> re-check -> fetch + verify manifest -> stage and
//! verify every artifact -> fsync -> rename into place -> `.complete` last.

use std::fs::{self, OpenOptions};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::fsutil::{remove_tree, sha256_hex, sync_dir, write_atomic};
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
    let paths = VersionPaths::new(&req.root, &req.version);
    if let Some(m) = check_complete(&paths, req)? {
        return Ok(installed(&paths, m, true));
    }
    if req.offline {
        return Err(Error::Offline(describe_missing(&paths, &req.platform)));
    }
    let source = req.source.as_ref().ok_or_else(|| {
        Error::Usage(
            "no release source: pass --from URL|DIR or set LOCKBOX_RELEASE_URL \
             (there is no default download server)"
                .into(),
        )
    })?;
    fs::create_dir_all(&paths.versions).map_err(|e| Error::io_at("create", &paths.versions, e))?;
    let _lock = InstallLock::acquire(&paths.lock)?;
    // Another process may have finished while we waited for the lock.
    if let Some(m) = check_complete(&paths, req)? {
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
        fs::create_dir(&staging).map_err(|e| Error::io_at("create", &staging, e))?;
        write_file(&staging.join(MANIFEST), &manifest_bytes)?;
        write_file(&staging.join(SIGNATURE), &sig_bytes)?;
        for a in artifacts {
            let dest = staging.join(&a.path);
            let parent = dest.parent().expect("artifact path has a directory");
            fs::create_dir_all(parent).map_err(|e| Error::io_at("create", parent, e))?;
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&dest)
                .map_err(|e| Error::io_at("create", &dest, e))?;
            source.download(
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
            )?;
            f.set_permissions(fs::Permissions::from_mode(a.kind.mode()))
                .and_then(|_| f.sync_all())
                .map_err(|e| Error::io_at("finish", &dest, e))?;
        }
        for sub in ["lib", "bin", "images"] {
            let d = staging.join(sub);
            if d.is_dir() {
                sync_dir(&d)?;
            }
        }
        sync_dir(&staging)?;
        fs::set_permissions(&staging, fs::Permissions::from_mode(0o755))
            .map_err(|e| Error::io_at("chmod", &staging, e))
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

/// The warm path: the marker matches the installed manifest (and the pin),
/// and that manifest is still signed by a trusted key. Artifacts are not
/// re-hashed (that is `verify`).
fn check_complete(paths: &VersionPaths, req: &InstallRequest) -> Result<Option<Manifest>> {
    let Ok(marker) = fs::read_to_string(paths.marker()) else {
        return Ok(None);
    };
    let (Ok(bytes), Ok(sig)) = (
        fs::read(paths.dir.join(MANIFEST)),
        fs::read(paths.dir.join(SIGNATURE)),
    ) else {
        return Ok(None);
    };
    let sum = sha256_hex(&bytes);
    if marker != marker_content(&sum) {
        return Ok(None);
    }
    if req
        .pinned_manifest_sha256
        .as_ref()
        .is_some_and(|p| p != &sum)
    {
        return Ok(None);
    }
    match verify_manifest(req, &bytes, &sig, &mut |_| {}) {
        Ok(m) => Ok(Some(m)),
        Err(_) => Ok(None),
    }
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
        if prefixes.iter().any(|p| name.starts_with(p)) {
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
    match fs::read(paths.dir.join(MANIFEST))
        .ok()
        .and_then(|b| Manifest::parse(&b).ok())
    {
        None => missing.push(format!("{} (no manifest)", paths.dir.display())),
        Some(m) => {
            for a in m.platforms.get(platform).into_iter().flatten() {
                if !paths.dir.join(&a.path).is_file() {
                    missing.push(a.path.clone());
                }
            }
            if !paths.marker().is_file() {
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
