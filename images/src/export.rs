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

use std::collections::HashMap;
use std::ffi::{CStr, CString, OsStr};
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

use crate::digest::Digest;
use crate::error::{ImageError, IoContext, Result};
use crate::fsutil::unique_suffix;
use crate::oci::REF_NAME;
use crate::oci_layout::host_dir::HostDir;
use crate::store::ImageStore;

const MT_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const MT_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const MT_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
/// Bytes of layer paths remembered for hard-linked files; past it later
/// names are written in full (still charged), never unbounded memory.
const MAX_LINK_PATHS: usize = 64 << 20;

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

/// The new layout directory, written only through fds: its parent may be
/// a directory a sandbox can rename things in, so no path below the
/// parent's fd is ever resolved again. Remembers what it made, so a
/// failed export removes exactly that.
struct Out {
    parent: HostDir,
    leaf: CString,
    dir: OwnedFd,
    /// `blobs` and `blobs/sha256`, once made.
    blobs: Option<(OwnedFd, OwnedFd)>,
    made_blobs: Vec<CString>,
}

fn cname(name: &str) -> CString {
    CString::new(name).expect("a name of our own has no NUL")
}

fn last_err(what: &'static str, p: &Path) -> ImageError {
    ImageError::io(what, p, io::Error::last_os_error())
}

impl Out {
    fn create(dir: &Path) -> Result<Self> {
        let (Some(parent), Some(leaf)) = (dir.parent(), dir.file_name()) else {
            return Err(ImageError::InvalidArgument(format!(
                "{}: not a directory path",
                dir.display()
            )));
        };
        let parent = HostDir::open(parent)?;
        let leaf = CString::new(leaf.as_bytes())
            .map_err(|_| ImageError::InvalidArgument("NUL in a path".into()))?;
        // SAFETY: valid fd and C string.
        if unsafe { libc::mkdirat(parent.fd(), leaf.as_ptr(), 0o755) } != 0 {
            let e = io::Error::last_os_error();
            return Err(if e.kind() == io::ErrorKind::AlreadyExists {
                ImageError::InvalidArgument(format!(
                    "{}: already exists; export writes a new directory",
                    dir.display()
                ))
            } else {
                ImageError::io("mkdir", dir, e)
            });
        }
        // A link swapped in since mkdirat is refused; another directory
        // swapped in is one the swapper could write anyway.
        let fd = open_dir(parent.fd(), &leaf).map_err(|e| ImageError::io("open", dir, e))?;
        Ok(Out {
            parent,
            leaf,
            dir: fd,
            blobs: None,
            made_blobs: Vec::new(),
        })
    }

    fn path(&self) -> PathBuf {
        self.parent
            .path()
            .join(OsStr::from_bytes(self.leaf.as_bytes()))
    }

    fn blobs_dir(&mut self) -> Result<RawFd> {
        if self.blobs.is_none() {
            let mk = |at: RawFd, name: &CStr| {
                // SAFETY: valid fd and C string.
                if unsafe { libc::mkdirat(at, name.as_ptr(), 0o755) } != 0 {
                    return Err(last_err("mkdir", &self.path()));
                }
                open_dir(at, name).map_err(|e| ImageError::io("open", self.path(), e))
            };
            let blobs = mk(self.dir.as_raw_fd(), c"blobs")?;
            let sha = mk(blobs.as_raw_fd(), c"sha256")?;
            self.blobs = Some((blobs, sha));
        }
        Ok(self.blobs.as_ref().expect("just made").1.as_raw_fd())
    }

