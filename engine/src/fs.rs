//! Files inside a sandbox (every path is resolved by the agent inside the
//! sandbox root) and copies between the sandbox and the host.
//!
//! Host-side walks never follow a name the sandbox could have chosen (see
//! the rule at "host side" below): entries are reached relative to an
//! already-open directory with `openat`/`mkdirat`/`symlinkat` and
//! `O_NOFOLLOW`, so a symlink made inside the sandbox is recreated as a
//! symlink, never read or written through.

use std::ffi::{CString, OsStr, OsString};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use lockbox_protocol::{ErrorCode, FileInfo, FileKind, Message};
use tokio::sync::{mpsc, Mutex};

use crate::client::AgentClient;
use crate::error::{EngineError, Result};
use crate::streams::{demux, demux_drain, StreamReader, StreamWriter, FILE_DRAIN_LIMIT};

fn check_path(p: &str) -> Result<()> {
    if !p.starts_with('/') {
        return Err(EngineError::invalid(format!(
            "sandbox path {p:?} must be absolute"
        )));
    }
    if p.contains('\0') {
        return Err(EngineError::invalid("sandbox path contains a NUL byte"));
    }
    Ok(())
}

pub async fn stat(c: &AgentClient, path: &str) -> Result<FileInfo> {
    check_path(path)?;
    match c.call(&Message::Stat { path: path.into() }).await? {
        Message::StatResult(i) => Ok(i),
        m => Err(unexpected("stat", m)),
    }
}

pub async fn read_dir(c: &AgentClient, path: &str) -> Result<Vec<FileInfo>> {
    check_path(path)?;
    match c.call(&Message::ReadDir { path: path.into() }).await? {
        Message::DirEntries { entries } => Ok(entries),
        m => Err(unexpected("read_dir", m)),
    }
}

async fn expect_ok(c: &AgentClient, what: &str, m: Message) -> Result<()> {
    match c.call(&m).await? {
        Message::Ok => Ok(()),
        m => Err(unexpected(what, m)),
    }
}

pub async fn mkdir_all(c: &AgentClient, path: &str, mode: u32) -> Result<()> {
    check_path(path)?;
    expect_ok(
        c,
        "mkdir_all",
        Message::MkdirAll {
            path: path.into(),
            mode: mode & 0o7777,
        },
    )
    .await
}

pub async fn remove(c: &AgentClient, path: &str) -> Result<()> {
    check_path(path)?;
    expect_ok(c, "remove", Message::Remove { path: path.into() }).await
}

pub async fn remove_all(c: &AgentClient, path: &str) -> Result<()> {
    check_path(path)?;
    expect_ok(c, "remove_all", Message::RemoveAll { path: path.into() }).await
}

pub async fn rename(c: &AgentClient, from: &str, to: &str) -> Result<()> {
    check_path(from)?;
    check_path(to)?;
    expect_ok(
        c,
        "rename",
        Message::Rename {
            from: from.into(),
            to: to.into(),
        },
    )
    .await
}

pub async fn symlink(c: &AgentClient, target: &str, link: &str) -> Result<()> {
    check_path(link)?;
    expect_ok(
        c,
        "symlink",
        Message::Symlink {
            target: target.into(),
            link: link.into(),
        },
    )
    .await
}

fn unexpected(what: &str, m: Message) -> EngineError {
    EngineError::internal(format!("agent answered {what} with {m:?}"))
}

/// Opens a sandbox file for reading; the contents stream through the reader.
pub async fn open(c: &AgentClient, path: &str) -> Result<StreamReader> {
    check_path(path)?;
    let op = c.op()?;
    op.send(&Message::ReadFile { path: path.into() })?;
    let mut d = demux_drain(
        op,
        &[lockbox_protocol::stream::STDOUT],
        Some(FILE_DRAIN_LIMIT),
    );
    match d.control.recv().await {
        Some(Ok(Message::Ok)) => Ok(d.readers.pop().expect("one reader")),
        Some(Ok(m)) => Err(unexpected("read_file", m)),
        Some(Err(e)) => Err(e),
        None => Err(EngineError::unavailable("sandbox went away")),
    }
}

/// Symlinks `open_regular` follows before giving up, as the kernel does.
const MAX_LINKS: usize = 40;

