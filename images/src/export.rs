//! Exporting a stored image as an OCI image layout directory: one
//! uncompressed layer per root directory of the image, bottom first (a
//! layered image: its parents' roots, then its own), a config with the
//! image's env/workdir/user/entrypoint/cmd, a manifest and an index that
//! names it. Overlay whiteouts (char 0:0) become `.wh.<name>` and overlay
//! opaque directories `.wh..wh..opq`, as the OCI layer format has them, so
//! `import_oci_layout` (or any OCI tool) gives back the same tree.
//!
//! The store's content is read by an explicit walk that never follows a
//! link (`symlink_metadata`, links stored as links); the destination must
//! not exist, and everything is written under it only.

use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

use crate::digest::Digest;
use crate::error::{ImageError, IoContext, Result};
use crate::fsutil::unique_suffix;
use crate::oci::REF_NAME;
use crate::store::ImageStore;

const MT_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const MT_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const MT_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";

/// Hashes and counts what goes through it.
struct Hashing<W: Write> {
    inner: W,
    hash: Sha256,
    len: u64,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

struct Blob {
    digest: Digest,
    size: u64,
}

fn write_blob(blobs: &Path, data: &[u8]) -> Result<Blob> {
    let digest = Digest::of_bytes(data);
    let p = blobs.join(digest.hex());
    std::fs::write(&p, data).ctx("write", &p)?;
    Ok(Blob {
        digest,
        size: data.len() as u64,
    })
}

fn header(meta: &std::fs::Metadata, kind: tar::EntryType, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_size(size);
    h.set_mode(meta.mode() & 0o7777);
    // As root the store keeps image ids; rootless everything is the
    // caller's, which in an image means root.
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    h.set_uid(if root { meta.uid().into() } else { 0 });
    h.set_gid(if root { meta.gid().into() } else { 0 });
    h.set_mtime(meta.mtime().max(0) as u64);
    h
}

fn empty(path: &Path) -> (tar::Header, PathBuf) {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_size(0);
    h.set_mode(0o644);
    (h, path.to_path_buf())
}

fn is_opaque(p: &Path) -> bool {
    let c = std::ffi::CString::new(std::os::unix::ffi::OsStrExt::as_bytes(p.as_os_str()));
    let Ok(c) = c else { return false };
    let mut v = [0u8; 4];
    // SAFETY: valid C strings and buffer; lgetxattr never follows a link.
    let n = unsafe {
        libc::lgetxattr(
            c.as_ptr(),
            c"user.overlay.opaque".as_ptr(),
            v.as_mut_ptr().cast(),
            v.len(),
        )
    };
    n == 1 && v[0] == b'y'
}

/// Writes `root` as one OCI layer tar into `blobs`.
fn layer(root: &Path, blobs: &Path) -> Result<Blob> {
    let tmp = blobs.join(format!(".layer-{}", unique_suffix()));
    let f = File::create(&tmp).ctx("create", &tmp)?;
    let mut b = tar::Builder::new(Hashing {
        inner: io::BufWriter::new(f),
        hash: Sha256::new(),
        len: 0,
    });
    b.follow_symlinks(false);
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let dir = root.join(&rel);
        if !rel.as_os_str().is_empty() && is_opaque(&dir) {
            let (mut h, p) = empty(&rel.join(".wh..wh..opq"));
            b.append_data(&mut h, p, io::empty()).ctx("tar", &dir)?;
        }
        let mut names: Vec<_> = std::fs::read_dir(&dir)
            .ctx("readdir", &dir)?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<io::Result<_>>()
            .ctx("readdir", &dir)?;
        names.sort();
        for name in names {
            let (p, r) = (root.join(&rel).join(&name), rel.join(&name));
            let m = std::fs::symlink_metadata(&p).ctx("lstat", &p)?;
            let t = m.file_type();
            if t.is_dir() {
                let mut h = header(&m, tar::EntryType::Directory, 0);
                b.append_data(&mut h, &r, io::empty()).ctx("tar", &p)?;
                stack.push(r);
            } else if t.is_file() {
                let mut h = header(&m, tar::EntryType::Regular, m.len());
                let f = File::open(&p).ctx("open", &p)?;
                b.append_data(&mut h, &r, f).ctx("tar", &p)?;
            } else if t.is_symlink() {
                let target = std::fs::read_link(&p).ctx("readlink", &p)?;
                let mut h = header(&m, tar::EntryType::Symlink, 0);
                b.append_link(&mut h, &r, &target).ctx("tar", &p)?;
            } else if t.is_fifo() {
                let mut h = header(&m, tar::EntryType::Fifo, 0);
                b.append_data(&mut h, &r, io::empty()).ctx("tar", &p)?;
            } else if t.is_char_device() && m.rdev() == 0 {
                let mut wh = std::ffi::OsString::from(".wh.");
                wh.push(&name);
                let (mut h, p2) = empty(&rel.join(wh));
                b.append_data(&mut h, p2, io::empty()).ctx("tar", &p)?;
            }
            // Other devices and sockets are not image content.
        }
    }
    let mut w = b.into_inner().ctx("tar", &tmp)?;
    w.flush().ctx("write", &tmp)?;
    let digest = Digest::from_hasher(w.hash);
    let dest = blobs.join(digest.hex());
    std::fs::rename(&tmp, &dest).ctx("rename", &dest)?;
    Ok(Blob {
        digest,
        size: w.len,
    })
}

