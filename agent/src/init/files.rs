//! File operations. They run in the agent, whose root and mount namespace
//! are the sandbox's: every path, symlink and `..` resolves inside the
//! sandbox, and /proc shows only the sandbox's processes, so no path can
//! name a host file.
//!
//! Each operation runs on a blocking thread that first takes the credentials
//! of the user it acts for (the sandbox's configured user unless the engine
//! wrapped the request in `AsUser`). Credentials are per thread in the
//! kernel, so a link a less-privileged user planted is followed with that
//! user's rights only, and a call that blocks (or is slow) holds its own
//! thread, never the agent's loop. (A fresh thread per call was measured
//! at ~80 us more per call; switching a pool thread costs a few syscalls.)

use std::ffi::{CStr, CString};
use std::fs;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::Path;
use std::sync::OnceLock;

use lockbox_protocol::{
    stream, ErrorCode, FileInfo, FileKind, Frame, Message, WireError, DATA_CHUNK, MAX_PAYLOAD,
};

use super::conn::{Conn, Input, OpIo};

/// Who a file operation acts as.
#[derive(Debug, Clone, Copy)]
pub struct Creds {
    pub uid: u32,
    pub gid: u32,
}

/// Rootless sandboxes map one id and cannot call setgroups.
fn groups_denied() -> bool {
    static DENIED: OnceLock<bool> = OnceLock::new();
    *DENIED.get_or_init(|| {
        fs::read_to_string("/proc/self/setgroups")
            .map(|s| s.trim() == "deny")
            .unwrap_or(false)
    })
}

/// Credential system calls on the calling thread only: the libc wrappers
/// would change every thread of the process.
mod thread_creds {
    use std::io;

    const KEEP: libc::c_long = -1;

    fn cvt(r: libc::c_long, what: &str) -> io::Result<()> {
        if r != 0 {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(e.kind(), format!("{what}: {e}")));
        }
        Ok(())
    }

    /// Effective uid back to 0 (real and saved stay 0, so this is always
    /// allowed), which also restores the effective capabilities.
    pub fn root() -> io::Result<()> {
        // SAFETY: plain system call on this thread.
        cvt(
            unsafe { libc::syscall(libc::SYS_setresuid, KEEP, 0 as libc::c_long, KEEP) },
            "setresuid",
        )
    }

    pub fn set(uid: u32, gid: u32, groups: bool) -> io::Result<()> {
        root()?;
        // SAFETY: plain system calls on this thread, with a valid
        // one-element group list.
        unsafe {
            if groups {
                let g: libc::gid_t = gid;
                cvt(
                    libc::syscall(libc::SYS_setgroups, 1 as libc::c_long, &g as *const _),
                    "setgroups",
                )?;
            }
            cvt(
                libc::syscall(libc::SYS_setresgid, KEEP, gid as libc::c_long, KEEP),
                "setresgid",
            )?;
            cvt(
                libc::syscall(libc::SYS_setresuid, KEEP, uid as libc::c_long, KEEP),
                "setresuid",
            )
        }
    }
}

/// While alive, the thread acts as the user; dropping it returns the
/// thread to the agent's own identity (root), so the pool thread is clean
/// for whatever runs on it next. Every operation sets its user first
/// anyway, so a failed return can only leave a thread with less rights.
struct ActingAs;

impl ActingAs {
    fn enter(c: Creds) -> Result<ActingAs, WireError> {
        let guard = ActingAs;
        thread_creds::set(c.uid, c.gid, !groups_denied()).map_err(|e| {
            WireError::new(
                ErrorCode::PermissionDenied,
                format!("act as {}:{}: {e}", c.uid, c.gid),
            )
        })?;
        Ok(guard)
    }
}

impl Drop for ActingAs {
    fn drop(&mut self) {
        let _ = thread_creds::set(0, 0, !groups_denied());
    }
}

/// Runs `f` on a blocking thread acting as `creds`, and waits for it
/// without blocking the agent's loop: a call stuck in the kernel holds
/// its own thread only.
pub async fn as_user<T: Send + 'static>(
    creds: Creds,
    f: impl FnOnce() -> Result<T, WireError> + Send + 'static,
) -> Result<T, WireError> {
    tokio::task::spawn_blocking(move || {
        let _as = ActingAs::enter(creds)?;
        f()
    })
    .await
    .unwrap_or_else(|e| {
        Err(WireError::new(
            ErrorCode::Internal,
            format!("file operation failed: {e}"),
        ))
    })
}

/// Bytes of stdin credit collected before a Credit frame goes out.
pub const CREDIT_BATCH: usize = 1 << 20;