/// Opens a sandbox file for reading only if it is (or its symlinks lead
/// to) a regular file: a FIFO, device or socket is an `invalid_argument`
/// before anything is opened, so reading `/dev/zero` or a FIFO through a
/// link fails at once. The sandbox can still swap the file between the
/// look and the open, so callers bound what they read as well.
pub async fn open_regular(c: &AgentClient, path: &str) -> Result<StreamReader> {
    check_path(path)?;
    let mut p = path.to_string();
    for _ in 0..MAX_LINKS {
        let info = stat(c, &p).await?;
        match info.kind {
            FileKind::File => return open(c, &p).await,
            FileKind::Symlink => {
                let t = info.link_target.unwrap_or_default();
                p = if t.starts_with('/') {
                    t
                } else {
                    let dir = p.rsplit_once('/').map(|(d, _)| d).unwrap_or("");
                    format!("{dir}/{t}")
                };
            }
            FileKind::Dir => return Err(EngineError::invalid(format!("{path} is a directory"))),
            FileKind::Other => {
                return Err(EngineError::invalid(format!(
                    "{path} is not a regular file (a device, FIFO or socket)"
                )))
            }
        }
    }
    Err(EngineError::invalid(format!(
        "{path}: too many levels of symbolic links"
    )))
}

/// A sandbox file being written. `finish` completes it and reports the size.
type WriteDone = (
    mpsc::UnboundedReceiver<Result<Message>>,
    Option<Result<u64>>,
);

pub struct FileWriter {
    pub writer: StreamWriter,
    done: Mutex<WriteDone>,
}

impl FileWriter {
    pub async fn write_all(&self, data: &[u8]) -> Result<()> {
        self.writer.write_all(data).await
    }

    /// Sends EOF and waits until the agent has the whole file (idempotent).
    pub async fn finish(&self) -> Result<u64> {
        self.writer.close_write().await?;
        let mut d = self.done.lock().await;
        loop {
            if let Some(r) = &d.1 {
                return r.clone();
            }
            let r = match d.0.recv().await {
                Some(Ok(Message::Written { bytes })) => Ok(bytes),
                Some(Ok(Message::Ok)) => continue,
                Some(Ok(m)) => Err(unexpected("write_file", m)),
                Some(Err(e)) => Err(e),
                None => Err(EngineError::unavailable("sandbox went away")),
            };
            d.1 = Some(r);
        }
    }
}

/// Creates or truncates a sandbox file; bytes go through the writer.
pub async fn create(c: &AgentClient, path: &str, mode: u32) -> Result<FileWriter> {
    check_path(path)?;
    let op = c.op()?;
    op.send(&Message::WriteFile {
        path: path.into(),
        mode: mode & 0o7777,
    })?;
    let d = demux(op, &[]);
    Ok(FileWriter {
        writer: StreamWriter::new(d.shared, d.id, lockbox_protocol::stream::STDIN, d.credits),
        done: Mutex::new((d.control, None)),
    })
}

pub async fn write_file(c: &AgentClient, path: &str, data: &[u8], mode: u32) -> Result<u64> {
    let w = create(c, path, mode).await?;
    w.write_all(data).await?;
    w.finish().await
}

pub async fn read_file(c: &AgentClient, path: &str) -> Result<Vec<u8>> {
    open(c, path).await?.read_to_end().await
}

// ---------- host side ----------
//
// The rule for every host path: the path the caller names must not pass
// through a symlink at all (each component is opened with `O_NOFOLLOW`
// from `/`), because any of its directories may sit in a volume a sandbox
// can write, and no link the sandbox planted may redirect us. Below that
// point every entry is reached with `*at` calls relative to an open
// directory, never by path; symlinks are recreated as symlinks; only
// regular files and directories are copied, and never more bytes than the
// file's size when it was opened.

/// What one `copy_to_host` may write to the host unless the caller asks
/// for more. Sparse files count with their apparent size: the host copy
/// is written densely.
pub const DEFAULT_COPY_MAX_BYTES: u64 = 1 << 30;

/// What each entry a copy creates on the host counts against its cap
/// besides its contents (an inode and a block, roughly).
pub const ENTRY_COST: u64 = 4096;

