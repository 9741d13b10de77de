//! `release`: lays out dist/<version>/ exactly like an installed version
//! directory (what the Go SDK's installer downloads), with a signed manifest.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use ed25519_dalek::SigningKey;
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::fsutil::{remove_tree, sync_dir, write_atomic};
use crate::manifest::{
    Artifact, ArtifactKind, BuildSource, Manifest, ABI_VERSION, MANIFEST, PRODUCT, SCHEMA_VERSION,
    SIGNATURE, VM_INITRAMFS_FILE, VM_KERNEL_FILE,
};
use crate::signing::sign;

pub struct ReleaseRequest {
    pub version: String,
    pub out: PathBuf,
    pub key: SigningKey,
    pub platform: String,
    pub library: PathBuf,
    pub helpers: Vec<PathBuf>,
    /// Every *.tar.zst in it becomes an image artifact; absent is fine.
    pub images_dir: Option<PathBuf>,
    /// A directory holding `vmlinuz` and `initramfs.img` (make vm-assets'
    /// build/vm): released as the vm-kernel and vm-initramfs artifacts.
    pub vm_assets: Option<PathBuf>,
    /// Directories that receive a copy of <version>/manifest.json(+.sig): the pins.
    pub pin_dirs: Vec<PathBuf>,
    /// Recorded in the manifest when known (see `BuildSource`).
    pub source: Option<BuildSource>,
}

pub struct Released {
    pub dir: PathBuf,
    pub manifest: Manifest,
}

pub fn release(req: &ReleaseRequest) -> Result<Released> {
    crate::manifest::validate_version(&req.version)?;
    let mut inputs: Vec<(PathBuf, ArtifactKind, String)> = Vec::new();
    inputs.push((
        req.library.clone(),
        ArtifactKind::Library,
        "liblockbox.so".into(),
    ));
    for h in &req.helpers {
        inputs.push((h.clone(), ArtifactKind::Helper, file_name(h)?));
    }
    if let Some(dir) = req.images_dir.as_ref().filter(|d| d.is_dir()) {
        let mut images: Vec<PathBuf> = fs::read_dir(dir)
            .map_err(|e| Error::io_at("list", dir, e))?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.is_file() && p.to_string_lossy().ends_with(".tar.zst"))
            .collect();
        images.sort();
        for p in images {
            let name = file_name(&p)?;
            inputs.push((p, ArtifactKind::Image, name));
        }
    }
    if let Some(dir) = &req.vm_assets {
        for (file, kind) in [
            (VM_KERNEL_FILE, ArtifactKind::VmKernel),
            (VM_INITRAMFS_FILE, ArtifactKind::VmInitramfs),
        ] {
            inputs.push((dir.join(file), kind, file.into()));
        }
    }
    for (p, _, _) in &inputs {
        if !p.is_file() {
            return Err(Error::Usage(format!(
                "release input {} is missing (run make build first)",
                p.display()
            )));
        }
    }

    fs::create_dir_all(&req.out).map_err(|e| Error::io_at("create", &req.out, e))?;
    let staging = req
        .out
        .join(format!(".{}.tmp-{}", req.version, std::process::id()));
    remove_tree(&staging)?;
    let mut artifacts = Vec::new();
    for (src, kind, name) in &inputs {
        let path = format!("{}/{name}", kind.dir());
        let dest = staging.join(&path);
        fs::create_dir_all(dest.parent().unwrap())
            .map_err(|e| Error::io_at("create", dest.parent().unwrap(), e))?;
        let (size, sha256) = copy_hashing(src, &dest, kind.mode())?;
        artifacts.push(Artifact {
            name: name.clone(),
            path,
            kind: *kind,
            size,
            sha256,
        });
    }
    let manifest = Manifest {
        schema_version: SCHEMA_VERSION,
        product: PRODUCT.into(),
        version: req.version.clone(),
        abi_version: ABI_VERSION,
        source: req.source.clone(),
        platforms: [(req.platform.clone(), artifacts)].into(),
    };
    manifest.validate()?;
    let bytes = manifest.to_bytes();
    let sig = sign(&req.key, &bytes);
    write_atomic(&staging.join(MANIFEST), &bytes, 0o644)?;
    write_atomic(&staging.join(SIGNATURE), sig.as_bytes(), 0o644)?;
    let dir = req.out.join(&req.version);
    remove_tree(&dir)?;
    fs::rename(&staging, &dir).map_err(|e| Error::io_at("rename into", &dir, e))?;
    sync_dir(&req.out)?;
    for pin in &req.pin_dirs {
        let d = pin.join(&req.version);
        fs::create_dir_all(&d).map_err(|e| Error::io_at("create", &d, e))?;
        write_atomic(&d.join(MANIFEST), &bytes, 0o644)?;
        write_atomic(&d.join(SIGNATURE), sig.as_bytes(), 0o644)?;
    }
    Ok(Released { dir, manifest })
}

fn file_name(p: &Path) -> Result<String> {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| Error::Usage(format!("{} has no file name", p.display())))
}

fn copy_hashing(src: &Path, dest: &Path, mode: u32) -> Result<(u64, String)> {
    let mut input = File::open(src).map_err(|e| Error::io_at("open", src, e))?;
    let mut out = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(dest)
        .map_err(|e| Error::io_at("create", dest, e))?;
    let mut h = Sha256::new();
    let mut size = 0u64;
    let mut buf = vec![0u8; 1 << 18];
    loop {
        let n = input
            .read(&mut buf)
            .map_err(|e| Error::io_at("read", src, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        out.write_all(&buf[..n])
            .map_err(|e| Error::io_at("write", dest, e))?;
        size += n as u64;
    }
    out.set_permissions(fs::Permissions::from_mode(mode))
        .and_then(|_| out.sync_all())
        .map_err(|e| Error::io_at("finish", dest, e))?;
    Ok((size, hex::encode(h.finalize())))
}