pub fn wire(e: io::Error, what: &str) -> WireError {
    let code = match (e.raw_os_error(), e.kind()) {
        (Some(n), _) => ErrorCode::from_errno(n),
        // std's own checks (an interior NUL in a path or argument).
        (None, io::ErrorKind::InvalidInput) => ErrorCode::InvalidArgument,
        _ => ErrorCode::Internal,
    };
    WireError::new(code, format!("{what}: {e}"))
}

fn check_path(p: &str) -> Result<&Path, WireError> {
    if !p.starts_with('/') || p.contains('\0') {
        return Err(WireError::new(
            ErrorCode::InvalidArgument,
            format!("path {p:?} must be absolute"),
        ));
    }
    Ok(Path::new(p))
}

fn info(name: String, path: &Path) -> io::Result<FileInfo> {
    let m = fs::symlink_metadata(path)?;
    let ft = m.file_type();
    let kind = if ft.is_symlink() {
        FileKind::Symlink
    } else if ft.is_dir() {
        FileKind::Dir
    } else if ft.is_file() {
        FileKind::File
    } else {
        FileKind::Other
    };
    Ok(FileInfo {
        name,
        kind,
        size: m.len(),
        mode: m.mode() & 0o7777,
        mtime: m.mtime(),
        link_target: if ft.is_symlink() {
            fs::read_link(path)
                .ok()
                .map(|t| t.to_string_lossy().into_owned())
        } else {
            None
        },
    })
}

/// The one-shot operations: one request, one reply.
pub async fn simple(creds: Creds, msg: Message) -> Message {
    match as_user(creds, move || run_simple(msg)).await {
        Ok(m) => m,
        Err(e) => Message::Error(e),
    }
}

/// Whether `m` is a file request (what `AsUser` may wrap).
pub fn is_file_request(m: &Message) -> bool {
    m.is_file_request()
}

/// Per-entry overhead of a `FileInfo` in JSON, beyond its strings.
const ENTRY_JSON: usize = 96;

fn run_simple(msg: Message) -> Result<Message, WireError> {
    match msg {
        Message::Stat { path } => {
            let p = check_path(&path)?;
            Ok(Message::StatResult(
                info(path.clone(), p).map_err(|e| wire(e, &path))?,
            ))
        }
        Message::ReadDir { path } => {
            let p = check_path(&path)?;
            let mut entries = Vec::new();
            // The reply is one control frame: a directory whose listing
            // would not fit is an error, not a reply the engine must drop
            // along with the connection.
            let mut bytes = 64usize;
            for e in fs::read_dir(p).map_err(|e| wire(e, &path))? {
                let e = e.map_err(|e| wire(e, &path))?;
                let name = e.file_name().to_string_lossy().into_owned();
                if let Ok(i) = info(name, &e.path()) {
                    bytes += ENTRY_JSON
                        + 2 * (i.name.len() + i.link_target.as_ref().map_or(0, |t| t.len()));
                    if bytes > MAX_PAYLOAD {
                        return Err(WireError::new(
                            ErrorCode::ResourceExhausted,
                            format!("{path}: too many entries to list in one reply"),
                        ));
                    }
                    entries.push(i);
                }
            }
            entries.sort_by(|a, b| a.name.cmp(&b.name));
            Ok(Message::DirEntries { entries })
        }
        Message::MkdirAll { path, mode } => {
            let p = check_path(&path)?;
            fs::DirBuilder::new()
                .recursive(true)
                .mode(if mode == 0 { 0o755 } else { mode & 0o777 })
                .create(p)
                .map_err(|e| wire(e, &path))?;
            Ok(Message::Ok)
        }
        Message::Remove { path } => {
            let p = check_path(&path)?;
            let m = fs::symlink_metadata(p).map_err(|e| wire(e, &path))?;
            if m.is_dir() {
                fs::remove_dir(p)
            } else {
                fs::remove_file(p)
            }
            .map_err(|e| wire(e, &path))?;
            Ok(Message::Ok)
        }
        Message::RemoveAll { path } => {
            let p = check_path(&path)?;
            if path.trim_end_matches('/').is_empty() {
                return Err(WireError::new(
                    ErrorCode::InvalidArgument,
                    "refusing to remove /",
                ));
            }
            match fs::symlink_metadata(p) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(wire(e, &path)),
                Ok(m) if m.is_dir() => remove_tree(p).map_err(|e| wire(e, &path))?,
                Ok(_) => fs::remove_file(p).map_err(|e| wire(e, &path))?,
            }
            Ok(Message::Ok)
        }
        Message::Rename { from, to } => {
            fs::rename(check_path(&from)?, check_path(&to)?)
                .map_err(|e| wire(e, &format!("rename {from} -> {to}")))?;
            Ok(Message::Ok)
        }
        Message::Symlink { target, link } => {
            std::os::unix::fs::symlink(&target, check_path(&link)?).map_err(|e| wire(e, &link))?;
            Ok(Message::Ok)
        }
        other => Err(WireError::new(
            ErrorCode::InvalidArgument,
            format!("not a request: {:?}", std::mem::discriminant(&other)),
        )),
    }
}

