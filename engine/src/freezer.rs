//! Pause / Resume: every process of a sandbox, its PID 1 (the agent)
//! included, stopped by the cgroup freezer. v2: `cgroup.freeze` and the
//! `frozen` key of `cgroup.events`; v1: `freezer.state` in the freezer
//! hierarchy's directory, which the helper makes for this only.
//!
//! Because the agent is frozen too, a call that needs it (exec, file
//! calls) would wait forever: `check_not_paused` refuses those at once
//! with `failed_precondition` instead. Removal paths thaw first
//! (`thaw_for_removal`): a v1-frozen task does not act on SIGKILL until
//! thawed. Rootless without a delegated freezer there is no directory to
//! write: Pause is `unsupported`, naming why.
//!
//! Pause/Resume and a snapshot's freeze share one per-sandbox state (a
//! user pause flag and a count of snapshot holds) under one lock: the
//! sandbox thaws only when it is neither paused by the user nor held by a
//! snapshot. So a Pause during a snapshot stays in force after it, and
//! two concurrent snapshots do not thaw each other; a Resume during a
//! snapshot takes effect when the snapshot ends.

use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use lockbox_protocol::{CgroupPaths, ErrorCode};

use crate::error::{EngineError, Result};
use crate::sandbox::Sandbox;

/// How long a freeze may take before Pause gives up and thaws again. Tasks
/// in uninterruptible sleep (a slow disk, a FUSE call) delay it.
pub const FREEZE_TIMEOUT: Duration = Duration::from_secs(5);

/// The directory and the kind of freezer it offers.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Freezer {
    V2(PathBuf),
    V1(PathBuf),
}

/// Only cgroup dirs the engine could have made (`…/lockbox/<id>`) are
/// written: a damaged state file must not point the freezer at a host
/// cgroup.
fn owned(dir: &str) -> Option<PathBuf> {
    let p = Path::new(dir);
    // `Path::starts_with` compares components without resolving `..`:
    // `/sys/fs/cgroup/../../x/lockbox/y` would pass it.
    let mut comps = p.components();
    if comps.next() != Some(Component::RootDir) || !comps.all(|c| matches!(c, Component::Normal(_)))
    {
        return None;
    }
    let parent = p.parent()?;
    (p.starts_with("/sys/fs/cgroup") && parent.file_name()? == "lockbox").then(|| p.to_path_buf())
}

/// The sandbox's freezer, if its cgroup has one.
pub fn of(c: &CgroupPaths) -> Option<Freezer> {
    let dirs = c
        .dirs
        .iter()
        .chain(c.memory.iter())
        .filter_map(|d| owned(d));
    for d in dirs {
        if c.version == 2 && d.join("cgroup.freeze").exists() {
            return Some(Freezer::V2(d));
        }
        if d.join("freezer.state").exists() {
            return Some(Freezer::V1(d));
        }
    }
    None
}

impl Freezer {
    fn write(&self, frozen: bool) -> std::io::Result<()> {
        match self {
            Freezer::V2(d) => {
                std::fs::write(d.join("cgroup.freeze"), if frozen { "1" } else { "0" })
            }
            Freezer::V1(d) => std::fs::write(
                d.join("freezer.state"),
                if frozen { "FROZEN" } else { "THAWED" },
            ),
        }
    }

    /// Whether every task has stopped (not merely asked to).
    pub fn is_frozen(&self) -> std::io::Result<bool> {
        match self {
            Freezer::V2(d) => {
                let ev = std::fs::read_to_string(d.join("cgroup.events"))?;
                Ok(ev.lines().any(|l| l.trim() == "frozen 1"))
            }
            Freezer::V1(d) => {
                Ok(std::fs::read_to_string(d.join("freezer.state"))?.trim() == "FROZEN")
            }
        }
    }

    /// Asked to freeze, whether or not it has finished (v1 FREEZING too).
    fn is_requested(&self) -> bool {
        match self {
            Freezer::V2(d) => {
                std::fs::read_to_string(d.join("cgroup.freeze")).is_ok_and(|s| s.trim() == "1")
            }
            Freezer::V1(d) => {
                std::fs::read_to_string(d.join("freezer.state")).is_ok_and(|s| s.trim() != "THAWED")
            }
        }
    }

