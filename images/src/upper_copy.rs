//! Copies a sandbox's overlay upper directory into a new image layer
//! (Snapshot / Fork), hashing it as it goes.
//!
//! The upper is written by the sandbox: every name, type, mode, size and
//! link in it is hostile, and without a freezer it may change while we
//! read. So, like the tar unpacker:
//! - every entry is reached relative to an open directory fd, never by a
//!   path, and opened with `O_NOFOLLOW` (a link is copied as a link);
//! - a regular file is opened `O_NONBLOCK` and checked again on the fd (the
//!   same inode, still regular) before a byte is read, and contributes at
//!   most the size it had when it was looked at;
//! - only directories, regular files, symlinks, FIFOs and overlay whiteouts
//!   (char 0:0) are copied; devices and sockets are skipped and counted;
//! - setuid/setgid bits are dropped; of the xattrs only the overlay opaque
//!   mark is kept (file capabilities are not);
//! - entries, bytes, depth and link lengths are bounded: past a bound the
//!   copy fails and the caller discards the half-made layer. A regular
//!   file is charged its apparent size (`st_size`), not the bytes it
//!   holds: holes stay holes here, but every later reader (export, a
//!   copy out) sees zeros, so a 16 TB sparse file must not pass;
//! - a file with more than one name is copied once: its later names are
//!   hard links inside the new layer, charged nothing more.
//!
//! The result is itself an overlay layer (whiteouts and opaque marks in
//! overlay's `userxattr` form) that the helper stacks above the image's
//! layers. Its digest covers names, types, modes, owners, mtimes, link
//! targets and content, in sorted order, so equal trees hash equal.

use std::collections::HashMap;
use std::ffi::{CStr, CString, OsStr};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use sha2::{Digest as _, Sha256};

use crate::digest::Digest;
use crate::error::{ImageError, Result};
use crate::kernel_copy::{self, Copied, Ways};
use crate::unpack::UnpackStats;

/// Overlay's opaque-directory mark with `userxattr` (how the helper mounts).
const OPAQUE: &CStr = c"user.overlay.opaque";
pub const MAX_DEPTH: usize = 256;
/// Bytes of layer-relative paths remembered for hard-linked files; past
/// it further names are full copies (still charged), never unbounded memory.
const MAX_LINK_PATHS: usize = 64 << 20;
/// Bytes of directory entry names a copy may hold at once (the listing
/// being read plus the subdirectories still to visit at every level): the
/// entry budget alone let 900k long names hold ~390 MiB of host memory
/// (attack review s4).
pub const MAX_HELD_NAME_BYTES: u64 = 64 << 20;

/// How upper ids become layer ids.
#[derive(Clone, Copy, Debug)]
pub enum IdShift {
    /// As root: host `base + n` is sandbox id `n`, stored as `n`; other ids
    /// become 65534.
    FromHost { base: u32, size: u32 },
    /// Rootless: files stay owned by the caller.
    Keep,
}

#[derive(Clone, Copy, Debug)]
pub struct CopyLimits {
    pub max_entries: u64,
    pub max_bytes: u64,
    /// [`MAX_HELD_NAME_BYTES`] outside tests.
    pub max_held_name_bytes: u64,
}

/// What the layer's digest covers, and so how file data may be copied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayerDigest {
    /// Every byte (a named snapshot: content-addressed). The data passes
    /// through one bounded buffer, read once for the copy and the hash.
    Content,
    /// Names, types, modes, owners, sizes and link targets, not the bytes
    /// (Fork's unnamed layer, whose image digest is made unique by the
    /// caller): the data is copied by the kernel (reflink, then
    /// `copy_file_range`, then `sendfile`) and never read here.
    Metadata,
}

fn err(what: &str, name: &OsStr, e: io::Error) -> ImageError {
    ImageError::io(
        "snapshot",
        Path::new(name),
        io::Error::new(e.kind(), format!("{what}: {e}")),
    )
}

fn check(r: libc::c_int, what: &str, name: &OsStr) -> Result<libc::c_int> {
    if r < 0 {
        Err(err(what, name, io::Error::last_os_error()))
    } else {
        Ok(r)
    }
}