/// Opens `path` without blocking (a FIFO or device must not hold the
/// thread in open) and keeps it only if it is a regular file; the caller
/// then gets a blocking descriptor.
fn open_regular(path: &str, flags: libc::c_int, mode: u32) -> Result<fs::File, WireError> {
    let p = check_path(path)?;
    let c = CString::new(p.as_os_str().as_encoded_bytes())
        .map_err(|_| WireError::new(ErrorCode::InvalidArgument, "path contains NUL"))?;
    // SAFETY: open with a valid C string; the fd is owned by the File.
    let fd = unsafe {
        libc::open(
            c.as_ptr(),
            flags | libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC,
            mode as libc::c_uint,
        )
    };
    if fd < 0 {
        return Err(wire(io::Error::last_os_error(), path));
    }
    // SAFETY: fd was just opened and is owned by nobody else.
    let f = unsafe { fs::File::from_raw_fd(fd) };
    let m = f.metadata().map_err(|e| wire(e, path))?;
    if !m.file_type().is_file() {
        let what = if m.is_dir() {
            "a directory"
        } else {
            "not a regular file"
        };
        return Err(WireError::new(
            ErrorCode::InvalidArgument,
            format!("{path} is {what}"),
        ));
    }
    // SAFETY: fcntl on an fd we own.
    unsafe {
        let fl = libc::fcntl(f.as_raw_fd(), libc::F_GETFL);
        libc::fcntl(f.as_raw_fd(), libc::F_SETFL, fl & !libc::O_NONBLOCK);
    }
    Ok(f)
}

pub async fn read_file(conn: &Conn, id: u32, path: &str, creds: Creds, io: &OpIo) {
    let p = path.to_string();
    let file = as_user(creds, move || open_regular(&p, libc::O_RDONLY, 0)).await;
    let mut f = match file {
        Ok(f) => f,
        Err(e) => return conn.error(id, e),
    };
    conn.reply(id, &Message::Ok);
    // The disk is read on a blocking thread a few chunks ahead, so reading
    // the file and writing the socket overlap.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<io::Result<Vec<u8>>>(READ_AHEAD);
    let disk = tokio::task::spawn_blocking(move || loop {
        let r = match read_chunk(&mut f, DATA_CHUNK) {
            Ok(b) if b.is_empty() => return,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            r => r,
        };
        let stop = r.is_err();
        if tx.blocking_send(r).is_err() || stop {
            return;
        }
    });
    let w = &io.windows[stream::STDOUT as usize];
    while let Some(item) = rx.recv().await {
        match item {
            Ok(buf) => {
                w.acquire_at_least(buf.len()).await;
                w.spend(buf.len());
                conn.send(Frame::data(id, stream::STDOUT, buf));
            }
            Err(e) => {
                conn.error(id, wire(e, path));
                break;
            }
        }
    }
    drop(rx);
    let _ = disk.await;
    conn.send(Frame::eof(id, stream::STDOUT));
}

/// Chunks read ahead of (or queued behind) the socket per file stream.
const READ_AHEAD: usize = 8;