/// The error for a copy or read that would pass its byte cap. The message
/// prefix is part of the ABI: the Go SDK matches it to `ErrSizeLimit`.
pub fn size_limit(what: impl std::fmt::Display) -> EngineError {
    EngineError::new(ErrorCode::ResourceExhausted, format!("size limit: {what}"))
}

/// Entries a tree copy may hold listed but not yet copied, and the bytes
/// of their paths. A copy walks depth first, so what waits is every
/// listing on the way down: a sandbox that makes wide directories at every
/// level would otherwise make the host hold them all (the copy's byte cap
/// bounds the disk, not this).
pub const MAX_PENDING_ENTRIES: usize = 256 << 10;
pub const MAX_PENDING_PATH_BYTES: usize = 64 << 20;

/// What a tree copy holds in memory for entries it has listed but not
/// copied yet.
#[derive(Default)]
struct Pending {
    entries: usize,
    bytes: usize,
}

impl Pending {
    fn add(&mut self, path: &str) -> Result<()> {
        self.entries += 1;
        self.bytes += path.len();
        if self.entries > MAX_PENDING_ENTRIES || self.bytes > MAX_PENDING_PATH_BYTES {
            return Err(size_limit(format!(
                "the tree holds more than {MAX_PENDING_ENTRIES} entries (or {MAX_PENDING_PATH_BYTES} bytes of paths) waiting to be copied at once"
            )));
        }
        Ok(())
    }

    fn done(&mut self, path: &str) {
        self.entries = self.entries.saturating_sub(1);
        self.bytes = self.bytes.saturating_sub(path.len());
    }
}

fn cstr(s: &str) -> Result<CString> {
    CString::new(s).map_err(|_| EngineError::invalid("path contains a NUL byte"))
}

fn cstr_os(s: &OsStr) -> Result<CString> {
    CString::new(s.as_bytes()).map_err(|_| EngineError::invalid("path contains a NUL byte"))
}

fn last_err(what: impl std::fmt::Display) -> EngineError {
    EngineError::io(what, std::io::Error::last_os_error())
}

/// A name the agent reported for a directory entry; anything that could
/// address another directory is refused.
fn entry_name(n: &str) -> Result<&str> {
    if n.is_empty() || n == "." || n == ".." || n.contains('/') || n.contains('\0') {
        return Err(EngineError::invalid(format!(
            "sandbox reported a bad directory entry name {n:?}"
        )));
    }
    Ok(n)
}

