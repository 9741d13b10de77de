//! On-disk state: atomic JSON files, the per-sandbox lock, and the record of
//! which helper process runs a sandbox.

use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::error::{EngineError, Result};

/// How hard a write tries to survive a machine crash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// temp + fsync + rename + fsync(dir): survives power loss.
    Durable,
    /// temp + rename: never torn for readers and survives the writing
    /// process dying, but not a power loss. For state that a reboot makes
    /// meaningless anyway (a non-detached sandbox dies with its host
    /// process); a torn or missing file after a power loss is cleaned up
    /// like any leftover. fsync costs ~6 ms here, most of a create.
    ProcessCrashSafe,
}

/// Writes `bytes` to `path` so readers see the old or the new file, never a
/// torn one: temp file in the same dir, rename; `Durable` adds an fsync of
/// the file before and of the dir after.
pub fn atomic_write_with(path: &Path, bytes: &[u8], d: Durability) -> Result<()> {
    let durable = d == Durability::Durable;
    let dir = path
        .parent()
        .ok_or_else(|| EngineError::invalid(format!("{} has no parent", path.display())))?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = dir.join(format!(".{name}.tmp.{}", crate::names::new_id()));
    let res = (|| {
        // 0600 whatever the umask: state holds the sandbox's environment
        // (secrets passed with WithEnv among it). O_EXCL|O_NOFOLLOW: the
        // name is fresh, so anything already there is not ours to write.
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&tmp)
            .map_err(|e| EngineError::io(tmp.display(), e))?;
        f.write_all(bytes)
            .and_then(|_| if durable { f.sync_all() } else { Ok(()) })
            .map_err(|e| EngineError::io(tmp.display(), e))?;
        std::fs::rename(&tmp, path).map_err(|e| EngineError::io(path.display(), e))?;
        if durable {
            if let Ok(d) = File::open(dir) {
                let _ = d.sync_all();
            }
        }
        Ok(())
    })();
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    res
}

pub fn write_json<T: Serialize>(path: &Path, v: &T) -> Result<()> {
    write_json_with(path, v, Durability::Durable)
}

pub fn write_json_with<T: Serialize>(path: &Path, v: &T, d: Durability) -> Result<()> {
    let bytes = serde_json::to_vec_pretty(v)
        .map_err(|e| EngineError::internal(format!("encode {}: {e}", path.display())))?;
    atomic_write_with(path, &bytes, d)
}

pub fn read_json<T: DeserializeOwned>(path: &Path) -> Result<T> {
    let bytes = std::fs::read(path).map_err(|e| EngineError::io(path.display(), e))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| EngineError::internal(format!("corrupt {}: {e}", path.display())))
}

/// An exclusive flock on a sandbox's `lock` file. The engine process that
/// owns a non-detached sandbox holds it for the sandbox's lifetime, so a
/// cleanup pass in another process can tell "owner alive" from "leftover".
/// The fd is close-on-exec: helpers never inherit it.
#[derive(Debug)]
pub struct DirLock {
    _file: File,
}

impl DirLock {
    /// Tries once; `Ok(None)` when another holder has it.
    pub fn try_acquire(path: &Path) -> Result<Option<DirLock>> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| EngineError::io(path.display(), e))?;
        // SAFETY: flock on an fd we own.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc == 0 {
            return Ok(Some(DirLock { _file: file }));
        }
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
            Ok(None)
        } else {
            Err(EngineError::io(format!("lock {}", path.display()), e))
        }
    }
}

/// An exclusive flock on `<home>/locks/sandbox-<name>.lock`, held across
/// the check-remove-create of a name (and across a removal), so two
/// processes never both find the name free, or both remove what the other
/// just made. The file is unlinked by its holder before the lock goes, and
/// a new holder checks that the path still names the inode it locked, so
/// lock files never pile up for generated names and never split one name
/// into two locks.
#[derive(Debug)]
pub struct NameLock {
    file: File,
    path: std::path::PathBuf,
}