    /// Freezes and waits (bounded) until every task is stopped; on timeout
    /// it thaws again so a failed Pause leaves the sandbox running.
    pub fn freeze(&self) -> Result<()> {
        self.write(true).map_err(|e| io("freeze", e))?;
        let start = Instant::now();
        loop {
            match self.is_frozen() {
                Ok(true) => return Ok(()),
                Ok(false) => {}
                Err(e) => {
                    let _ = self.write(false);
                    return Err(io("read freezer state", e));
                }
            }
            if start.elapsed() > FREEZE_TIMEOUT {
                let _ = self.write(false);
                return Err(EngineError::new(
                    ErrorCode::Timeout,
                    format!(
                        "sandbox did not freeze within {:?} (a task in uninterruptible sleep?); it was thawed again",
                        FREEZE_TIMEOUT
                    ),
                ));
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }

    pub fn thaw(&self) -> Result<()> {
        self.write(false).map_err(|e| io("thaw", e))
    }
}

fn io(what: &str, e: std::io::Error) -> EngineError {
    let code = e
        .raw_os_error()
        .map(ErrorCode::from_errno)
        .unwrap_or(ErrorCode::Internal);
    EngineError::new(code, format!("cgroup freezer: {what}: {e}"))
}

fn freezer_of(sb: &Sandbox) -> Result<Freezer> {
    of(&sb.state().report.cgroup).ok_or_else(|| {
        EngineError::new(
            ErrorCode::Unsupported,
            format!(
                "sandbox {:?} has no cgroup freezer (native backend: pause needs a v2 cgroup or a v1 freezer hierarchy this user may write; rootless without cgroup delegation has neither)",
                sb.name
            ),
        )
    })
}

/// Who wants a sandbox frozen (see the module doc).
#[derive(Default)]
struct Holds {
    /// None until first seen: then taken from the cgroup (a pause made by
    /// an earlier engine in this process's place).
    user_paused: Option<bool>,
    snapshots: u32,
}

type Shared = Arc<Mutex<Holds>>;

fn holds_of(f: &Freezer) -> Shared {
    static ALL: OnceLock<Mutex<HashMap<Freezer, Shared>>> = OnceLock::new();
    let mut all = ALL
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    all.entry(f.clone()).or_default().clone()
}

fn lock(s: &Shared) -> std::sync::MutexGuard<'_, Holds> {
    s.lock().unwrap_or_else(|e| e.into_inner())
}

impl Holds {
    fn user_paused(&mut self, f: &Freezer) -> bool {
        let first = self.snapshots == 0;
        *self
            .user_paused
            .get_or_insert_with(|| first && f.is_requested())
    }
}

/// Pause: every process of the sandbox stops; CPU use drops to zero.
pub fn pause(sb: &Sandbox) -> Result<()> {
    if !sb.is_running() {
        return Err(EngineError::new(
            ErrorCode::Unavailable,
            format!("sandbox {:?} is not running", sb.name),
        ));
    }
    let f = freezer_of(sb)?;
    let h = holds_of(&f);
    let mut h = lock(&h);
    if h.snapshots == 0 {
        f.freeze()?;
    }
    h.user_paused = Some(true);
    Ok(())
}

/// Resume: the processes continue where they stopped (at the end of a
/// snapshot in progress). Resuming a running sandbox is a no-op.
pub fn resume(sb: &Sandbox) -> Result<()> {
    let f = freezer_of(sb)?;
    let h = holds_of(&f);
    let mut h = lock(&h);
    h.user_paused = Some(false);
    if h.snapshots == 0 {
        f.thaw()?;
    }
    Ok(())
}

/// A snapshot's freeze: released (thawing unless paused or held by
/// another snapshot) on drop.
pub struct SnapshotHold {
    f: Freezer,
    h: Shared,
}

/// Freezes the sandbox for a snapshot (blocking, bounded by
/// [`FREEZE_TIMEOUT`]). None: no freezer.
pub fn hold_for_snapshot(c: &CgroupPaths) -> Result<Option<SnapshotHold>> {
    let Some(f) = of(c) else { return Ok(None) };
    let h = holds_of(&f);
    {
        let mut g = lock(&h);
        let paused = g.user_paused(&f);
        if g.snapshots == 0 && !paused {
            f.freeze()?;
        }
        g.snapshots += 1;
    }
    Ok(Some(SnapshotHold { f, h }))
}

impl Drop for SnapshotHold {
    fn drop(&mut self) {
        let mut g = lock(&self.h);
        g.snapshots -= 1;
        if g.snapshots == 0 && g.user_paused != Some(true) {
            let _ = self.f.thaw();
        }
    }
}

/// Whether the sandbox is paused (asked to freeze), for Info and the call
/// guard. One small cgroup file read.
pub fn is_paused(c: &CgroupPaths) -> bool {
    of(c).is_some_and(|f| f.is_requested())
}

/// Calls that need the agent are refused on a paused sandbox instead of
/// waiting for a Resume that may never come.
pub fn check_not_paused(sb: &Sandbox) -> Result<()> {
    if is_paused(&sb.state().report.cgroup) {
        return Err(EngineError::new(
            ErrorCode::Unavailable,
            format!("sandbox {:?} is paused: Resume it first", sb.name),
        ));
    }
    Ok(())
}

/// Before a stop, kill or cgroup removal: frozen tasks must run to act on
/// the shutdown request or on SIGKILL.
pub fn thaw_for_removal(c: &CgroupPaths) {
    if let Some(f) = of(c) {
        let _ = f.thaw();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_lockbox_dirs_are_freezers() {
        assert!(owned("/sys/fs/cgroup/freezer/lockbox/abc").is_some());
        assert!(owned("/sys/fs/cgroup/freezer").is_none());
        assert!(owned("/sys/fs/cgroup/freezer/user.slice").is_none());
        assert!(owned("/tmp/lockbox/abc").is_none());
        // Control: the `..` path does pass `starts_with` and the parent
        // name test, so only the component check stops it.
        let sneaky = "/sys/fs/cgroup/../../tmp/lockbox/abc";
        assert!(Path::new(sneaky).starts_with("/sys/fs/cgroup"));
        assert!(owned(sneaky).is_none());
        assert!(owned("/sys/fs/cgroup/x/lockbox/abc").is_some());
    }
}