fn own(fd: RawFd, what: impl std::fmt::Display) -> Result<OwnedFd> {
    if fd < 0 {
        return Err(last_err(what));
    }
    // SAFETY: fd was just returned by the kernel and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn lstat_at(dir: RawFd, name: &CString) -> std::io::Result<libc::stat> {
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstatat on a dir fd we hold, into a local buffer; the final
    // component is not followed.
    if unsafe { libc::fstatat(dir, name.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(st)
}

fn fstat(fd: RawFd) -> Result<libc::stat> {
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat of an fd we hold into a local buffer.
    if unsafe { libc::fstat(fd, &mut st) } != 0 {
        return Err(last_err("fstat"));
    }
    Ok(st)
}

fn is_kind(st: &libc::stat, kind: libc::mode_t) -> bool {
    st.st_mode & libc::S_IFMT == kind
}

/// Opens the directory at an absolute host path without following any
/// symlink on the way (an `O_PATH` fd, usable only as a base for `*at`
/// calls). A symlink anywhere on the path is an `invalid_argument` naming
/// it: the caller can resolve the path itself if it trusts every link.
fn open_host_dir(path: &Path) -> Result<OwnedFd> {
    if !path.is_absolute() {
        return Err(EngineError::invalid(format!(
            "host path {} must be absolute",
            path.display()
        )));
    }
    let root = cstr("/")?;
    // SAFETY: plain open of a constant path.
    let mut fd = own(
        unsafe {
            libc::open(
                root.as_ptr(),
                libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        },
        "open /",
    )?;
    let mut walked = PathBuf::from("/");
    for comp in path.components() {
        let name = match comp {
            Component::RootDir | Component::CurDir => continue,
            Component::Normal(n) => n,
            Component::ParentDir | Component::Prefix(_) => {
                return Err(EngineError::invalid(format!(
                    "host path {} must not contain '..'",
                    path.display()
                )))
            }
        };
        walked.push(name);
        let c = cstr_os(name)?;
        // SAFETY: openat relative to a dir fd we hold.
        let next = unsafe {
            libc::openat(
                fd.as_raw_fd(),
                c.as_ptr(),
                libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            )
        };
        if next < 0 {
            let e = std::io::Error::last_os_error();
            if matches!(lstat_at(fd.as_raw_fd(), &c), Ok(st) if is_kind(&st, libc::S_IFLNK)) {
                return Err(EngineError::invalid(format!(
                    "host path {} passes through the symlink {}; lockbox never follows \
                     host symlinks (resolve the path yourself if you trust every link on it)",
                    path.display(),
                    walked.display()
                )));
            }
            return Err(EngineError::io(walked.display(), e));
        }
        fd = own(next, "openat")?;
    }
    Ok(fd)
}

/// Splits an absolute host path into its parent directory (opened without
/// following links) and its final name; `None` for `/` itself.
fn open_host_parent(path: &Path) -> Result<(OwnedFd, Option<OsString>)> {
    match (path.parent(), path.file_name()) {
        (Some(parent), Some(name)) => Ok((open_host_dir(parent)?, Some(name.to_os_string()))),
        _ => Ok((open_host_dir(path)?, None)),
    }
}

/// A host path the caller gave for a volume, checked as every host path
/// is: absolute, without `..`, existing, and without a symlink anywhere on
/// it (its directories may be another sandbox's volume). Returned in its
/// clean form, so nothing downstream needs to resolve it again.
pub fn host_path_without_links(p: &str) -> Result<PathBuf> {
    let path = Path::new(p);
    let (dir, name) = open_host_parent(path)?;
    if let Some(name) = &name {
        let c = cstr_os(name)?;
        let st = lstat_at(dir.as_raw_fd(), &c).map_err(|e| EngineError::io(p, e))?;
        if is_kind(&st, libc::S_IFLNK) {
            return Err(EngineError::invalid(format!(
                "host path {p} is a symlink; lockbox never follows host symlinks \
                 (resolve the path yourself if you trust every link on it)"
            )));
        }
    }
    Ok(path
        .components()
        .filter(|c| matches!(c, Component::RootDir | Component::Normal(_)))
        .collect())
}

fn openat(dir: RawFd, name: &str, flags: i32, mode: u32) -> Result<OwnedFd> {
    let c = cstr(name)?;
    // SAFETY: openat relative to a dir fd we hold.
    let fd = unsafe {
        libc::openat(
            dir,
            c.as_ptr(),
            flags | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            mode,
        )
    };
    own(fd, format!("open {name}"))
}

fn mkdirat_dir(dir: RawFd, name: &str, mode: u32) -> Result<OwnedFd> {
    let c = cstr(name)?;
    // SAFETY: mkdirat relative to a dir fd we hold.
    if unsafe { libc::mkdirat(dir, c.as_ptr(), mode) } != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EEXIST) {
            return Err(EngineError::io(format!("mkdir {name}"), e));
        }
    }
    // O_NOFOLLOW + O_DIRECTORY: an existing symlink here is an error, never
    // a way out.
    openat(dir, name, libc::O_DIRECTORY | libc::O_RDONLY, 0)
}

fn symlinkat(target: &str, dir: RawFd, name: &str) -> Result<()> {
    let t = cstr(target)?;
    let n = cstr(name)?;
    // SAFETY: symlinkat/unlinkat relative to a dir fd we hold; neither
    // follows the final component.
    unsafe {
        libc::unlinkat(dir, n.as_ptr(), 0);
        if libc::symlinkat(t.as_ptr(), dir, n.as_ptr()) != 0 {
            return Err(last_err(format!("symlink {name}")));
        }
    }
    Ok(())
}

/// Creates a fresh host file in `dir`. Whatever was at `name` (a file, a
/// link, a hard link to something else) is unlinked first and the new file
/// is made with `O_EXCL`, so no existing inode is ever written through.
fn create_host_file(dir: RawFd, name: &str, mode: u32) -> Result<std::fs::File> {
    let c = cstr(name)?;
    // SAFETY: unlinkat relative to a dir fd we hold; it never follows.
    unsafe { libc::unlinkat(dir, c.as_ptr(), 0) };
    let fd = openat(
        dir,
        name,
        libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL,
        mode & 0o777,
    )?;
    Ok(std::fs::File::from(fd))
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| EngineError::internal(format!("blocking task failed: {e}")))?
}

