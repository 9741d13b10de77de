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
//!
//! A stored file's apparent size is what goes into the tar (holes become
//! zeros), so the sum of the layers' file sizes is capped at the store's
//! `max_unpacked_bytes`, checked before a byte is written; on any error
//! the new directory (temp layers included) is removed.

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

fn charge(budget: &mut u64, size: u64, p: &Path) -> Result<()> {
    if size > *budget {
        return Err(ImageError::TooLarge(format!(
            "export: {} is {size} bytes (holes included), past what is left of the export's cap ({})",
            p.display(),
            *budget
        )));
    }
    *budget -= size;
    Ok(())
}

/// Writes `root` as one OCI layer tar into `blobs`, its file sizes charged
/// to `budget`.
fn layer(root: &Path, blobs: &Path, budget: &mut u64) -> Result<Blob> {
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
                charge(budget, m.len(), &p)?;
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
        let r = self.fill_layout(&info, &roots, dir, ref_name);
        if r.is_err() {
            // The directory is ours (created just above): nothing half
            // written, no temp layer, is left behind.
            let _ = std::fs::remove_dir_all(dir);
        }
        r
    }

    fn fill_layout(
        &self,
        info: &crate::store::ImageInfo,
        roots: &[PathBuf],
        dir: &Path,
        ref_name: Option<&str>,
    ) -> Result<Digest> {
        let blobs = dir.join("blobs").join("sha256");
        std::fs::create_dir_all(&blobs).ctx("mkdir", &blobs)?;
        let mut budget = self.options().max_unpacked_bytes;
        let layers = roots
            .iter()
            .map(|r| layer(r, &blobs, &mut budget))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::options::StoreOptions;
    use crate::upper_copy::IdShift;
    use crate::Cancel;
    use std::os::fd::{FromRawFd, OwnedFd};

    fn blob(dir: &Path, data: &[u8]) -> String {
        let d = Digest::of_bytes(data);
        std::fs::write(dir.join("blobs/sha256").join(d.hex()), data).unwrap();
        d.to_string()
    }

    /// A one-layer image whose only layer is empty.
    fn empty_layout(dir: &Path) {
        std::fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
        std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
        let tar = vec![0u8; 1024];
        let l = blob(dir, &tar);
        let config = format!(
            r#"{{"architecture":"{}","os":"linux","config":{{}},"rootfs":{{"type":"layers","diff_ids":["{l}"]}}}}"#,
            crate::oci::host_arch()
        );
        let c = blob(dir, config.as_bytes());
        let manifest = format!(
            r#"{{"schemaVersion":2,"mediaType":"{MT_MANIFEST}","config":{{"mediaType":"{MT_CONFIG}","digest":"{c}","size":{}}},"layers":[{{"mediaType":"{MT_LAYER}","digest":"{l}","size":1024}}]}}"#,
            config.len()
        );
        let m = blob(dir, manifest.as_bytes());
        let index = format!(
            r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"{MT_MANIFEST}","digest":"{m}","size":{}}}]}}"#,
            manifest.len()
        );
        std::fs::write(dir.join("index.json"), index).unwrap();
    }

    fn store(home: &Path, max: u64) -> ImageStore {
        ImageStore::open_with(
            home,
            StoreOptions {
                max_unpacked_bytes: max,
                ..Default::default()
            },
        )
        .unwrap()
    }

    // Five bytes written into a 3 MiB sparse file would be exported as 3 MiB
    // of tar. Past the store's cap the export fails before writing it and
    // leaves no directory (nor `.layer-*` temp) behind. Control: under a
    // cap that allows it the same image exports, its layer holding the
    // full apparent size.
    #[test]
    fn export_is_capped_by_apparent_size_and_cleans_up() {
        let t = tempfile::tempdir().unwrap();
        let home = t.path().join("home");
        empty_layout(&t.path().join("layout"));
        let big = store(&home, 8 << 20);
        let base = big
            .import_oci_layout(
                &t.path().join("layout"),
                None,
                Some("base:1"),
                &Cancel::never(),
            )
            .unwrap();
        let up = t.path().join("upper");
        std::fs::create_dir(&up).unwrap();
        let f = File::create(up.join("sparse")).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&f, b"hello", 0).unwrap();
        f.set_len(3 << 20).unwrap();
        let c = std::ffi::CString::new(up.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: valid path; the fd is handed to an OwnedFd at once.
        let fd = unsafe { libc::open(c.as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY) };
        assert!(fd >= 0);
        // SAFETY: just opened, owned nowhere else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let snap = big
            .install_layer(
                &base.digest,
                fd,
                IdShift::Keep,
                None,
                Some("snap:1"),
                "test".into(),
                &Cancel::never(),
            )
            .unwrap();

        let small = store(&home, 1 << 20);
        let out = t.path().join("out");
        let e = small
            .export_oci_layout(&snap.digest.to_string(), &out, None)
            .unwrap_err();
        assert!(matches!(e, ImageError::TooLarge(_)), "{e}");
        assert!(!out.exists(), "a failed export left its directory behind");

        let out2 = t.path().join("out2");
        big.export_oci_layout(&snap.digest.to_string(), &out2, None)
            .unwrap();
        let largest = std::fs::read_dir(out2.join("blobs/sha256"))
            .unwrap()
            .map(|e| e.unwrap().metadata().unwrap().len())
            .max()
            .unwrap();
        assert!(largest >= 3 << 20, "control: the layer holds the zeros");
    }
}