    /// A new file `name` in `dir` (never an existing one, never a link).
    fn new_file(&self, dir: RawFd, name: &CStr) -> Result<File> {
        // SAFETY: valid fd and C string; the fd returned is ours.
        let fd = unsafe {
            libc::openat(
                dir,
                name.as_ptr(),
                libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC,
                0o644 as libc::c_uint,
            )
        };
        if fd < 0 {
            return Err(last_err(
                "create",
                &self.path().join(OsStr::from_bytes(name.to_bytes())),
            ));
        }
        // SAFETY: just opened, owned here only.
        Ok(File::from(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// Stores a blob under its digest (a blob already there holds the
    /// same bytes).
    fn blob(&mut self, data: &[u8]) -> Result<Blob> {
        let digest = Digest::of_bytes(data);
        let name = cname(digest.hex());
        let blobs = self.blobs_dir()?;
        if !self.made_blobs.contains(&name) {
            let mut f = self.new_file(blobs, &name)?;
            self.made_blobs.push(name);
            f.write_all(data).ctx("write", &self.path())?;
        }
        Ok(Blob {
            digest,
            size: data.len() as u64,
        })
    }

    fn top_file(&self, name: &CStr, data: &[u8]) -> Result<()> {
        self.new_file(self.dir.as_raw_fd(), name)?
            .write_all(data)
            .ctx("write", &self.path())
    }

    /// Removes what this export made (names it made, by fd), then the
    /// directory itself if it is still the entry it made.
    fn remove(self) {
        let d = self.dir.as_raw_fd();
        // SAFETY: valid fds and C strings; unlinkat never follows a link.
        unsafe {
            if let Some((blobs, sha)) = &self.blobs {
                for n in &self.made_blobs {
                    libc::unlinkat(sha.as_raw_fd(), n.as_ptr(), 0);
                }
                libc::unlinkat(blobs.as_raw_fd(), c"sha256".as_ptr(), libc::AT_REMOVEDIR);
                libc::unlinkat(d, c"blobs".as_ptr(), libc::AT_REMOVEDIR);
            }
            libc::unlinkat(d, c"index.json".as_ptr(), 0);
            libc::unlinkat(d, c"oci-layout".as_ptr(), 0);
            libc::unlinkat(self.parent.fd(), self.leaf.as_ptr(), libc::AT_REMOVEDIR);
        }
    }
}

fn open_dir(at: RawFd, name: &CStr) -> io::Result<OwnedFd> {
    // SAFETY: valid fd and C string; the fd returned is ours.
    let fd = unsafe {
        libc::openat(
            at,
            name.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: just opened, owned here only.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
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

/// Writes `root` as one OCI layer tar into the layout's blobs, its file
/// sizes charged to `budget`.
fn layer(root: &Path, out: &mut Out, budget: &mut u64) -> Result<Blob> {
    let blobs = out.blobs_dir()?;
    let tmp_name = cname(&format!(".layer-{}", unique_suffix()));
    let tmp = out.path().join(OsStr::from_bytes(tmp_name.as_bytes()));
    let f = out.new_file(blobs, &tmp_name)?;
    out.made_blobs.push(tmp_name.clone());
    let mut b = tar::Builder::new(Hashing {
        inner: io::BufWriter::new(f),
        hash: Sha256::new(),
        len: 0,
    });
    b.follow_symlinks(false);
    // A file with several names is written once; its later names are tar
    // hard links to the first (a snapshot stores them once, so a copy per
    // name would turn a small sandbox's layer into the whole export cap).
    let mut firsts: HashMap<(u64, u64), PathBuf> = HashMap::new();
    let mut first_bytes = 0usize;
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
            } else if t.is_file() && m.nlink() > 1 && firsts.contains_key(&(m.dev(), m.ino())) {
                let mut h = header(&m, tar::EntryType::Link, 0);
                let target = &firsts[&(m.dev(), m.ino())];
                b.append_link(&mut h, &r, target).ctx("tar", &p)?;
            } else if t.is_file() {
                charge(budget, m.len(), &p)?;
                if m.nlink() > 1 && first_bytes + r.as_os_str().len() <= MAX_LINK_PATHS {
                    first_bytes += r.as_os_str().len();
                    firsts.insert((m.dev(), m.ino()), r.clone());
                }
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
    let dest = cname(digest.hex());
    // SAFETY: valid fd and C strings; both names are in our own directory.
    if unsafe { libc::renameat(blobs, tmp_name.as_ptr(), blobs, dest.as_ptr()) } != 0 {
        return Err(last_err("rename", &tmp));
    }
    out.made_blobs.retain(|n| n != &tmp_name);
    if !out.made_blobs.contains(&dest) {
        out.made_blobs.push(dest);
    }
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
        let mut out = Out::create(dir)?;
        let r = self.fill_layout(&info, &roots, &mut out, ref_name);
        if r.is_err() {
            // Nothing half written, no temp layer, is left behind.
            out.remove();
        }
        r
    }

    fn fill_layout(
        &self,
        info: &crate::store::ImageInfo,
        roots: &[PathBuf],
        out: &mut Out,
        ref_name: Option<&str>,
    ) -> Result<Digest> {
        let mut budget = self.options().max_unpacked_bytes;
        let layers = roots
            .iter()
            .map(|r| layer(r, out, &mut budget))
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
        let config = out.blob(&serde_json::to_vec(&config).expect("json"))?;
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": MT_MANIFEST,
            "config": {"mediaType": MT_CONFIG, "digest": config.digest.to_string(), "size": config.size},
            "layers": layers.iter().map(|l| serde_json::json!({
                "mediaType": MT_LAYER, "digest": l.digest.to_string(), "size": l.size,
            })).collect::<Vec<_>>(),
        });
        let manifest = out.blob(&serde_json::to_vec(&manifest).expect("json"))?;
        let mut desc = serde_json::json!({
            "mediaType": MT_MANIFEST,
            "digest": manifest.digest.to_string(),
            "size": manifest.size,
        });
        if let Some(r) = ref_name {
            desc["annotations"] = serde_json::json!({ REF_NAME: r });
        }
        let index = serde_json::json!({"schemaVersion": 2, "manifests": [desc]});
        out.top_file(c"index.json", &serde_json::to_vec(&index).expect("json"))?;
        out.top_file(c"oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)?;
        Ok(manifest.digest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_fixtures::{dir_fd, empty_layout, store};
    use crate::upper_copy::IdShift;
    use crate::Cancel;

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
        let fd = dir_fd(&up);
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

    // The parent of the new directory may be one a sandbox renames things
    // in: a link there (to a host directory) is refused, not written
    // through. Control: the same export to the real directory lands.
    #[test]
    fn export_never_writes_through_a_link_in_its_path() {
        let t = tempfile::tempdir().unwrap();
        let home = t.path().join("home");
        empty_layout(&t.path().join("layout"));
        let s = store(&home, 8 << 20);
        let img = s
            .import_oci_layout(
                &t.path().join("layout"),
                None,
                Some("e:1"),
                &Cancel::never(),
            )
            .unwrap();
        let victim = t.path().join("victim");
        std::fs::create_dir(&victim).unwrap();
        std::os::unix::fs::symlink(&victim, t.path().join("link")).unwrap();
        let d = img.digest.to_string();
        assert!(s
            .export_oci_layout(&d, &t.path().join("link/out"), None)
            .is_err());
        assert_eq!(
            std::fs::read_dir(&victim).unwrap().count(),
            0,
            "written through the link"
        );
        s.export_oci_layout(&d, &victim.join("out"), None).unwrap();
        assert!(victim.join("out/index.json").is_file());
        assert!(victim.join("out/oci-layout").is_file());
    }

    // One 600 KiB file under eleven names exports under a 1 MiB cap (its
    // later names are tar hard links) and imports back with the names
    // sharing one inode. Control: eleven distinct 600 KiB files do not fit.
    #[test]
    fn hard_links_are_exported_once() {
        let t = tempfile::tempdir().unwrap();
        let home = t.path().join("home");
        empty_layout(&t.path().join("layout"));
        let big = store(&home, 64 << 20);
        let base = big
            .import_oci_layout(
                &t.path().join("layout"),
                None,
                Some("b:1"),
                &Cancel::never(),
            )
            .unwrap();
        let snap = |dir: &Path, name: &str| {
            let fd = dir_fd(dir);
            big.install_layer(
                &base.digest,
                fd,
                IdShift::Keep,
                None,
                Some(name),
                "test".into(),
                &Cancel::never(),
            )
            .unwrap()
        };
        let up = t.path().join("upper");
        std::fs::create_dir(&up).unwrap();
        std::fs::write(up.join("big"), vec![7u8; 600 << 10]).unwrap();
        for i in 0..10 {
            std::fs::hard_link(up.join("big"), up.join(format!("l{i}"))).unwrap();
        }
        let linked = snap(&up, "linked:1");
        let small = store(&home, 1 << 20);
        let out = t.path().join("out");
        small
            .export_oci_layout(&linked.digest.to_string(), &out, None)
            .unwrap();
        let again = small
            .import_oci_layout(&out, None, Some("again:1"), &Cancel::never())
            .unwrap();
        let a = std::fs::metadata(again.rootfs.join("big")).unwrap();
        let b = std::fs::metadata(again.rootfs.join("l9")).unwrap();
        assert_eq!((a.ino(), a.len()), (b.ino(), 600 << 10));

        let up2 = t.path().join("upper2");
        std::fs::create_dir(&up2).unwrap();
        for i in 0..11 {
            std::fs::write(up2.join(format!("f{i}")), vec![i as u8; 600 << 10]).unwrap();
        }
        let distinct = snap(&up2, "distinct:1");
        let e = small
            .export_oci_layout(&distinct.digest.to_string(), &t.path().join("out2"), None)
            .unwrap_err();
        assert!(matches!(e, ImageError::TooLarge(_)), "{e}");
    }
}