/// Copies a sandbox file or directory tree to `dst` on the host, writing
/// at most `max_bytes` (file contents plus `ENTRY_COST` per entry).
/// Returns the number of file bytes copied.
///
/// Each file contributes at most the size the sandbox reported for it (a
/// file that grows, or is swapped for a device, while it is copied is cut
/// at that size); files the sandbox reports as anything but a regular
/// file, directory or symlink are skipped.
pub async fn copy_to_host(c: &AgentClient, src: &str, dst: &Path, max_bytes: u64) -> Result<u64> {
    let info = stat(c, src).await?;
    let name = dst
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| EngineError::invalid(format!("bad destination {}", dst.display())))?
        .to_string();
    let pfd = {
        let dst = dst.to_path_buf();
        Arc::new(blocking(move || Ok(open_host_parent(&dst)?.0)).await?)
    };
    let mut total = 0u64;
    // What the copy costs the host: file bytes plus ENTRY_COST per entry,
    // so a tree of a million empty files or links is bounded too.
    let mut charged = 0u64;
    // Explicit stack instead of recursion: (sandbox path, info, parent fd, name).
    let mut work = vec![(src.to_string(), info, pfd, name)];
    let mut pending = Pending::default();
    while let Some((spath, info, dirfd, name)) = work.pop() {
        pending.done(&spath);
        let size = if info.kind == FileKind::File {
            info.size
        } else {
            0
        };
        let cost = size.saturating_add(ENTRY_COST);
        if cost > max_bytes.saturating_sub(charged) {
            return Err(size_limit(format!(
                "copying {spath} ({size} bytes) would pass the {max_bytes}-byte cap of this copy"
            )));
        }
        charged += cost;
        match info.kind {
            FileKind::File => {
                total += copy_file_out(c, &spath, dirfd, name, info.mode, info.size).await?;
            }
            FileKind::Dir => {
                let mode = (info.mode & 0o7777) | 0o700;
                let dfd = {
                    let name = name.clone();
                    Arc::new(blocking(move || mkdirat_dir(dirfd.as_raw_fd(), &name, mode)).await?)
                };
                for e in read_dir(c, &spath).await? {
                    let n = entry_name(&e.name)?.to_string();
                    let child = format!("{}/{}", spath.trim_end_matches('/'), n);
                    pending.add(&child)?;
                    work.push((child, e, dfd.clone(), n));
                }
            }
            FileKind::Symlink => {
                let target = info.link_target.clone().unwrap_or_default();
                blocking(move || symlinkat(&target, dirfd.as_raw_fd(), &name)).await?;
            }
            FileKind::Other => {}
        }
    }
    Ok(total)
}

async fn copy_file_out(
    c: &AgentClient,
    spath: &str,
    dirfd: Arc<OwnedFd>,
    name: String,
    mode: u32,
    size: u64,
) -> Result<u64> {
    let reader = open(c, spath).await?;
    let mut file = blocking(move || create_host_file(dirfd.as_raw_fd(), &name, mode)).await?;
    let mut total = 0u64;
    let mut buf = vec![0u8; lockbox_protocol::DATA_CHUNK];
    while total < size {
        let want = buf.len().min((size - total) as usize);
        let n = reader.read(&mut buf[..want]).await?;
        if n == 0 {
            break;
        }
        total += n as u64;
        let chunk = buf;
        let (f, b) = blocking(move || {
            use std::io::Write;
            let mut f = file;
            f.write_all(&chunk[..n])
                .map_err(|e| EngineError::io("write host file", e))?;
            Ok((f, chunk))
        })
        .await?;
        file = f;
        buf = b;
    }
    Ok(total)
}

