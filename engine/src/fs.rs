//! Files inside a sandbox (every path is resolved by the agent inside the
//! sandbox root) and copies between the sandbox and the host.
//!
//! Copies to the host never follow a name the sandbox chose: each entry is
//! created relative to an already-open destination directory with
//! `openat`/`mkdirat`/`symlinkat` and `O_NOFOLLOW`, so a symlink made inside
//! the sandbox is recreated as a symlink, never written through.

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

use lockbox_protocol::{FileInfo, FileKind, Message};
use tokio::sync::{mpsc, Mutex};

use crate::client::AgentClient;
use crate::error::{EngineError, Result};
use crate::streams::{demux, StreamReader, StreamWriter};

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
    let mut d = demux(op, &[lockbox_protocol::stream::STDOUT]);
    match d.control.recv().await {
        Some(Ok(Message::Ok)) => Ok(d.readers.pop().expect("one reader")),
        Some(Ok(m)) => Err(unexpected("read_file", m)),
        Some(Err(e)) => Err(e),
        None => Err(EngineError::unavailable("sandbox went away")),
    }
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

fn cstr(s: &str) -> Result<CString> {
    CString::new(s).map_err(|_| EngineError::invalid("path contains a NUL byte"))
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

fn open_dir(path: &Path) -> Result<OwnedFd> {
    let c = cstr(&path.to_string_lossy())?;
    // SAFETY: plain open of a NUL-terminated path.
    let fd = unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_DIRECTORY | libc::O_RDONLY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(last_err(format!("open {}", path.display())));
    }
    // SAFETY: fd was just returned by open and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
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
    if fd < 0 {
        return Err(last_err(format!("open {name}")));
    }
    // SAFETY: fresh fd from openat.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
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

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| EngineError::internal(format!("blocking task failed: {e}")))?
}

/// Copies a sandbox file or directory tree to `dst` on the host.
/// Returns the number of file bytes copied.
pub async fn copy_to_host(c: &AgentClient, src: &str, dst: &Path) -> Result<u64> {
    let info = stat(c, src).await?;
    let parent = dst
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = dst
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| EngineError::invalid(format!("bad destination {}", dst.display())))?
        .to_string();
    let pfd = {
        let parent = parent.to_path_buf();
        std::sync::Arc::new(blocking(move || open_dir(&parent)).await?)
    };
    let mut total = 0;
    // Explicit stack instead of recursion: (sandbox path, info, parent fd, name).
    let mut work = vec![(src.to_string(), info, pfd, name)];
    while let Some((spath, info, dirfd, name)) = work.pop() {
        match info.kind {
            FileKind::File => {
                total += copy_file_out(c, &spath, dirfd, name, info.mode).await?;
            }
            FileKind::Dir => {
                let mode = (info.mode & 0o7777) | 0o700;
                let dfd = {
                    let name = name.clone();
                    std::sync::Arc::new(
                        blocking(move || mkdirat_dir(dirfd.as_raw_fd(), &name, mode)).await?,
                    )
                };
                for e in read_dir(c, &spath).await? {
                    let n = entry_name(&e.name)?.to_string();
                    let child = format!("{}/{}", spath.trim_end_matches('/'), n);
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
    dirfd: std::sync::Arc<OwnedFd>,
    name: String,
    mode: u32,
) -> Result<u64> {
    let reader = open(c, spath).await?;
    let fd = blocking(move || {
        openat(
            dirfd.as_raw_fd(),
            &name,
            libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC,
            mode & 0o777,
        )
    })
    .await?;
    let mut file = std::fs::File::from(fd);
    let mut total = 0u64;
    let mut buf = vec![0u8; lockbox_protocol::DATA_CHUNK];
    loop {
        let n = reader.read(&mut buf).await?;
        if n == 0 {
            return Ok(total);
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
}

/// Copies a host file or directory tree into the sandbox at `dst`. Host
/// symlinks are recreated as symlinks (their targets are resolved inside the
/// sandbox, if ever). Returns the number of file bytes copied.
pub async fn copy_from_host(c: &AgentClient, src: &Path, dst: &str) -> Result<u64> {
    check_path(dst)?;
    let mut total = 0;
    let mut work = vec![(src.to_path_buf(), dst.to_string())];
    while let Some((hpath, spath)) = work.pop() {
        let hp = hpath.clone();
        let meta = blocking(move || {
            std::fs::symlink_metadata(&hp).map_err(|e| EngineError::io(hp.display(), e))
        })
        .await?;
        use std::os::unix::fs::PermissionsExt;
        let mode = meta.permissions().mode() & 0o7777;
        let ft = meta.file_type();
        if ft.is_symlink() {
            let hp = hpath.clone();
            let target = blocking(move || {
                std::fs::read_link(&hp).map_err(|e| EngineError::io(hp.display(), e))
            })
            .await?;
            symlink(c, &target.to_string_lossy(), &spath).await?;
        } else if ft.is_dir() {
            mkdir_all(c, &spath, mode | 0o700).await?;
            let hp = hpath.clone();
            let names = blocking(move || {
                let mut v = Vec::new();
                for e in std::fs::read_dir(&hp).map_err(|e| EngineError::io(hp.display(), e))? {
                    let e = e.map_err(|e| EngineError::io(hp.display(), e))?;
                    v.push(e.file_name());
                }
                Ok(v)
            })
            .await?;
            for n in names {
                let ns = n.to_string_lossy().into_owned();
                work.push((
                    hpath.join(&n),
                    format!("{}/{}", spath.trim_end_matches('/'), ns),
                ));
            }
        } else if ft.is_file() {
            total += copy_file_in(c, hpath, &spath, mode).await?;
        }
    }
    Ok(total)
}

async fn copy_file_in(
    c: &AgentClient,
    hpath: std::path::PathBuf,
    spath: &str,
    mode: u32,
) -> Result<u64> {
    let hp = hpath.clone();
    let mut file =
        blocking(move || std::fs::File::open(&hp).map_err(|e| EngineError::io(hp.display(), e)))
            .await?;
    let w = create(c, spath, mode).await?;
    let mut buf = vec![0u8; lockbox_protocol::DATA_CHUNK];
    loop {
        let (f, b, n) = blocking(move || {
            use std::io::Read;
            let n = file
                .read(&mut buf)
                .map_err(|e| EngineError::io("read host file", e))?;
            Ok((file, buf, n))
        })
        .await?;
        file = f;
        buf = b;
        if n == 0 {
            break;
        }
        w.write_all(&buf[..n]).await?;
    }
    w.finish().await
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let dfd = open_dir(d.path()).unwrap();
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
}
