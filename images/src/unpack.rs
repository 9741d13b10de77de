//! Applying tar layers to a root directory safely.
//!
//! Rules (see README.md, "Safe extraction"):
//! - names are relative, without `..`, and never reached through a symlink;
//! - hard links must name an existing non-directory inside the root;
//! - an existing entry is unlinked before it is replaced, so a write never
//!   goes through a link and never alters another hard link's content;
//! - block/char devices are skipped (the sandbox gets its own /dev);
//! - setuid/setgid bits on files and file capabilities (xattrs) are dropped:
//!   no_new_privs makes them useless in the sandbox, and on the host they
//!   would be setuid binaries from untrusted images sitting in a user's dir;
//! - all file bytes and entries count against the store's budget;
//! - directory modes and times are applied at the end, so a read-only
//!   directory in a layer does not stop later entries.

use std::collections::HashSet;
use std::ffi::CString;
use std::fs::{OpenOptions, Permissions};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use tar::EntryType;

use crate::cancel::Cancel;
use crate::error::{ImageError, IoContext, Result};
use crate::meter::{Meter, MeteredReader, METADATA_LIMIT};
use crate::options::StoreOptions;
use crate::safe_path::{clean_relative, prepare_parents, remove_any};

/// Counts from one unpack, kept in the image's metadata.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnpackStats {
    pub entries: u64,
    pub bytes: u64,
    pub layers: u32,
    pub skipped_devices: u64,
    pub dropped_setid_bits: u64,
    pub clamped_ids: u64,
    pub whiteouts: u64,
}

struct DirFixup {
    path: PathBuf,
    mode: u32,
    owner: Option<(u32, u32)>,
    mtime: u64,
}

pub(crate) struct Unpacker<'a> {
    root: PathBuf,
    opts: &'a StoreOptions,
    cancel: &'a Cancel,
    pub(crate) stats: UnpackStats,
    dirs: Vec<DirFixup>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum LayerKind {
    /// A whole root filesystem: `.wh.` names are ordinary files.
    Rootfs,
    /// An OCI/Docker layer applied over the previous ones.
    OciLayer,
}

impl<'a> Unpacker<'a> {
    pub(crate) fn new(root: &Path, opts: &'a StoreOptions, cancel: &'a Cancel) -> Self {
        Unpacker {
            root: root.to_path_buf(),
            opts,
            cancel,
            stats: UnpackStats::default(),
            dirs: Vec::new(),
        }
    }