/// A host entry opened for copying into the sandbox.
enum HostEntry {
    Dir(OwnedFd, u32),
    /// A regular file, its size when opened and its mode.
    File(std::fs::File, u64, u32),
    Symlink(OsString),
    /// Devices, FIFOs, sockets: never opened for reading.
    Other,
}

/// Opens `name` in `dir` without following it. A regular file is opened
/// `O_NONBLOCK|O_NOCTTY` and checked again on the open fd, so an entry
/// swapped for a FIFO or device after the first look is neither waited
/// on nor read.
fn open_entry(dir: RawFd, name: &OsStr) -> Result<HostEntry> {
    let c = cstr_os(name)?;
    let what = || Path::new(name).display().to_string();
    let st = lstat_at(dir, &c).map_err(|e| EngineError::io(what(), e))?;
    let mode = st.st_mode & 0o7777;
    let open = |flags: i32| {
        // SAFETY: openat relative to a dir fd we hold, never following.
        own(
            unsafe {
                libc::openat(
                    dir,
                    c.as_ptr(),
                    flags | libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NOCTTY,
                )
            },
            what(),
        )
    };
    if is_kind(&st, libc::S_IFLNK) {
        let mut buf = vec![0u8; libc::PATH_MAX as usize];
        // SAFETY: readlinkat relative to a dir fd we hold into a local buffer.
        let n = unsafe { libc::readlinkat(dir, c.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            return Err(last_err(what()));
        }
        buf.truncate(n as usize);
        Ok(HostEntry::Symlink(OsString::from_vec(buf)))
    } else if is_kind(&st, libc::S_IFDIR) {
        let fd = open(libc::O_RDONLY | libc::O_DIRECTORY)?;
        Ok(HostEntry::Dir(fd, mode))
    } else if is_kind(&st, libc::S_IFREG) {
        let fd = open(libc::O_RDONLY | libc::O_NONBLOCK)?;
        let st = fstat(fd.as_raw_fd())?;
        if !is_kind(&st, libc::S_IFREG) {
            return Ok(HostEntry::Other);
        }
        Ok(HostEntry::File(
            std::fs::File::from(fd),
            st.st_size as u64,
            st.st_mode & 0o7777,
        ))
    } else {
        Ok(HostEntry::Other)
    }
}

/// The names in an open directory (without `.` and `..`); more than `max`
/// is a size-limit error, so a directory a sandbox filled with millions of
/// links is never held in memory whole.
fn list_dir(dir: RawFd, max: usize) -> Result<Vec<OsString>> {
    // SAFETY: fdopendir takes its own duplicate of our fd; readdir's
    // entries are copied out before closedir frees them.
    unsafe {
        let dup = libc::fcntl(dir, libc::F_DUPFD_CLOEXEC, 0);
        if dup < 0 {
            return Err(last_err("dup"));
        }
        // A fresh open file description would share our offset; rewind so
        // the listing is complete however the fd was used before.
        libc::lseek(dup, 0, libc::SEEK_SET);
        let d = libc::fdopendir(dup);
        if d.is_null() {
            libc::close(dup);
            return Err(last_err("fdopendir"));
        }
        let mut out = Vec::new();
        loop {
            *libc::__errno_location() = 0;
            let e = libc::readdir64(d);
            if e.is_null() {
                let err = *libc::__errno_location();
                libc::closedir(d);
                if err != 0 {
                    return Err(EngineError::io(
                        "readdir",
                        std::io::Error::from_raw_os_error(err),
                    ));
                }
                return Ok(out);
            }
            let n = std::ffi::CStr::from_ptr((*e).d_name.as_ptr()).to_bytes();
            if n != b"." && n != b".." {
                if out.len() >= max {
                    libc::closedir(d);
                    return Err(size_limit(format!(
                        "a directory holds more than the {max} entries this copy may still list"
                    )));
                }
                out.push(OsString::from_vec(n.to_vec()));
            }
        }
    }
}

enum HostWork {
    /// An entry still to be looked at: (its directory, its name).
    At(Arc<OwnedFd>, OsString),
    Ready(HostEntry),
}

/// Copies a host file or directory tree into the sandbox at `dst`. Host
/// symlinks are recreated as symlinks (their targets are resolved inside the
/// sandbox, if ever). Returns the number of file bytes copied.
pub async fn copy_from_host(c: &AgentClient, src: &Path, dst: &str) -> Result<u64> {
    check_path(dst)?;
    let top = {
        let src = src.to_path_buf();
        blocking(move || match open_host_parent(&src)? {
            (fd, Some(name)) => Ok(HostWork::At(Arc::new(fd), name)),
            // "/" itself: reopen it readable to list it.
            (_, None) => {
                let root = cstr("/")?;
                // SAFETY: plain open of a constant path.
                let fd = own(
                    unsafe {
                        libc::open(
                            root.as_ptr(),
                            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
                        )
                    },
                    "open /",
                )?;
                Ok(HostWork::Ready(HostEntry::Dir(fd, 0o755)))
            }
        })
        .await?
    };
    let mut total = 0;
    let mut work = vec![(top, dst.to_string())];
    let mut pending = Pending::default();
    while let Some((w, spath)) = work.pop() {
        pending.done(&spath);
        let entry = match w {
            HostWork::Ready(e) => e,
            HostWork::At(dir, name) => blocking(move || open_entry(dir.as_raw_fd(), &name)).await?,
        };
        match entry {
            HostEntry::Symlink(target) => symlink(c, &target.to_string_lossy(), &spath).await?,
            HostEntry::Dir(fd, mode) => {
                mkdir_all(c, &spath, mode | 0o700).await?;
                let fd = Arc::new(fd);
                let room = MAX_PENDING_ENTRIES.saturating_sub(pending.entries);
                let names = {
                    let fd = fd.clone();
                    blocking(move || list_dir(fd.as_raw_fd(), room)).await?
                };
                for n in names {
                    let child = format!("{}/{}", spath.trim_end_matches('/'), n.to_string_lossy());
                    pending.add(&child)?;
                    work.push((HostWork::At(fd.clone(), n), child));
                }
            }
            HostEntry::File(f, size, mode) => {
                total += copy_file_in(c, f, size, &spath, mode).await?;
            }
            HostEntry::Other => {}
        }
    }
    Ok(total)
}

/// Sends at most `size` bytes (the size when the file was opened) of an
/// open host file.
async fn copy_file_in(
    c: &AgentClient,
    mut file: std::fs::File,
    size: u64,
    spath: &str,
    mode: u32,
) -> Result<u64> {
    let w = create(c, spath, mode).await?;
    let mut buf = vec![0u8; lockbox_protocol::DATA_CHUNK];
    let mut left = size;
    while left > 0 {
        let want = buf.len().min(left as usize);
        let (f, b, n) = blocking(move || {
            use std::io::Read;
            let n = file
                .read(&mut buf[..want])
                .map_err(|e| EngineError::io("read host file", e))?;
            Ok((file, buf, n))
        })
        .await?;
        file = f;
        buf = b;
        if n == 0 {
            break;
        }
        left -= n as u64;
        w.write_all(&buf[..n]).await?;
    }
    w.finish().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listings_waiting_to_be_copied_are_bounded() {
        let d = tempfile::tempdir().unwrap();
        for i in 0..50 {
            std::fs::write(d.path().join(format!("f{i}")), "").unwrap();
        }
        let f = std::fs::File::open(d.path()).unwrap();
        assert_eq!(list_dir(f.as_raw_fd(), 50).unwrap().len(), 50);
        let e = list_dir(f.as_raw_fd(), 49).unwrap_err();
        assert_eq!(e.code, ErrorCode::ResourceExhausted);
        let mut p = Pending::default();
        let long = "x".repeat(MAX_PENDING_PATH_BYTES / 2 + 1);
        p.add(&long).unwrap();
        assert_eq!(p.add(&long).unwrap_err().code, ErrorCode::ResourceExhausted);
        p.done(&long);
        p.done(&long);
        for i in 0..MAX_PENDING_ENTRIES {
            p.add(&format!("/{i}")).unwrap();
        }
        assert!(p.add("/one-more").is_err());
    }

    #[test]
    fn entry_names_cannot_address_other_dirs() {
        for bad in ["", ".", "..", "a/b", "../x"] {
            assert!(entry_name(bad).is_err());
        }
        entry_name("ok.txt").unwrap();
    }

    #[test]
    fn host_side_creation_never_follows_symlinks() {
        let d = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), d.path().join("evil")).unwrap();
        std::os::unix::fs::symlink(outside.path().join("f"), d.path().join("evilfile")).unwrap();
        let dfd = open_host_dir(d.path()).unwrap();
        // A directory entry that is a symlink is refused, not entered.
        assert!(mkdirat_dir(dfd.as_raw_fd(), "evil", 0o755).is_err());
        // A file entry that is a symlink is refused, not written through.
        assert!(openat(
            dfd.as_raw_fd(),
            "evilfile",
            libc::O_WRONLY | libc::O_CREAT,
            0o644
        )
        .is_err());
        assert!(!outside.path().join("f").exists());
        // Symlinks are recreated as links.
        symlinkat("/etc/passwd", dfd.as_raw_fd(), "link").unwrap();
        assert_eq!(
            std::fs::read_link(d.path().join("link")).unwrap(),
            Path::new("/etc/passwd")
        );
    }

    #[test]
    fn host_paths_through_a_symlink_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::create_dir(outside.path().join("sub")).unwrap();
        std::os::unix::fs::symlink(outside.path(), d.path().join("link")).unwrap();
        // Control: the same directory named without the link opens.
        open_host_dir(&outside.path().join("sub")).unwrap();
        let e = open_host_dir(&d.path().join("link/sub")).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidArgument, "{e}");
        assert!(e.message.contains("symlink"), "{e}");
        assert!(open_host_dir(Path::new("/tmp/../etc")).is_err());
    }

    #[test]
    fn host_entries_are_opened_without_following() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("f"), b"hello").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", d.path().join("l")).unwrap();
        let fifo = cstr(&d.path().join("p").to_string_lossy()).unwrap();
        // SAFETY: mkfifo of a fresh path in our temp dir.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
        let (pfd, name) = open_host_parent(d.path()).unwrap();
        let HostEntry::Dir(dfd, _) = open_entry(pfd.as_raw_fd(), &name.unwrap()).unwrap() else {
            panic!("a directory");
        };
        let mut names = list_dir(dfd.as_raw_fd(), usize::MAX).unwrap();
        names.sort();
        assert_eq!(names, ["f", "l", "p"]);
        match open_entry(dfd.as_raw_fd(), OsStr::new("f")).unwrap() {
            HostEntry::File(_, size, _) => assert_eq!(size, 5),
            _ => panic!("f is a regular file"),
        }
        match open_entry(dfd.as_raw_fd(), OsStr::new("l")).unwrap() {
            HostEntry::Symlink(t) => assert_eq!(t, "/etc/passwd"),
            _ => panic!("l must stay a symlink"),
        }
        // A FIFO is neither opened nor waited on.
        assert!(matches!(
            open_entry(dfd.as_raw_fd(), OsStr::new("p")).unwrap(),
            HostEntry::Other
        ));
    }

    #[test]
    fn host_files_are_replaced_not_written_through() {
        let d = tempfile::tempdir().unwrap();
        let victim = d.path().join("victim");
        std::fs::write(&victim, b"keep").unwrap();
        std::fs::hard_link(&victim, d.path().join("out")).unwrap();
        let dfd = open_host_dir(d.path()).unwrap();
        {
            use std::io::Write;
            let mut f = create_host_file(dfd.as_raw_fd(), "out", 0o644).unwrap();
            f.write_all(b"new").unwrap();
        }
        assert_eq!(std::fs::read(&victim).unwrap(), b"keep");
        assert_eq!(std::fs::read(d.path().join("out")).unwrap(), b"new");
    }

    #[test]
    fn volume_host_paths_without_links_only() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("real")).unwrap();
        std::os::unix::fs::symlink(d.path().join("real"), d.path().join("link")).unwrap();
        let real = d.path().join("real");
        let p = host_path_without_links(&format!("{}/./", real.display())).unwrap();
        assert_eq!(p, real);
        for bad in ["link", "link/", "real/../link"] {
            let e = host_path_without_links(&format!("{}/{bad}", d.path().display()));
            assert!(e.is_err(), "{bad}");
        }
        assert!(host_path_without_links("relative").is_err());
    }
}