impl NameLock {
    /// Tries once; `Ok(None)` while another holder (any process, or another
    /// open in this one) has it.
    pub fn try_acquire(path: &Path) -> Result<Option<NameLock>> {
        use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
        loop {
            // O_NOFOLLOW: a planted symlink is an error, never a lock on
            // (or the creation of) some other file.
            let file = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .read(true)
                .write(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW)
                .open(path)
                .map_err(|e| EngineError::io(path.display(), e))?;
            // SAFETY: flock on an fd we own.
            let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
            if rc != 0 {
                let e = std::io::Error::last_os_error();
                if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
                    return Ok(None);
                }
                return Err(EngineError::io(format!("lock {}", path.display()), e));
            }
            let held = file
                .metadata()
                .map_err(|e| EngineError::io(path.display(), e))?;
            match std::fs::symlink_metadata(path) {
                Ok(m) if m.dev() == held.dev() && m.ino() == held.ino() => {
                    return Ok(Some(NameLock {
                        file,
                        path: path.to_path_buf(),
                    }))
                }
                // The previous holder unlinked it after we opened it: that
                // inode locks nothing any more.
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(EngineError::io(path.display(), e)),
            }
        }
    }

    /// Waits until it has the lock; cancel by dropping the future.
    pub async fn acquire(path: &Path) -> Result<NameLock> {
        loop {
            if let Some(l) = Self::try_acquire(path)? {
                return Ok(l);
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }
}

impl Drop for NameLock {
    fn drop(&mut self) {
        // Unlinked while still locked: a waiter on this inode sees the path
        // gone (or naming a newer inode) and retries.
        let _ = std::fs::remove_file(&self.path);
        let _ = &self.file;
    }
}

/// What the engine records about a running sandbox (`state.json`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SandboxState {
    pub id: String,
    pub name: String,
    pub helper_pid: u32,
    /// The helper's start time in clock ticks since boot (from
    /// /proc/<pid>/stat), so a recycled pid is never mistaken for it.
    pub helper_start: u64,
    pub detached: bool,
    pub created_unix: i64,
    pub report: lockbox_protocol::SandboxReport,
}

/// Start time of a process (field 22 of /proc/<pid>/stat), None if gone.
pub fn process_start_time(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // comm may hold spaces and parens: fields start after the last ')'.
    let rest = &s[s.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?;
    if state == "Z" || state == "X" {
        return None;
    }
    // After ')' the fields are numbered from 3 (state); starttime is 22.
    fields.nth(22 - 4).and_then(|v| v.parse().ok())
}

impl SandboxState {
    /// Whether the helper recorded here still runs (and is the same process).
    pub fn helper_alive(&self) -> bool {
        self.helper_pid != 0 && process_start_time(self.helper_pid) == Some(self.helper_start)
    }
}

pub fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_and_leaves_no_temp() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("state.json");
        write_json(&p, &vec![1, 2, 3]).unwrap();
        write_json(&p, &vec![4]).unwrap();
        let v: Vec<i32> = read_json(&p).unwrap();
        assert_eq!(v, vec![4]);
        let names: Vec<_> = std::fs::read_dir(d.path()).unwrap().collect();
        assert_eq!(names.len(), 1);
    }

    #[test]
    fn corrupt_json_is_internal_not_panic() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("x.json");
        std::fs::write(&p, b"{nope").unwrap();
        let e = read_json::<SandboxState>(&p).unwrap_err();
        assert_eq!(e.code, lockbox_protocol::ErrorCode::Internal);
    }

    #[test]
    fn lock_is_exclusive_between_opens() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("lock");
        let a = DirLock::try_acquire(&p).unwrap();
        assert!(a.is_some());
        assert!(DirLock::try_acquire(&p).unwrap().is_none());
        drop(a);
        assert!(DirLock::try_acquire(&p).unwrap().is_some());
    }

    #[test]
    fn name_lock_is_exclusive_and_leaves_no_file() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("sandbox-a.lock");
        let a = NameLock::try_acquire(&p).unwrap().unwrap();
        assert!(NameLock::try_acquire(&p).unwrap().is_none());
        drop(a);
        assert!(!p.exists(), "lock file left behind");
        let b = NameLock::try_acquire(&p).unwrap();
        assert!(b.is_some());
    }

    /// A waiter that opened the file before the holder unlinked it must not
    /// think it holds the name while a newer holder has the new file.
    #[test]
    fn name_lock_survives_unlink_races() {
        let d = tempfile::tempdir().unwrap();
        let p = std::sync::Arc::new(d.path().join("sandbox-a.lock"));
        let held = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (p, held) = (p.clone(), held.clone());
                std::thread::spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_time()
                        .build()
                        .unwrap();
                    for _ in 0..200 {
                        let l = rt.block_on(NameLock::acquire(&p)).unwrap();
                        let n = held.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        assert_eq!(n, 0, "two holders of one name");
                        std::thread::yield_now();
                        held.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                        drop(l);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
    }

    #[test]
    fn name_lock_refuses_a_symlink() {
        let d = tempfile::tempdir().unwrap();
        let target = d.path().join("elsewhere");
        let p = d.path().join("sandbox-a.lock");
        std::os::unix::fs::symlink(&target, &p).unwrap();
        assert!(NameLock::try_acquire(&p).is_err());
        assert!(!target.exists(), "followed the link");
    }

    #[test]
    fn own_process_is_alive_and_bogus_is_not() {
        let me = std::process::id();
        let st = SandboxState {
            helper_pid: me,
            helper_start: process_start_time(me).unwrap(),
            ..Default::default()
        };
        assert!(st.helper_alive());
        let wrong = SandboxState {
            helper_start: st.helper_start + 1,
            ..st.clone()
        };
        assert!(!wrong.helper_alive());
        assert!(process_start_time(u32::MAX - 1).is_none());
    }
}