impl ImageStore {
    /// Writes the stored image `name_or_digest` as an OCI image layout in
    /// the new directory `dir` (which must not exist), its manifest named
    /// `ref_name` in the index when given. Returns the manifest's digest.
    pub fn export_oci_layout(
        &self,
        name_or_digest: &str,
        dir: &Path,
        ref_name: Option<&str>,
    ) -> Result<Digest> {
        let info = self.inspect(name_or_digest)?;
        let mut roots = self.lowers(&info.digest)?;
        roots.reverse();
        std::fs::create_dir(dir).map_err(|e| {
            if e.kind() == io::ErrorKind::AlreadyExists {
                ImageError::InvalidArgument(format!(
                    "{}: already exists; export writes a new directory",
                    dir.display()
                ))
            } else {
                ImageError::io("mkdir", dir, e)
            }
        })?;
        let blobs = dir.join("blobs").join("sha256");
        std::fs::create_dir_all(&blobs).ctx("mkdir", &blobs)?;
        let layers = roots
            .iter()
            .map(|r| layer(r, &blobs))
            .collect::<Result<Vec<_>>>()?;
        let c = &info.config;
        let config = serde_json::json!({
            "architecture": crate::oci::host_arch(),
            "os": "linux",
            "config": {
                "Env": c.env,
                "WorkingDir": c.workdir.clone().unwrap_or_default(),
                "User": c.user.clone().unwrap_or_default(),
                "Entrypoint": c.entrypoint,
                "Cmd": c.cmd,
            },
            "rootfs": {
                "type": "layers",
                "diff_ids": layers.iter().map(|l| l.digest.to_string()).collect::<Vec<_>>(),
            },
        });
        let config = write_blob(&blobs, &serde_json::to_vec(&config).expect("json"))?;
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": MT_MANIFEST,
            "config": {"mediaType": MT_CONFIG, "digest": config.digest.to_string(), "size": config.size},
            "layers": layers.iter().map(|l| serde_json::json!({
                "mediaType": MT_LAYER, "digest": l.digest.to_string(), "size": l.size,
            })).collect::<Vec<_>>(),
        });
        let manifest = write_blob(&blobs, &serde_json::to_vec(&manifest).expect("json"))?;
        let mut desc = serde_json::json!({
            "mediaType": MT_MANIFEST,
            "digest": manifest.digest.to_string(),
            "size": manifest.size,
        });
        if let Some(r) = ref_name {
            desc["annotations"] = serde_json::json!({ REF_NAME: r });
        }
        let index = serde_json::json!({"schemaVersion": 2, "manifests": [desc]});
        let p = dir.join("index.json");
        std::fs::write(&p, serde_json::to_vec(&index).expect("json")).ctx("write", &p)?;
        let p = dir.join("oci-layout");
        std::fs::write(&p, br#"{"imageLayoutVersion":"1.0.0"}"#).ctx("write", &p)?;
        Ok(manifest.digest)
    }
}