    /// The caller's cancellation flag (readers of a layer check it too).
    pub(crate) fn cancel(&self) -> &'a Cancel {
        self.cancel
    }

    /// The directory being filled (for layers copied without a tar).
    pub(crate) fn root(&self) -> &Path {
        &self.root
    }

    /// Applies one uncompressed tar stream.
    pub(crate) fn apply<R: Read>(&mut self, reader: R, kind: LayerKind) -> Result<()> {
        let meter = Rc::new(Meter::default());
        let mut archive = tar::Archive::new(MeteredReader {
            inner: reader,
            meter: meter.clone(),
        });
        let mut this_layer: HashSet<PathBuf> = HashSet::new();
        let read_err = |e: io::Error| {
            if meter.tripped() {
                ImageError::TooLarge(e.to_string())
            } else {
                ImageError::invalid_image(format!("reading tar: {e}"))
            }
        };
        let mut entries = archive.entries().map_err(read_err)?;
        loop {
            self.cancel.check()?;
            meter.arm(METADATA_LIMIT);
            let next = entries.next();
            meter.disarm();
            let Some(entry) = next else { break };
            let mut entry = entry.map_err(read_err)?;
            self.stats.entries += 1;
            if self.stats.entries > self.opts.max_entries {
                return Err(ImageError::TooLarge(format!(
                    "more than {} entries",
                    self.opts.max_entries
                )));
            }
            let name = entry
                .path()
                .map_err(|e| ImageError::invalid_image(format!("bad entry name: {e}")))?
                .into_owned();
            let rel = clean_relative(&name)?;
            if kind == LayerKind::OciLayer && self.whiteout(&rel, &this_layer)? {
                continue;
            }
            this_layer.insert(rel.clone());
            self.entry(&mut entry, &rel)?;
        }
        self.stats.layers += 1;
        Ok(())
    }

    /// Handles `.wh.<name>` and `.wh..wh..opq`; true if `rel` was one.
    fn whiteout(&mut self, rel: &Path, this_layer: &HashSet<PathBuf>) -> Result<bool> {
        let Some(file_name) = rel.file_name().and_then(|n| n.to_str()) else {
            return Ok(false);
        };
        let Some(hidden) = file_name.strip_prefix(".wh.") else {
            return Ok(false);
        };
        self.stats.whiteouts += 1;
        let dir_rel = rel.parent().unwrap_or(Path::new("")).to_path_buf();
        if hidden == ".wh..opq" {
            // Opaque: drop what lower layers put in the directory, keep what
            // this layer already wrote there.
            let created = prepare_parents(&self.root, &dir_rel.join("x"), true)?;
            self.record_implicit_dirs(created, 0);
            let dir = self.root.join(&dir_rel);
            let list = match std::fs::read_dir(&dir) {
                Ok(l) => l,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(true),
                Err(e) => return Err(ImageError::io("readdir", &dir, e)),
            };
            for child in list {
                let child = child.ctx("readdir", &dir)?;
                let child_rel = dir_rel.join(child.file_name());
                if !this_layer.contains(&child_rel) {
                    remove_any(&child.path())?;
                }
            }
        } else {
            if hidden.is_empty() || hidden == "." || hidden == ".." {
                return Err(ImageError::invalid_image(format!("bad whiteout {rel:?}")));
            }
            let target = dir_rel.join(hidden);
            prepare_parents(&self.root, &target, false).or_else(|e| match e {
                // Whiting out under a missing directory is a no-op.
                ImageError::Io { ref source, .. } if source.kind() == io::ErrorKind::NotFound => {
                    Ok(Vec::new())
                }
                e => Err(e),
            })?;
            remove_any(&self.root.join(target))?;
        }
        Ok(true)
    }

    fn owner(&mut self, header: &tar::Header) -> Option<(u32, u32)> {
        let uid = header.uid().unwrap_or(0);
        let gid = header.gid().unwrap_or(0);
        let (u, cu) = self.opts.ownership.map(uid)?;
        let (g, cg) = self.opts.ownership.map(gid)?;
        if cu || cg {
            self.stats.clamped_ids += 1;
        }
        Some((u, g))
    }

    fn entry<R: Read>(&mut self, entry: &mut tar::Entry<R>, rel: &Path) -> Result<()> {
        let header = entry.header().clone();
        let kind = header.entry_type();
        let mode = header.mode().unwrap_or(0o644);
        let mtime = header.mtime().unwrap_or(0);
        let owner = self.owner(&header);
        let path = self.root.join(rel);

        if rel.as_os_str().is_empty() {
            if kind.is_dir() {
                self.dirs.push(DirFixup {
                    path,
                    mode,
                    owner,
                    mtime,
                });
            }
            return Ok(());
        }
        let created = prepare_parents(&self.root, rel, true)?;
        self.record_implicit_dirs(created, mtime);

        match kind {
            EntryType::Directory => {
                match std::fs::symlink_metadata(&path) {
                    Ok(m) if m.is_dir() => {}
                    Ok(_) => {
                        remove_any(&path)?;
                        std::fs::create_dir(&path).ctx("mkdir", &path)?;
                    }
                    Err(_) => std::fs::create_dir(&path).ctx("mkdir", &path)?,
                }
                // Writable for us until the fixups run at the end.
                std::fs::set_permissions(&path, Permissions::from_mode(0o700))
                    .ctx("chmod", &path)?;
                self.dirs.push(DirFixup {
                    path,
                    mode,
                    owner,
                    mtime,
                });
            }
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                let size = header.size().unwrap_or(0);
                self.charge(size, rel)?;
                remove_any(&path)?;
                let mut file = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(&path)
                    .ctx("create", &path)?;
                let written = copy_limited(entry, &mut file, size).ctx("write", &path)?;
                if written != size {
                    return Err(ImageError::invalid_image(format!(
                        "entry {rel:?} is truncated ({written} of {size} bytes)"
                    )));
                }
                if let Some((u, g)) = owner {
                    std::os::unix::fs::fchown(&file, Some(u), Some(g)).ctx("chown", &path)?;
                }
                let kept = mode & 0o1777;
                if kept != mode & 0o7777 {
                    self.stats.dropped_setid_bits += 1;
                }
                file.set_permissions(Permissions::from_mode(kept))
                    .ctx("chmod", &path)?;
                file.set_modified(SystemTime::UNIX_EPOCH + Duration::from_secs(mtime))
                    .ctx("utime", &path)?;
            }
            EntryType::Symlink => {
                let target = entry
                    .link_name()
                    .map_err(|e| ImageError::invalid_image(format!("bad link in {rel:?}: {e}")))?
                    .ok_or_else(|| {
                        ImageError::invalid_image(format!("symlink {rel:?} has no target"))
                    })?
                    .into_owned();
                remove_any(&path)?;
                std::os::unix::fs::symlink(&target, &path).ctx("symlink", &path)?;
                if let Some((u, g)) = owner {
                    std::os::unix::fs::lchown(&path, Some(u), Some(g)).ctx("chown", &path)?;
                }
                set_link_mtime(&path, mtime)?;
            }
            EntryType::Link => {
                let target = entry
                    .link_name()
                    .map_err(|e| ImageError::invalid_image(format!("bad link in {rel:?}: {e}")))?
                    .ok_or_else(|| {
                        ImageError::invalid_image(format!("hard link {rel:?} has no target"))
                    })?
                    .into_owned();
                let target_rel = clean_relative(&target).map_err(|_| {
                    ImageError::invalid_image(format!(
                        "hard link {rel:?} points outside the root ({target:?})"
                    ))
                })?;
                let not_there = || {
                    ImageError::invalid_image(format!(
                        "hard link {rel:?} names {target:?}, which is not a file in the image"
                    ))
                };
                prepare_parents(&self.root, &target_rel, false).map_err(|e| match e {
                    ImageError::Io { .. } => not_there(),
                    e => e,
                })?;
                let target_path = self.root.join(&target_rel);
                match std::fs::symlink_metadata(&target_path) {
                    Ok(m) if !m.is_dir() => {}
                    _ => return Err(not_there()),
                }
                if target_path != path {
                    remove_any(&path)?;
                    // linkat without AT_SYMLINK_FOLLOW: links the entry itself.
                    std::fs::hard_link(&target_path, &path).ctx("link", &path)?;
                }
            }
            EntryType::Fifo => {
                remove_any(&path)?;
                let c = CString::new(path.as_os_str().as_bytes())
                    .map_err(|_| ImageError::invalid_image(format!("bad name {rel:?}")))?;
                // SAFETY: c is a valid NUL-terminated path.
                if unsafe { libc::mkfifo(c.as_ptr(), (mode & 0o777) as libc::mode_t) } != 0 {
                    return Err(ImageError::io("mkfifo", &path, io::Error::last_os_error()));
                }
                if let Some((u, g)) = owner {
                    std::os::unix::fs::lchown(&path, Some(u), Some(g)).ctx("chown", &path)?;
                }
            }
            EntryType::Char | EntryType::Block => self.stats.skipped_devices += 1,
            // Metadata-only records (pax globals, GNU long names that the
            // reader already folded in) carry nothing to write.
            _ => {}
        }
        Ok(())
    }

    /// Parents a layer did not list get 0755, owned by image root.
    fn record_implicit_dirs(&mut self, created: Vec<PathBuf>, mtime: u64) {
        for dir in created {
            self.dirs.push(DirFixup {
                path: dir,
                mode: 0o755,
                owner: self.opts.ownership.map(0).map(|(id, _)| (id, id)),
                mtime,
            });
        }
    }

    fn charge(&mut self, size: u64, rel: &Path) -> Result<()> {
        self.stats.bytes = self.stats.bytes.saturating_add(size);
        if self.stats.bytes > self.opts.max_unpacked_bytes {
            return Err(ImageError::TooLarge(format!(
                "entry {rel:?} ({size} bytes) takes the image past {} bytes",
                self.opts.max_unpacked_bytes
            )));
        }
        Ok(())
    }

    /// Applies directory modes, owners and times, deepest first (a
    /// parent's mtime is set after its children are done).
    pub(crate) fn finish(self) -> Result<UnpackStats> {
        // Later records for the same directory win.
        let mut seen: HashSet<&Path> = HashSet::new();
        let mut ordered: Vec<&DirFixup> = self
            .dirs
            .iter()
            .rev()
            .filter(|d| seen.insert(&d.path))
            .collect();
        ordered.sort_by_key(|d| std::cmp::Reverse(d.path.components().count()));
        for d in ordered {
            if let Some((u, g)) = d.owner {
                std::os::unix::fs::lchown(&d.path, Some(u), Some(g)).ctx("chown", &d.path)?;
            }
            // Dirs keep sticky and setgid (inheritance), never setuid.
            std::fs::set_permissions(&d.path, Permissions::from_mode(d.mode & 0o3777))
                .ctx("chmod", &d.path)?;
            set_link_mtime(&d.path, d.mtime)?;
        }
        Ok(self.stats)
    }
}

/// Copies exactly up to `limit` bytes, so a header that lies about its
/// size cannot write more than was charged.
fn copy_limited<R: Read, W: Write>(r: &mut R, w: &mut W, limit: u64) -> io::Result<u64> {
    io::copy(&mut r.take(limit), w)
}

fn set_link_mtime(path: &Path, mtime: u64) -> Result<()> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| ImageError::invalid_image(format!("bad name {path:?}")))?;
    let t = libc::timespec {
        tv_sec: mtime.min(i64::MAX as u64) as libc::time_t,
        tv_nsec: 0,
    };
    let times = [t, t];
    // SAFETY: valid path and a two-element timespec array.
    let rc = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if rc != 0 {
        return Err(ImageError::io("utime", path, io::Error::last_os_error()));
    }
    Ok(())
}