fn openat(dir: RawFd, name: &CStr, flags: libc::c_int, mode: libc::mode_t) -> io::Result<OwnedFd> {
    // SAFETY: a valid dir fd and C string; the fd returned is ours.
    let fd = unsafe {
        libc::openat(
            dir,
            name.as_ptr(),
            flags | libc::O_CLOEXEC,
            mode as libc::c_uint,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: just opened, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn lstatat(dir: RawFd, name: &CStr) -> io::Result<libc::stat> {
    // SAFETY: zeroed stat is a valid out buffer.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: valid fd, C string and out pointer.
    let r = unsafe { libc::fstatat(dir, name.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st)
}

fn fstat(fd: RawFd) -> io::Result<libc::stat> {
    // SAFETY: as above.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: valid fd and out pointer.
    if unsafe { libc::fstat(fd, &mut st) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st)
}

/// What holding a name costs: its bytes and the `CString` beside them.
fn name_cost(n: &CStr) -> u64 {
    (n.to_bytes_with_nul().len() + std::mem::size_of::<CString>()) as u64
}

/// What holding a subdirectory to visit costs.
fn subdir_cost(n: &CStr) -> u64 {
    name_cost(n) + std::mem::size_of::<libc::stat>() as u64
}

fn names_past_budget() -> ImageError {
    ImageError::TooLarge(format!(
        "snapshot: directory listings past {MAX_HELD_NAME_BYTES} bytes of names held at once"
    ))
}

/// Every name in a directory (not `.`/`..`), sorted, counted against the
/// entry budget and charged to the held-names budget as they are read.
/// Returns the names and what they were charged.
fn names(dir: &OwnedFd, budget: &mut u64, held: &mut u64) -> Result<(Vec<CString>, u64)> {
    // fdopendir takes ownership: give it its own open of the directory.
    let dup = openat(dir.as_raw_fd(), c".", libc::O_RDONLY | libc::O_DIRECTORY, 0)
        .map_err(|e| err("reopen dir", OsStr::new("."), e))?;
    // SAFETY: `dup` is a directory fd we own; fdopendir takes it over.
    let d = unsafe { libc::fdopendir(std::os::fd::IntoRawFd::into_raw_fd(dup)) };
    if d.is_null() {
        return Err(err("opendir", OsStr::new("."), io::Error::last_os_error()));
    }
    let mut out = Vec::new();
    let mut charged = 0u64;
    let mut past_held = false;
    let r = loop {
        // SAFETY: errno reset to tell end-of-directory from an error.
        unsafe { *libc::__errno_location() = 0 };
        // SAFETY: `d` is a valid DIR*.
        let ent = unsafe { libc::readdir64(d) };
        if ent.is_null() {
            let e = io::Error::last_os_error();
            break if e.raw_os_error() == Some(0) {
                Ok(())
            } else {
                Err(e)
            };
        }
        // SAFETY: d_name is NUL-terminated within the entry.
        let n = unsafe { CStr::from_ptr((*ent).d_name.as_ptr()) };
        if n == c"." || n == c".." {
            continue;
        }
        if *budget == 0 {
            break Err(io::Error::other("too many entries"));
        }
        *budget -= 1;
        let cost = name_cost(n);
        if *held < cost {
            past_held = true;
            break Ok(());
        }
        *held -= cost;
        charged += cost;
        out.push(n.to_owned());
    };
    // SAFETY: closes the DIR* (and its fd) once.
    unsafe { libc::closedir(d) };
    if past_held {
        return Err(names_past_budget());
    }
    r.map_err(|e| {
        if e.kind() == io::ErrorKind::Other {
            ImageError::TooLarge(format!("snapshot: more than its entry budget ({e})"))
        } else {
            err("readdir", OsStr::new("."), e)
        }
    })?;
    out.sort();
    Ok((out, charged))
}

enum CopyError {
    Io(io::Error),
    Budget,
}

struct Copier {
    hash: Sha256,
    stats: UnpackStats,
    ids: IdShift,
    bytes_left: u64,
    entries_left: u64,
    /// What may still be held in names (see [`MAX_HELD_NAME_BYTES`]).
    names_left: u64,
    buf: Vec<u8>,
    /// The new layer's root: later names of a hard-linked file link here.
    dst_root: OwnedFd,
    /// Layer-relative path of the directory whose entries are being copied.
    cur: Vec<u8>,
    /// (dev, ino) of a multiply-linked source file -> its first copy's path.
    links: HashMap<(u64, u64), CString>,
    link_bytes: usize,
    digest: LayerDigest,
    ways: Ways,
}

impl Copier {
    fn ids(&mut self, st: &libc::stat) -> Option<(u32, u32)> {
        match self.ids {
            IdShift::Keep => None,
            IdShift::FromHost { base, size } => {
                let mut map = |h: u32| {
                    if h >= base && h - base < size {
                        h - base
                    } else {
                        self.stats.clamped_ids += 1;
                        65534
                    }
                };
                Some((map(st.st_uid), map(st.st_gid)))
            }
        }
    }

    fn record(
        &mut self,
        kind: u8,
        name: &CStr,
        st: &libc::stat,
        ids: Option<(u32, u32)>,
        extra: &[u8],
    ) {
        let (u, g) = ids.unwrap_or((0, 0));
        self.hash.update([kind]);
        self.hash
            .update((name.to_bytes().len() as u32).to_le_bytes());
        self.hash.update(name.to_bytes());
        self.hash.update((st.st_mode & 0o7777).to_le_bytes());
        self.hash.update(u.to_le_bytes());
        self.hash.update(g.to_le_bytes());
        self.hash.update(st.st_mtime.to_le_bytes());
        self.hash.update((extra.len() as u64).to_le_bytes());
        self.hash.update(extra);
    }

    fn mode(&mut self, st: &libc::stat) -> libc::mode_t {
        let m = st.st_mode & 0o7777;
        // A directory's setgid only makes new files inherit its group;
        // kept when ids are shifted back to sandbox ids, dropped when
        // they are stored as the host caller's (there the group is a
        // host group a later sandbox's files would silently join).
        let keep_sgid_dir = st.st_mode & libc::S_IFMT == libc::S_IFDIR
            && matches!(self.ids, IdShift::FromHost { .. });
        let keep = if keep_sgid_dir { 0o3777 } else { 0o1777 };
        if m & !keep & 0o6000 != 0 {
            self.stats.dropped_setid_bits += 1;
        }
        m & keep
    }

    fn rel_path(&self, name: &CStr) -> Vec<u8> {
        let mut p = self.cur.clone();
        if !p.is_empty() {
            p.push(b'/');
        }
        p.extend_from_slice(name.to_bytes());
        p
    }

    /// A later name of a file already copied: linked to the first copy.
    /// Returns false when it is the first name seen (copy it).
    fn hard_link(&mut self, dst: &OwnedFd, name: &CStr, st: &libc::stat) -> Result<bool> {
        if st.st_nlink <= 1 {
            return Ok(false);
        }
        let key = (st.st_dev, st.st_ino);
        let Some(first) = self.links.get(&key) else {
            return Ok(false);
        };
        let os = OsStr::from_bytes(name.to_bytes());
        // SAFETY: valid fds and C strings. `first` is a path of our own
        // making inside the new layer (directories we created), never a
        // name resolved in the sandbox's tree; flags 0: no link followed.
        check(
            unsafe {
                libc::linkat(
                    self.dst_root.as_raw_fd(),
                    first.as_ptr(),
                    dst.as_raw_fd(),
                    name.as_ptr(),
                    0,
                )
            },
            "link",
            os,
        )?;
        let target = first.to_bytes().to_vec();
        self.record(b'h', name, st, None, &target);
        Ok(true)
    }

    fn remember_link(&mut self, name: &CStr, st: &libc::stat) {
        if st.st_nlink <= 1 {
            return;
        }
        let p = self.rel_path(name);
        if self.link_bytes + p.len() > MAX_LINK_PATHS {
            return;
        }
        if let Ok(c) = CString::new(p) {
            self.link_bytes += c.as_bytes().len();
            self.links.insert((st.st_dev, st.st_ino), c);
        }
    }

    fn finish_entry(
        &mut self,
        dst: RawFd,
        name: &CStr,
        st: &libc::stat,
        ids: Option<(u32, u32)>,
        mode: Option<libc::mode_t>,
    ) -> Result<()> {
        let os = OsStr::from_bytes(name.to_bytes());
        if let Some((u, g)) = ids {
            // SAFETY: valid fd and name; never follows a link.
            check(
                unsafe { libc::fchownat(dst, name.as_ptr(), u, g, libc::AT_SYMLINK_NOFOLLOW) },
                "chown",
                os,
            )?;
        }
        if let Some(m) = mode {
            // SAFETY: valid fd and name; the entry is ours (just made), not a link.
            check(
                unsafe { libc::fchmodat(dst, name.as_ptr(), m, 0) },
                "chmod",
                os,
            )?;
        }
        let t = libc::timespec {
            tv_sec: st.st_mtime,
            tv_nsec: st.st_mtime_nsec,
        };
        let times = [t, t];
        // SAFETY: valid fd, name and two timespecs.
        check(
            unsafe {
                libc::utimensat(
                    dst,
                    name.as_ptr(),
                    times.as_ptr(),
                    libc::AT_SYMLINK_NOFOLLOW,
                )
            },
            "utime",
            os,
        )?;
        Ok(())
    }

    fn file(&mut self, src: &OwnedFd, dst: &OwnedFd, name: &CStr, st: &libc::stat) -> Result<()> {
        let os = OsStr::from_bytes(name.to_bytes());
        let f = openat(
            src.as_raw_fd(),
            name,
            libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY,
            0,
        )
        .map_err(|e| err("open", os, e))?;
        let now = fstat(f.as_raw_fd()).map_err(|e| err("fstat", os, e))?;
        if now.st_mode & libc::S_IFMT != libc::S_IFREG
            || now.st_ino != st.st_ino
            || now.st_dev != st.st_dev
        {
            return Err(ImageError::invalid_image(format!(
                "snapshot: {os:?} changed while it was read"
            )));
        }
        let size = st.st_size.max(0) as u64;
        // Charged in full up front: the copy reads at most `size` bytes.
        if size > self.bytes_left {
            return Err(ImageError::TooLarge(format!(
                "snapshot: {os:?} is {size} bytes (apparent size, holes included), past what is left of its byte budget ({})",
                self.bytes_left
            )));
        }
        self.bytes_left -= size;
        let out = openat(
            dst.as_raw_fd(),
            name,
            libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW,
            0o600,
        )
        .map_err(|e| err("create", os, e))?;
        let (r, w) = (std::fs::File::from(f), std::fs::File::from(out));
        let mut content = Sha256::new();
        let copied = match self.digest {
            LayerDigest::Content => self.copy_data(&r, &w, size, &mut content),
            LayerDigest::Metadata => self.copy_data_in_kernel(&r, &w, size),
        }
        .map_err(|e| match e {
            CopyError::Io(e) => err("copy", os, e),
            CopyError::Budget => {
                ImageError::TooLarge(format!("snapshot: more than its byte budget at {os:?}"))
            }
        })?;
        self.stats.bytes += copied;
        let ids = self.ids(st);
        let mut extra = size.to_le_bytes().to_vec();
        if self.digest == LayerDigest::Content {
            extra.extend_from_slice(&copied.to_le_bytes());
            extra.extend_from_slice(&content.finalize());
        }
        self.record(b'f', name, st, ids, &extra);
        let mode = self.mode(st);
        drop(w);
        self.finish_entry(dst.as_raw_fd(), name, st, ids, Some(mode))?;
        self.remember_link(name, st);
        Ok(())
    }

    /// Copies the data segments of `r` (up to `size`, already charged) and
    /// leaves its holes as holes. Returns the bytes copied.
    fn copy_data(
        &mut self,
        r: &std::fs::File,
        w: &std::fs::File,
        size: u64,
        content: &mut Sha256,
    ) -> std::result::Result<u64, CopyError> {
        use std::os::unix::fs::FileExt;
        let fd = r.as_raw_fd();
        let (mut off, mut copied) = (0u64, 0u64);
        'segments: while off < size {
            // SAFETY: lseek on a valid fd.
            let data = unsafe { libc::lseek(fd, off as libc::off_t, libc::SEEK_DATA) };
            if data < 0 {
                let e = io::Error::last_os_error();
                if e.raw_os_error() == Some(libc::ENXIO) {
                    break;
                }
                return Err(CopyError::Io(e));
            }
            let data = data as u64;
            if data >= size {
                break;
            }
            // SAFETY: as above.
            let hole = unsafe { libc::lseek(fd, data as libc::off_t, libc::SEEK_HOLE) };
            if hole < 0 {
                return Err(CopyError::Io(io::Error::last_os_error()));
            }
            let end = (hole as u64).min(size);
            content.update(data.to_le_bytes());
            content.update(end.to_le_bytes());
            let mut pos = data;
            while pos < end {
                let want = (self.buf.len() as u64).min(end - pos) as usize;
                let n = r
                    .read_at(&mut self.buf[..want], pos)
                    .map_err(CopyError::Io)?;
                if n == 0 {
                    // Shrunk while read (no freezer): what was there is kept.
                    break 'segments;
                }
                if n as u64 > end - pos {
                    return Err(CopyError::Budget);
                }
                content.update(&self.buf[..n]);
                w.write_all_at(&self.buf[..n], pos).map_err(CopyError::Io)?;
                pos += n as u64;
                copied += n as u64;
            }
            off = end;
        }
        w.set_len(size).map_err(CopyError::Io)?;
        Ok(copied)
    }

    /// As `copy_data`, without reading the data here: a reflink of the
    /// whole file, or its data segments copied by the kernel, holes kept.
    /// Falls back to `copy_data` (its hash unused) when the kernel refuses.
    fn copy_data_in_kernel(
        &mut self,
        r: &std::fs::File,
        w: &std::fs::File,
        size: u64,
    ) -> std::result::Result<u64, CopyError> {
        let (fd, wfd) = (r.as_raw_fd(), w.as_raw_fd());
        if let Copied::Bytes(n) =
            kernel_copy::reflink(&mut self.ways, fd, wfd, size).map_err(CopyError::Io)?
        {
            return Ok(n);
        }
        let (mut off, mut copied) = (0u64, 0u64);
        while off < size {
            // SAFETY: lseek on a valid fd.
            let data = unsafe { libc::lseek(fd, off as libc::off_t, libc::SEEK_DATA) };
            if data < 0 {
                let e = io::Error::last_os_error();
                if e.raw_os_error() == Some(libc::ENXIO) {
                    break;
                }
                return Err(CopyError::Io(e));
            }
            let data = data as u64;
            if data >= size {
                break;
            }
            // SAFETY: as above.
            let hole = unsafe { libc::lseek(fd, data as libc::off_t, libc::SEEK_HOLE) };
            if hole < 0 {
                return Err(CopyError::Io(io::Error::last_os_error()));
            }
            let end = (hole as u64).min(size);
            match kernel_copy::range(&mut self.ways, fd, wfd, data, end).map_err(CopyError::Io)? {
                Copied::Bytes(n) => {
                    copied += n;
                    if n < end - data {
                        // Shrunk while copied (no freezer): what was there is kept.
                        break;
                    }
                }
                Copied::Refused if off == 0 && copied == 0 => {
                    return self.copy_data(r, w, size, &mut Sha256::new());
                }
                Copied::Refused => {
                    return Err(CopyError::Io(io::Error::other(
                        "the kernel stopped copying halfway",
                    )))
                }
            }
            off = end;
        }
        w.set_len(size).map_err(CopyError::Io)?;
        Ok(copied)
    }

    fn symlink(
        &mut self,
        src: &OwnedFd,
        dst: &OwnedFd,
        name: &CStr,
        st: &libc::stat,
    ) -> Result<()> {
        let os = OsStr::from_bytes(name.to_bytes());
        let mut target = vec![0u8; libc::PATH_MAX as usize];
        // SAFETY: buffer of the given length.
        let n = unsafe {
            libc::readlinkat(
                src.as_raw_fd(),
                name.as_ptr(),
                target.as_mut_ptr().cast(),
                target.len(),
            )
        };
        if n < 0 {
            return Err(err("readlink", os, io::Error::last_os_error()));
        }
        if n as usize >= target.len() {
            return Err(ImageError::invalid_image(format!(
                "snapshot: link {os:?} too long"
            )));
        }
        target.truncate(n as usize);
        let t =
            CString::new(target.clone()).map_err(|_| ImageError::invalid_image("NUL in a link"))?;
        // SAFETY: valid C strings and fd. The target is stored, never followed.
        check(
            unsafe { libc::symlinkat(t.as_ptr(), dst.as_raw_fd(), name.as_ptr()) },
            "symlink",
            os,
        )?;
        let ids = self.ids(st);
        self.record(b'l', name, st, ids, &target);
        self.finish_entry(dst.as_raw_fd(), name, st, ids, None)
    }

    fn node(
        &mut self,
        dst: &OwnedFd,
        name: &CStr,
        st: &libc::stat,
        kind: u8,
        mode: libc::mode_t,
    ) -> Result<()> {
        let os = OsStr::from_bytes(name.to_bytes());
        // SAFETY: valid fd and name; a FIFO or the 0:0 whiteout only.
        check(
            unsafe { libc::mknodat(dst.as_raw_fd(), name.as_ptr(), mode, 0) },
            "mknod",
            os,
        )?;
        let ids = self.ids(st);
        self.record(kind, name, st, ids, &[]);
        let m = if kind == b'p' {
            Some(self.mode(st))
        } else {
            None
        };
        self.finish_entry(dst.as_raw_fd(), name, st, ids, m)
    }

    /// Copies one directory's entries; directories are returned for the
    /// caller's stack instead of recursing.
    fn dir(&mut self, src: &OwnedFd, dst: &OwnedFd) -> Result<Vec<(CString, libc::stat)>> {
        let mut subdirs = Vec::new();
        let (listing, charged) = names(src, &mut self.entries_left, &mut self.names_left)?;
        for name in listing {
            let os = OsStr::from_bytes(name.to_bytes()).to_owned();
            let st = match lstatat(src.as_raw_fd(), &name) {
                Ok(st) => st,
                // Removed since it was listed (no freezer): not part of the layer.
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => continue,
                Err(e) => return Err(err("lstat", &os, e)),
            };
            self.stats.entries += 1;
            match st.st_mode & libc::S_IFMT {
                libc::S_IFDIR => subdirs.push((name, st)),
                libc::S_IFREG => {
                    if !self.hard_link(dst, &name, &st)? {
                        self.file(src, dst, &name, &st)?
                    }
                }
                libc::S_IFLNK => self.symlink(src, dst, &name, &st)?,
                libc::S_IFIFO => self.node(dst, &name, &st, b'p', libc::S_IFIFO | 0o600)?,
                libc::S_IFCHR if st.st_rdev == 0 => {
                    self.stats.whiteouts += 1;
                    self.node(dst, &name, &st, b'w', libc::S_IFCHR)?
                }
                _ => self.stats.skipped_devices += 1,
            }
        }
        // The listing is gone; the subdirectories stay until visited.
        self.names_left += charged;
        for (name, _) in &subdirs {
            let cost = subdir_cost(name);
            if self.names_left < cost {
                return Err(names_past_budget());
            }
            self.names_left -= cost;
        }
        Ok(subdirs)
    }
}

struct Frame {
    src: OwnedFd,
    dst: OwnedFd,
    /// Subdirectories still to copy, last first.
    todo: Vec<(CString, libc::stat)>,
    /// This directory's own entry in its parent (None for the root).
    this: Option<(CString, libc::stat)>,
    /// Its path relative to the layer's root.
    rel: Vec<u8>,
}

fn opaque(fd: &OwnedFd) -> bool {
    let mut v = [0u8; 4];
    // SAFETY: valid fd, name and buffer.
    let n = unsafe {
        libc::fgetxattr(
            fd.as_raw_fd(),
            OPAQUE.as_ptr(),
            v.as_mut_ptr().cast(),
            v.len(),
        )
    };
    n == 1 && v[0] == b'y'
}

/// Copies the tree under `src` (an open directory) into the empty
/// directory `dst`. Returns the layer's digest and the counts. Depth is
/// bounded by [`MAX_DEPTH`]: two fds per level.
pub fn copy_upper(
    src: OwnedFd,
    dst: &Path,
    ids: IdShift,
    limits: CopyLimits,
    digest: LayerDigest,
) -> Result<(Digest, UnpackStats)> {
    let dst_c = CString::new(dst.as_os_str().as_bytes())
        .map_err(|_| ImageError::invalid_image("bad path"))?;
    let dst_fd = openat(
        libc::AT_FDCWD,
        &dst_c,
        libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
        0,
    )
    .map_err(|e| ImageError::io("open", dst, e))?;
    let dst_root = openat(
        dst_fd.as_raw_fd(),
        c".",
        libc::O_PATH | libc::O_DIRECTORY,
        0,
    )
    .map_err(|e| ImageError::io("open", dst, e))?;
    let mut c = Copier {
        hash: Sha256::new(),
        stats: UnpackStats {
            layers: 1,
            ..Default::default()
        },
        ids,
        bytes_left: limits.max_bytes,
        entries_left: limits.max_entries,
        names_left: limits.max_held_name_bytes,
        buf: vec![0u8; 1 << 20],
        dst_root,
        cur: Vec::new(),
        links: HashMap::new(),
        link_bytes: 0,
        digest,
        ways: Ways::default(),
    };
    let root_st = fstat(src.as_raw_fd()).map_err(|e| ImageError::io("fstat", dst, e))?;
    if opaque(&src) {
        set_opaque(&dst_fd)?;
    }
    let todo = c.dir(&src, &dst_fd)?;
    let mut stack = vec![Frame {
        src,
        dst: dst_fd,
        todo: rev(todo),
        this: None,
        rel: Vec::new(),
    }];
    c.hash.update(b"{");
    while let Some(top) = stack.last_mut() {
        let Some((name, st)) = top.todo.pop() else {
            let f = stack.pop().expect("non-empty");
            c.hash.update(b"}");
            if let (Some((name, st)), Some(parent)) = (&f.this, stack.last()) {
                let ids = c.ids(st);
                let mode = c.mode(st);
                drop(f.dst);
                c.finish_entry(parent.dst.as_raw_fd(), name, st, ids, Some(mode))?;
            }
            continue;
        };
        c.names_left += subdir_cost(&name);
        if stack.len() >= MAX_DEPTH {
            return Err(ImageError::TooLarge(format!(
                "snapshot: directories nested deeper than {MAX_DEPTH}"
            )));
        }
        let os = OsStr::from_bytes(name.to_bytes()).to_owned();
        let top = stack.last().expect("non-empty");
        let s = match openat(
            top.src.as_raw_fd(),
            &name,
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
            0,
        ) {
            Ok(fd) => fd,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => continue,
            Err(e) => return Err(err("open dir", &os, e)),
        };
        let now = fstat(s.as_raw_fd()).map_err(|e| err("fstat", &os, e))?;
        if now.st_ino != st.st_ino || now.st_dev != st.st_dev {
            return Err(ImageError::invalid_image(format!(
                "snapshot: {os:?} changed while it was read"
            )));
        }
        // SAFETY: valid fd and name; made private until its entries are in.
        check(
            unsafe { libc::mkdirat(top.dst.as_raw_fd(), name.as_ptr(), 0o700) },
            "mkdir",
            &os,
        )?;
        let d = openat(
            top.dst.as_raw_fd(),
            &name,
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
            0,
        )
        .map_err(|e| err("open new dir", &os, e))?;
        let ids = c.ids(&st);
        let mut extra = Vec::new();
        if opaque(&s) {
            set_opaque(&d)?;
            extra.push(b'o');
        }
        c.record(b'd', &name, &st, ids, &extra);
        c.hash.update(b"{");
        c.cur = top.rel.clone();
        let rel = c.rel_path(&name);
        c.cur = rel.clone();
        let todo = c.dir(&s, &d)?;
        stack.push(Frame {
            src: s,
            dst: d,
            todo: rev(todo),
            this: Some((name, st)),
            rel,
        });
    }
    let _ = root_st;
    Ok((Digest::from_hasher(c.hash), c.stats))
}

fn rev<T>(mut v: Vec<T>) -> Vec<T> {
    v.reverse();
    v
}

fn set_opaque(fd: &OwnedFd) -> Result<()> {
    // SAFETY: valid fd, name and value.
    let r = unsafe { libc::fsetxattr(fd.as_raw_fd(), OPAQUE.as_ptr(), b"y".as_ptr().cast(), 1, 0) };
    check(r, "set opaque mark", OsStr::new("."))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};

    fn open_dir(p: &Path) -> OwnedFd {
        let c = CString::new(p.as_os_str().as_bytes()).unwrap();
        openat(libc::AT_FDCWD, &c, libc::O_RDONLY | libc::O_DIRECTORY, 0).unwrap()
    }

    fn limits() -> CopyLimits {
        CopyLimits {
            max_entries: 1000,
            max_bytes: 1 << 20,
            max_held_name_bytes: MAX_HELD_NAME_BYTES,
        }
    }

    fn copy_with_names(src: &Path, max_held_name_bytes: u64) -> Result<UnpackStats> {
        let dst = tempfile::tempdir().unwrap();
        let l = CopyLimits {
            max_held_name_bytes,
            ..limits()
        };
        copy_upper(
            open_dir(src),
            dst.path(),
            IdShift::Keep,
            l,
            LayerDigest::Content,
        )
        .map(|r| r.1)
    }

    /// Names held at once are bounded in bytes, not only in count: long
    /// names in a wide listing, and long subdirectory names waiting at every
    /// level, are both charged.
    #[test]
    fn names_held_at_once_are_bounded_in_bytes() {
        let long = |i: usize| format!("{i:04}{}", "n".repeat(200));
        let files = tempfile::tempdir().unwrap();
        for i in 0..100 {
            std::fs::write(files.path().join(long(i)), b"").unwrap();
        }
        let dirs = tempfile::tempdir().unwrap();
        for i in 0..100 {
            std::fs::create_dir(dirs.path().join(long(i))).unwrap();
        }
        // 100 names of ~205 bytes cost ~23 KiB; 100 waiting subdirectories more.
        for t in [files.path(), dirs.path()] {
            assert!(
                matches!(copy_with_names(t, 16 << 10), Err(ImageError::TooLarge(_))),
                "{t:?}"
            );
            // Control: the same tree within the default budget.
            assert_eq!(
                copy_with_names(t, MAX_HELD_NAME_BYTES).unwrap().entries,
                100
            );
        }
        // A budget that holds the listing but not the subdirectories
        // waiting with their stat: files fit, directories do not.
        assert!(copy_with_names(files.path(), 30 << 10).is_ok());
        assert!(matches!(
            copy_with_names(dirs.path(), 30 << 10),
            Err(ImageError::TooLarge(_))
        ));
        // The subdirectories' names are given back as they are visited:
        // a budget that holds one listing and its waiting entries copies it.
        assert!(copy_with_names(dirs.path(), 64 << 10).is_ok());
    }

    fn copy(src: &Path) -> Result<(tempfile::TempDir, Digest, UnpackStats)> {
        let dst = tempfile::tempdir().unwrap();
        let (d, s) = copy_upper(
            open_dir(src),
            dst.path(),
            IdShift::Keep,
            limits(),
            LayerDigest::Content,
        )?;
        Ok((dst, d, s))
    }

    // Links stay links (a link to a host file is not followed: the host
    // file's content never lands in the layer), FIFOs stay FIFOs (never
    // opened: the copy does not block), setuid is dropped, sparse files
    // keep their holes, and equal trees hash equal.
    #[test]
    fn hostile_entries_are_copied_as_entries() {
        let host = tempfile::tempdir().unwrap();
        let secret = host.path().join("secret");
        std::fs::write(&secret, "HOST").unwrap();
        let up = tempfile::tempdir().unwrap();
        let u = up.path();
        symlink(&secret, u.join("evil")).unwrap();
        let c = CString::new(u.join("fifo").as_os_str().as_bytes()).unwrap();
        // SAFETY: valid path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
        std::fs::write(u.join("suid"), "x").unwrap();
        std::fs::set_permissions(u.join("suid"), std::fs::Permissions::from_mode(0o4755)).unwrap();
        let f = std::fs::File::create(u.join("sparse")).unwrap();
        f.set_len(900 << 10).unwrap();
        std::fs::create_dir(u.join("d")).unwrap();
        std::fs::write(u.join("d").join("f"), "data").unwrap();

        let (dst, d1, stats) = copy(u).unwrap();
        let out = dst.path();
        let l = std::fs::symlink_metadata(out.join("evil")).unwrap();
        assert!(l.file_type().is_symlink());
        assert_eq!(std::fs::read_link(out.join("evil")).unwrap(), secret);
        // Control: followed, the link does reach the host file.
        assert_eq!(std::fs::read_to_string(out.join("evil")).unwrap(), "HOST");
        let fifo = std::fs::symlink_metadata(out.join("fifo")).unwrap();
        assert_eq!(fifo.mode() & libc::S_IFMT, libc::S_IFIFO);
        assert_eq!(
            std::fs::metadata(out.join("suid")).unwrap().mode() & 0o7777,
            0o755
        );
        assert_eq!(stats.dropped_setid_bits, 1);
        let sp = std::fs::metadata(out.join("sparse")).unwrap();
        assert_eq!(sp.len(), 900 << 10);
        assert!(sp.blocks() * 512 < 64 << 10, "holes were filled");
        assert_eq!(std::fs::read_to_string(out.join("d/f")).unwrap(), "data");

        let (_dst2, d2, _) = copy(u).unwrap();
        assert_eq!(d1, d2, "the same tree hashes the same");
        std::fs::write(u.join("d").join("f"), "datb").unwrap();
        let (_dst3, d3, _) = copy(u).unwrap();
        assert_ne!(d1, d3, "a changed byte changes the digest");
    }

    // Five bytes written at the start of a 1 TB sparse file: the apparent
    // size is what an export or a copy out would read, so it is what is
    // charged. Control: the same file within the budget is copied.
    #[test]
    fn sparse_files_are_charged_their_apparent_size() {
        let up = tempfile::tempdir().unwrap();
        let f = std::fs::File::create(up.path().join("sparse")).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&f, b"hello", 0).unwrap();
        f.set_len(1 << 40).unwrap();
        match copy(up.path()) {
            Err(ImageError::TooLarge(m)) => assert!(m.contains("apparent size"), "{m}"),
            other => panic!(
                "a 1 TB sparse file past a 1 MiB budget: {:?}",
                other.map(|r| r.2)
            ),
        }
        f.set_len(512 << 10).unwrap();
        let (dst, _, _) = copy(up.path()).unwrap();
        let m = std::fs::metadata(dst.path().join("sparse")).unwrap();
        assert_eq!(m.len(), 512 << 10);
    }

    // One 600 KiB file under eleven names fits a 1 MiB budget: its later
    // names are links to the first copy, not copies. Control: two distinct
    // 600 KiB files do not fit.
    #[test]
    fn hard_links_are_copied_once() {
        let up = tempfile::tempdir().unwrap();
        let u = up.path();
        std::fs::create_dir(u.join("a")).unwrap();
        std::fs::create_dir(u.join("b")).unwrap();
        std::fs::write(u.join("a/big"), vec![7u8; 600 << 10]).unwrap();
        for i in 0..10 {
            std::fs::hard_link(u.join("a/big"), u.join(format!("b/l{i}"))).unwrap();
        }
        let (dst, d1, stats) = copy(u).unwrap();
        assert_eq!(stats.bytes, 600 << 10);
        let first = std::fs::metadata(dst.path().join("a/big")).unwrap();
        assert_eq!(first.nlink(), 11);
        for i in 0..10 {
            let p = dst.path().join(format!("b/l{i}"));
            assert_eq!(std::fs::metadata(&p).unwrap().ino(), first.ino());
            assert_eq!(std::fs::read(&p).unwrap().len(), 600 << 10);
        }
        let (_d2, d2, _) = copy(u).unwrap();
        assert_eq!(d1, d2);

        std::fs::write(u.join("b/other"), vec![8u8; 600 << 10]).unwrap();
        assert!(matches!(copy(u), Err(ImageError::TooLarge(_))));
    }

    // Stored as the caller's ids, a directory's setgid would make later
    // files join a host group: dropped. Shifted to sandbox ids it is kept.
    #[test]
    fn setgid_directories_lose_the_bit_when_ids_are_kept() {
        let up = tempfile::tempdir().unwrap();
        std::fs::create_dir(up.path().join("g")).unwrap();
        std::fs::set_permissions(up.path().join("g"), std::fs::Permissions::from_mode(0o2775))
            .unwrap();
        assert_eq!(
            std::fs::metadata(up.path().join("g")).unwrap().mode() & 0o7777,
            0o2775,
            "control: the source has the bit"
        );
        let (dst, _, stats) = copy(up.path()).unwrap();
        let m = std::fs::metadata(dst.path().join("g")).unwrap().mode() & 0o7777;
        assert_eq!(m, 0o775);
        assert_eq!(stats.dropped_setid_bits, 1);
    }

    #[test]
    fn budgets_are_enforced() {
        let up = tempfile::tempdir().unwrap();
        std::fs::write(up.path().join("big"), vec![1u8; 2 << 20]).unwrap();
        match copy(up.path()) {
            Err(ImageError::TooLarge(_)) => {}
            other => panic!("2 MiB past a 1 MiB budget: {:?}", other.map(|r| r.2)),
        }
        let many = tempfile::tempdir().unwrap();
        for i in 0..1001 {
            std::fs::write(many.path().join(i.to_string()), "").unwrap();
        }
        assert!(matches!(copy(many.path()), Err(ImageError::TooLarge(_))));
        let mut deep = tempfile::tempdir().unwrap().keep();
        let top = deep.clone();
        for _ in 0..MAX_DEPTH + 1 {
            deep = deep.join("d");
            std::fs::create_dir(&deep).unwrap();
        }
        assert!(matches!(copy(&top), Err(ImageError::TooLarge(_))));
        let _ = std::fs::remove_dir_all(top);
    }

    fn copy_in_kernel(src: &Path, dst: &Path, max_bytes: u64) -> Result<(Digest, UnpackStats)> {
        copy_upper(
            open_dir(src),
            dst,
            IdShift::Keep,
            CopyLimits {
                max_entries: 1000,
                max_bytes,
                max_held_name_bytes: MAX_HELD_NAME_BYTES,
            },
            LayerDigest::Metadata,
        )
    }

    fn same_files(a: &Path, b: &Path, names: &[&str]) {
        for n in names {
            assert_eq!(
                std::fs::read(a.join(n)).unwrap(),
                std::fs::read(b.join(n)).unwrap(),
                "{n} differs"
            );
        }
    }

    // A fork's copy by the kernel, on the same filesystem (copy_file_range,
    // or a reflink where it shares extents) and across two (tmpfs to this
    // disk: sendfile): the same bytes, holes kept, hard links once, the
    // apparent size charged as in a hashed copy, and the digest unmoved by
    // a changed byte (it does not cover content; the store adds a nonce).
    #[test]
    fn kernel_copy_keeps_every_bound() {
        let shm = Path::new("/dev/shm");
        let mut sources = vec![tempfile::tempdir().unwrap()];
        if shm.is_dir() {
            sources.push(tempfile::tempdir_in(shm).unwrap());
        }
        for up in &sources {
            let u = up.path();
            let data: Vec<u8> = (0..3 << 20).map(|i: u32| (i % 251) as u8).collect();
            std::fs::write(u.join("big"), &data).unwrap();
            std::fs::hard_link(u.join("big"), u.join("big2")).unwrap();
            let f = std::fs::File::create(u.join("sparse")).unwrap();
            std::os::unix::fs::FileExt::write_all_at(&f, b"middle", 5 << 20).unwrap();
            f.set_len(12 << 20).unwrap();
            std::fs::create_dir(u.join("d")).unwrap();
            std::fs::write(u.join("d/small"), "x").unwrap();
            std::fs::write(u.join("empty"), "").unwrap();

            let dst = tempfile::tempdir().unwrap();
            let (d1, stats) = copy_in_kernel(u, dst.path(), 32 << 20).unwrap();
            let out = dst.path();
            same_files(u, out, &["big", "big2", "sparse", "d/small", "empty"]);
            let sp = std::fs::metadata(out.join("sparse")).unwrap();
            assert_eq!(sp.len(), 12 << 20);
            assert!(
                sp.blocks() * 512 < 1 << 20,
                "holes were filled: {}",
                sp.blocks()
            );
            assert_eq!(
                std::fs::metadata(out.join("big2")).unwrap().ino(),
                std::fs::metadata(out.join("big")).unwrap().ino()
            );
            assert!(stats.bytes >= 3 << 20);

            // 3 MiB + 12 MiB apparent: past 14 MiB, as a hashed copy would be.
            let dst2 = tempfile::tempdir().unwrap();
            assert!(matches!(
                copy_in_kernel(u, dst2.path(), 14 << 20),
                Err(ImageError::TooLarge(_))
            ));
            let dst3 = tempfile::tempdir().unwrap();
            // Same metadata, other content: the mtime is put back, or a
            // second boundary between the two writes changes the digest.
            let mtime = std::fs::metadata(u.join("d/small"))
                .unwrap()
                .modified()
                .unwrap();
            std::fs::write(u.join("d/small"), "y").unwrap();
            std::fs::File::options()
                .write(true)
                .open(u.join("d/small"))
                .unwrap()
                .set_modified(mtime)
                .unwrap();
            let (d2, _) = copy_in_kernel(u, dst3.path(), 32 << 20).unwrap();
            assert_eq!(d1, d2, "content is not in a fork layer's digest");
            assert_eq!(std::fs::read(dst3.path().join("d/small")).unwrap(), b"y");
        }
    }

    // Without any in-kernel way (every one refused) the range copy says so
    // and copies nothing; with sendfile alone it copies exactly the range.
    #[test]
    fn range_copy_is_bounded_and_falls_back() {
        let t = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..1 << 20).map(|i: u32| (i % 13) as u8).collect();
        std::fs::write(t.path().join("src"), &data).unwrap();
        let r = std::fs::File::open(t.path().join("src")).unwrap();
        let w = std::fs::File::create(t.path().join("dst")).unwrap();
        let mut none = Ways {
            clone: false,
            copy_range: false,
            sendfile: false,
        };
        assert!(matches!(
            kernel_copy::range(&mut none, r.as_raw_fd(), w.as_raw_fd(), 0, 4096).unwrap(),
            Copied::Refused
        ));
        let mut send = Ways {
            clone: false,
            copy_range: false,
            sendfile: true,
        };
        match kernel_copy::range(&mut send, r.as_raw_fd(), w.as_raw_fd(), 4096, 70000).unwrap() {
            Copied::Bytes(n) => assert_eq!(n, 70000 - 4096),
            Copied::Refused => panic!("sendfile refused between two files of one disk"),
        }
        let got = std::fs::read(t.path().join("dst")).unwrap();
        assert_eq!(got.len(), 70000);
        assert_eq!(&got[4096..], &data[4096..70000]);
        assert!(got[..4096].iter().all(|&b| b == 0));
    }
}