/// One read into a fresh, unzeroed buffer (the chunk becomes the frame's
/// payload without another copy).
fn read_chunk(f: &mut fs::File, n: usize) -> io::Result<Vec<u8>> {
    use std::os::fd::AsRawFd;
    let mut v: Vec<u8> = Vec::with_capacity(n);
    // SAFETY: reading into the vector's spare capacity, then setting the
    // length to what the kernel filled.
    let r = unsafe { libc::read(f.as_raw_fd(), v.as_mut_ptr().cast(), n) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    unsafe { v.set_len(r as usize) };
    Ok(v)
}

pub async fn write_file(conn: &Conn, id: u32, path: &str, mode: u32, creds: Creds, mut io: OpIo) {
    let p = path.to_string();
    let mode = if mode == 0 { 0o644 } else { mode & 0o777 };
    // Truncated only once it is known to be a regular file.
    let file = as_user(creds, move || {
        let f = open_regular(&p, libc::O_WRONLY | libc::O_CREAT, mode)?;
        f.set_len(0).map_err(|e| wire(e, &p))?;
        Ok(f)
    })
    .await;
    let mut f = match file {
        Ok(f) => f,
        Err(e) => {
            // Still take (and acknowledge) what the engine sends, so its
            // writer never waits on credit for a failed operation.
            conn.error(id, e);
            return drain(conn, id, io).await;
        }
    };
    // Written on a blocking thread so receiving and writing overlap; the
    // bounded queue is the backpressure (credit goes out once a chunk is
    // queued).
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(READ_AHEAD);
    let p = path.to_string();
    let disk = tokio::task::spawn_blocking(move || -> Result<u64, WireError> {
        let mut total = 0u64;
        while let Some(d) = rx.blocking_recv() {
            f.write_all(&d).map_err(|e| wire(e, &p))?;
            total += d.len() as u64;
        }
        Ok(total)
    });
    let mut tx = Some(tx);
    let mut pending = 0usize;
    while let Some(inp) = io.input.recv().await {
        match inp {
            Input::Data(d) => {
                let n = d.len();
                if let Some(t) = &tx {
                    if t.send(d).await.is_err() {
                        // The writer failed: drain and discard, report below.
                        tx = None;
                    }
                }
                // Credit in batches: one frame per MiB instead of per chunk,
                // but never hold it back while the engine may be waiting.
                pending += n;
                if pending >= CREDIT_BATCH || io.input.is_empty() {
                    conn.send(Frame::credit(id, stream::STDIN, pending as u32));
                    pending = 0;
                }
            }
            Input::Eof => break,
            Input::Abort(e) => {
                drop(tx);
                let _ = disk.await;
                conn.error(id, e);
                return drain(conn, id, io).await;
            }
        }
    }
    drop(tx);
    let failed = match disk.await {
        Ok(Ok(total)) => {
            return conn.reply(id, &Message::Written { bytes: total });
        }
        Ok(Err(e)) => Some(e),
        Err(e) => Some(WireError::new(ErrorCode::Internal, format!("writer: {e}"))),
    };
    if let Some(e) = failed {
        conn.error(id, e);
    }
}

/// Acknowledges and drops the input of an operation that already ended.
async fn drain(conn: &Conn, id: u32, mut io: OpIo) {
    while let Ok(inp) = io.input.try_recv() {
        if let Input::Data(d) = inp {
            conn.send(Frame::credit(id, stream::STDIN, d.len() as u32));
        }
    }
}

fn cvt_fd(fd: libc::c_int) -> io::Result<OwnedFd> {
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh fd owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn open_dir_at(dir: libc::c_int, name: &CStr, follow: bool) -> io::Result<OwnedFd> {
    let nofollow = if follow { 0 } else { libc::O_NOFOLLOW };
    // SAFETY: openat with a valid C string.
    cvt_fd(unsafe {
        libc::openat(
            dir,
            name.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC | nofollow,
        )
    })
}

/// Removes everything below `path` and then `path` itself, never
/// following a symlink below it. Iterative, with one directory open at a
/// time and the names of the directories above kept in memory: the
/// sandbox can make a tree deeper than any stack or fd limit (std's
/// `remove_dir_all` recurses and would overflow the agent's stack).
fn remove_tree(path: &Path) -> io::Result<()> {
    let top = CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let mut cur = open_dir_at(libc::AT_FDCWD, &top, false)?;
    let mut above: Vec<CString> = Vec::new();
    loop {
        match clear_files(&cur)? {
            Some(sub) => {
                let child = open_dir_at(cur.as_raw_fd(), &sub, false)?;
                above.push(sub);
                cur = child;
            }
            None => {
                let Some(name) = above.pop() else { break };
                let parent = open_dir_at(cur.as_raw_fd(), c"..", true)?;
                // SAFETY: unlinkat with a valid C string.
                if unsafe { libc::unlinkat(parent.as_raw_fd(), name.as_ptr(), libc::AT_REMOVEDIR) }
                    != 0
                {
                    return Err(io::Error::last_os_error());
                }
                cur = parent;
            }
        }
    }
    drop(cur);
    fs::remove_dir(path)
}

/// Unlinks every non-directory in `dir` until it meets a subdirectory,
/// whose name it returns; `None` once the directory is empty.
fn clear_files(dir: &OwnedFd) -> io::Result<Option<CString>> {
    // A fresh open of ".": its own offset, so every pass starts at the top.
    let fd = open_dir_at(dir.as_raw_fd(), c".", false)?;
    // SAFETY: fdopendir takes ownership of the fd; closedir below frees
    // both on every path.
    let d = unsafe { libc::fdopendir(fd.into_raw_fd()) };
    if d.is_null() {
        return Err(io::Error::last_os_error());
    }
    let dfd = dir.as_raw_fd();
    let result = loop {
        // SAFETY: errno is thread-local; readdir on a valid stream.
        let e = unsafe {
            *libc::__errno_location() = 0;
            libc::readdir64(d)
        };
        if e.is_null() {
            let err = io::Error::last_os_error();
            break if err.raw_os_error().unwrap_or(0) == 0 {
                Ok(None)
            } else {
                Err(err)
            };
        }
        // SAFETY: readdir returned a valid entry with a NUL-terminated name.
        let (name, dtype) = unsafe { (CStr::from_ptr((*e).d_name.as_ptr()), (*e).d_type) };
        if name == c"." || name == c".." {
            continue;
        }
        let is_dir = if dtype == libc::DT_UNKNOWN {
            // SAFETY: fstatat into a zeroed stat, without following links.
            let mut st: libc::stat64 = unsafe { std::mem::zeroed() };
            if unsafe { libc::fstatat64(dfd, name.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW) }
                != 0
            {
                break Err(io::Error::last_os_error());
            }
            st.st_mode & libc::S_IFMT == libc::S_IFDIR
        } else {
            dtype == libc::DT_DIR
        };
        if is_dir {
            break Ok(Some(name.to_owned()));
        }
        // SAFETY: unlinkat with a valid C string.
        if unsafe { libc::unlinkat(dfd, name.as_ptr(), 0) } != 0 {
            let err = io::Error::last_os_error();
            // Gone meanwhile is as good as removed.
            if err.raw_os_error() != Some(libc::ENOENT) {
                break Err(err);
            }
        }
    };
    // SAFETY: d came from fdopendir and is closed once.
    unsafe { libc::closedir(d) };
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEPTH: usize = 2000;
    /// Far less than DEPTH frames of a recursive walk need.
    const SMALL_STACK: usize = 64 << 10;
    const CONTROL: &str = "init::files::tests::control_std_remove_dir_all_on_a_small_stack";

    /// A chain `top/d/d/...` DEPTH deep, built with relative calls so no
    /// path gets long; with a file and a dangling link at the bottom.
    fn deep_tree(base: &Path) -> std::path::PathBuf {
        let top = base.join("top");
        fs::create_dir(&top).unwrap();
        let mut cur = fs::File::open(&top).unwrap();
        for _ in 0..DEPTH {
            // SAFETY: mkdirat/openat with valid C strings.
            unsafe {
                assert_eq!(libc::mkdirat(cur.as_raw_fd(), c"d".as_ptr(), 0o755), 0);
                let fd = libc::openat(cur.as_raw_fd(), c"d".as_ptr(), libc::O_RDONLY);
                assert!(fd >= 0);
                cur = fs::File::from_raw_fd(fd);
            }
        }
        // SAFETY: as above.
        unsafe {
            let fd = libc::openat(
                cur.as_raw_fd(),
                c"f".as_ptr(),
                libc::O_CREAT | libc::O_WRONLY,
                0o644,
            );
            assert!(fd >= 0);
            libc::close(fd);
            assert_eq!(
                libc::symlinkat(c"/nowhere".as_ptr(), cur.as_raw_fd(), c"l".as_ptr()),
                0
            );
        }
        top
    }

    fn on_small_stack<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        std::thread::Builder::new()
            .stack_size(SMALL_STACK)
            .spawn(f)
            .unwrap()
            .join()
            .unwrap()
    }

    #[test]
    fn remove_tree_handles_a_tree_deeper_than_the_stack() {
        let dir = tempfile::tempdir().unwrap();
        let top = deep_tree(dir.path());
        let t = top.clone();
        on_small_stack(move || remove_tree(&t)).unwrap();
        assert!(!top.exists());
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);

        // Control, in a child process: std's recursive removal of the same
        // tree on the same stack dies, so the depth above is a real test.
        let top = deep_tree(dir.path());
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--ignored", "--exact", CONTROL, "--test-threads=1"])
            .env("LOCKBOX_REMOVE_CONTROL", &top)
            .output()
            .unwrap();
        assert!(
            !out.status.success(),
            "std::fs::remove_dir_all survived: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("overflow"),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        remove_tree(&top).unwrap();
    }

    /// Run only by the test above, in its own process.
    #[test]
    #[ignore]
    fn control_std_remove_dir_all_on_a_small_stack() {
        let Some(top) = std::env::var_os("LOCKBOX_REMOVE_CONTROL") else {
            return;
        };
        on_small_stack(move || fs::remove_dir_all(top)).unwrap();
    }
}
