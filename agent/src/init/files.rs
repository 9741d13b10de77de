//! File operations. They run in the agent, whose root and mount namespace
//! are the sandbox's: every path, symlink and `..` resolves inside the
//! sandbox, and /proc shows only the sandbox's processes, so no path can
//! name a host file.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::Path;

use lockbox_protocol::{
    stream, ErrorCode, FileInfo, FileKind, Frame, Message, WireError, DATA_CHUNK,
};

use super::conn::{Conn, Input, OpIo};

/// Bytes of stdin credit collected before a Credit frame goes out.
pub const CREDIT_BATCH: usize = 1 << 20;

pub fn wire(e: io::Error, what: &str) -> WireError {
    let code = e
        .raw_os_error()
        .map(ErrorCode::from_errno)
        .unwrap_or(ErrorCode::Internal);
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
pub fn simple(msg: Message) -> Message {
    match run_simple(msg) {
        Ok(m) => m,
        Err(e) => Message::Error(e),
    }
}

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
            for e in fs::read_dir(p).map_err(|e| wire(e, &path))? {
                let e = e.map_err(|e| wire(e, &path))?;
                let name = e.file_name().to_string_lossy().into_owned();
                if let Ok(i) = info(name, &e.path()) {
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
                // remove_dir_all does not follow symlinks.
                Ok(m) if m.is_dir() => fs::remove_dir_all(p).map_err(|e| wire(e, &path))?,
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

pub async fn read_file(conn: &Conn, id: u32, path: &str, io: &OpIo) {
    let file = check_path(path).and_then(|p| {
        let f = fs::File::open(p).map_err(|e| wire(e, path))?;
        if f.metadata().map(|m| m.is_dir()).unwrap_or(false) {
            return Err(WireError::new(
                ErrorCode::InvalidArgument,
                format!("{path} is a directory"),
            ));
        }
        Ok(f)
    });
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

pub async fn write_file(conn: &Conn, id: u32, path: &str, mode: u32, mut io: OpIo) {
    let file = check_path(path).and_then(|p| {
        fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(if mode == 0 { 0o644 } else { mode & 0o777 })
            .open(p)
            .map_err(|e| wire(e, path))
    });
    let mut f = match file {
        Ok(f) => f,
        Err(e) => return conn.error(id, e),
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
