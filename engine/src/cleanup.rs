//! Finding and removing what dead sandboxes left behind: cgroups, helper
//! processes and state directories. Runs when an engine starts, so a host
//! that was SIGKILLed leaks nothing past the next start.

use std::path::{Path, PathBuf};
use std::time::Duration;

use lockbox_protocol::CgroupPaths;

use crate::paths::Layout;
use crate::state::{read_json, DirLock, SandboxState};

/// Only directories under the cgroup mount are ever touched.
const CGROUP_ROOT: &str = "/sys/fs/cgroup/";

/// Kills every process in a cgroup directory tree, then removes the tree
/// bottom-up. Best effort: returns whether everything is gone.
pub fn remove_cgroup_tree(dir: &Path) -> bool {
    // Every process in the tree gets SIGKILL: only a sandbox's own
    // directory (`.../lockbox/<id>`) may be named, never a hierarchy's root
    // or a cgroup of the host's.
    let in_lockbox = dir.parent().and_then(Path::file_name) == Some("lockbox".as_ref());
    if !dir.starts_with(CGROUP_ROOT)
        || !in_lockbox
        || dir.components().any(|c| c.as_os_str() == "..")
    {
        return false;
    }
    if !dir.exists() {
        return true;
    }
    for attempt in 0..50 {
        kill_tree(dir);
        if rmdir_tree(dir) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(if attempt < 10 { 5 } else { 20 }));
    }
    false
}

fn kill_tree(dir: &Path) {
    if let Ok(procs) = std::fs::read_to_string(dir.join("cgroup.procs")) {
        for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
            if pid > 1 {
                // SAFETY: plain kill(2) of a process in the sandbox's cgroup.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                }
            }
        }
    }
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                kill_tree(&e.path());
            }
        }
    }
}

fn rmdir_tree(dir: &Path) -> bool {
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                rmdir_tree(&e.path());
            }
        }
    }
    std::fs::remove_dir(dir).is_ok() || !dir.exists()
}

/// Every cgroup directory of a sandbox: `dirs` (one per hierarchy its
/// processes joined) and the named controllers. State written before `dirs`
/// existed names only memory, cpu and pids; a cpuacct hierarchy mounted
/// apart from cpu then holds the same path under its own mount.
pub fn cgroup_dirs(c: &CgroupPaths) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = Vec::new();
    let mut add = |p: PathBuf| {
        if !out.contains(&p) {
            out.push(p);
        }
    };
    for p in c
        .dirs
        .iter()
        .chain([&c.memory, &c.cpu, &c.pids].into_iter().flatten())
    {
        add(PathBuf::from(p));
    }
    if c.version == 1 && c.dirs.is_empty() {
        if let Some(cpu) = &c.cpu {
            if let Some(rest) = cpu.strip_prefix("/sys/fs/cgroup/cpu/") {
                add(Path::new("/sys/fs/cgroup/cpuacct").join(rest));
            }
        }
    }
    out
}

pub fn remove_cgroups(c: &CgroupPaths) -> bool {
    crate::freezer::thaw_for_removal(c);
    let mut all = true;
    for d in cgroup_dirs(c) {
        all &= remove_cgroup_tree(&d);
    }
    all
}

/// Removes a directory tree, including overlay work dirs the kernel made
/// with mode 000.
pub fn remove_dir_all_forced(dir: &Path) -> std::io::Result<()> {
    crate::tree::remove_tree(dir)
}

/// What a cleanup pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CleanupReport {
    pub removed: Vec<String>,
    pub stopped_detached: Vec<String>,
}

/// One pass over `sandboxes/`. A sandbox whose lock is held belongs to a
/// live engine and is left alone. Otherwise: detached and alive -> kept;
/// detached and dead -> its cgroups go, its files stay (it is listed as
/// stopped); not detached -> its owner is gone, so the helper (if any) is
/// killed and everything is removed.
pub fn cleanup_stale(layout: &Layout) -> CleanupReport {
    let mut rep = CleanupReport::default();
    let Ok(rd) = std::fs::read_dir(layout.sandboxes()) else {
        return rep;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let dir = e.path();
        if name.starts_with('.') {
            // A rename-to-trash that a crash interrupted.
            if name.starts_with(".trash-") {
                let _ = remove_dir_all_forced(&dir);
            }
            continue;
        }
        let Ok(Some(_lock)) = DirLock::try_acquire(&dir.join("lock")) else {
            continue;
        };
        let state: Option<SandboxState> = match read_json(&dir.join("state.json")) {
            Ok(st) => Some(st),
            Err(_) if !dir.join("state.json").exists() => None,
            // Present but unreadable: damaged by something else. Its
            // writable layer may be all a detached sandbox's user has, so
            // nothing is deleted; `list` shows it as damaged and only an
            // explicit remove deletes it.
            Err(_) => continue,
        };
        match state {
            Some(st) if st.detached => {
                if !st.helper_alive() && remove_cgroups(&st.report.cgroup) {
                    rep.stopped_detached.push(name);
                }
            }
            Some(st) => {
                crate::backend::process::kill_verified(st.helper_pid, st.helper_start);
                remove_cgroups(&st.report.cgroup);
                if remove_dir_all_forced(&dir).is_ok() {
                    rep.removed.push(name);
                }
            }
            None => {
                // Creation never finished (no state written) and nobody holds
                // the lock: a crash mid-create.
                if remove_dir_all_forced(&dir).is_ok() {
                    rep.removed.push(name);
                }
            }
        }
    }
    rep
}

/// What crashed installs and forks left in the image store: unclaimed
/// temp dirs, incomplete image dirs, and fork images no sandbox uses
/// (images/src/reclaim.rs). Runs after `cleanup_stale`, so the sandboxes
/// a crashed engine owned no longer count as users. Best effort: a store
/// busy in another process is left to that process's next open.
pub fn reclaim_store(layout: &Layout) -> Option<lockbox_images::ReclaimReport> {
    if !layout.home.join("images").is_dir() {
        return None;
    }
    let store = lockbox_images::ImageStore::open(&layout.home).ok()?;
    let in_use = crate::image_ops::in_use(&layout.sandboxes(), store.root());
    let report = store.reclaim_interrupted(&in_use).ok();
    crate::image_ops::prune_vm_cache(&layout.home, &store);
    report
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{process_start_time, write_json};

    #[test]
    fn removes_dead_keeps_locked_and_live_detached() {
        let d = tempfile::tempdir().unwrap();
        let l = Layout::new(d.path().to_path_buf());
        let mk = |n: &str, st: Option<SandboxState>| {
            let dir = l.sandbox(n);
            std::fs::create_dir_all(dir.join("upper")).unwrap();
            if let Some(st) = st {
                write_json(&dir.join("state.json"), &st).unwrap();
            }
        };
        let me = std::process::id();
        let alive = SandboxState {
            helper_pid: me,
            helper_start: process_start_time(me).unwrap(),
            detached: true,
            ..Default::default()
        };
        let dead = SandboxState {
            helper_pid: me,
            helper_start: 1,
            ..Default::default()
        };
        mk("live-detached", Some(alive));
        mk(
            "dead-detached",
            Some(SandboxState {
                detached: true,
                ..dead.clone()
            }),
        );
        mk("dead", Some(dead));
        mk("half-made", None);
        mk("owned", None);
        let _held = DirLock::try_acquire(&l.sandbox("owned").join("lock"))
            .unwrap()
            .unwrap();

        let rep = cleanup_stale(&l);
        let mut removed = rep.removed.clone();
        removed.sort();
        assert_eq!(removed, vec!["dead".to_string(), "half-made".to_string()]);
        assert_eq!(rep.stopped_detached, vec!["dead-detached".to_string()]);
        assert!(l.sandbox("live-detached").exists());
        assert!(l.sandbox("dead-detached").exists());
        assert!(l.sandbox("owned").exists());
        assert!(!l.sandbox("dead").exists());
    }

    #[test]
    fn a_damaged_state_file_keeps_the_sandbox_and_lists_it() {
        let d = tempfile::tempdir().unwrap();
        let engine = crate::Engine::with_home(d.path().to_path_buf()).unwrap();
        let l = Layout::new(std::fs::canonicalize(d.path()).unwrap());
        let dir = l.sandbox("damaged");
        std::fs::create_dir_all(dir.join("upper")).unwrap();
        std::fs::write(dir.join("upper/precious"), "work").unwrap();
        // Truncated, as a full disk or a crashed editor leaves it.
        std::fs::write(dir.join("state.json"), "{\"helper_pid\": 12").unwrap();
        std::fs::write(dir.join("config.json"), "{}").unwrap();
        let rep = cleanup_stale(&l);
        assert!(rep.removed.is_empty(), "{rep:?}");
        assert_eq!(
            std::fs::read_to_string(dir.join("upper/precious")).unwrap(),
            "work"
        );
        let list = engine.list().unwrap();
        let e = list.iter().find(|i| i.name == "damaged").expect("listed");
        assert_eq!(e.status, "damaged");
        assert!(e
            .error
            .as_deref()
            .unwrap_or("")
            .contains("state cannot be read"));
        // Control: the same directory without a state file is a crash
        // mid-create, which cleanup does remove.
        std::fs::remove_file(dir.join("state.json")).unwrap();
        let rep = cleanup_stale(&l);
        assert_eq!(rep.removed, vec!["damaged".to_string()]);
        assert!(!dir.exists());
    }

    #[test]
    fn never_touches_paths_outside_the_cgroup_mount() {
        let d = tempfile::tempdir().unwrap();
        assert!(!remove_cgroup_tree(d.path()));
        assert!(d.path().exists());
        assert!(!remove_cgroup_tree(Path::new("/sys/fs/cgroup/../../tmp")));
        // Only a sandbox's own `lockbox/<id>` directory: a missing one is
        // "already gone" (true), anything else is refused (false).
        assert!(remove_cgroup_tree(Path::new(
            "/sys/fs/cgroup/memory/lockbox/no-such-sandbox-dir"
        )));
        assert!(!remove_cgroup_tree(Path::new(
            "/sys/fs/cgroup/memory/no-such-cgroup-dir"
        )));
    }

    #[test]
    fn cgroup_dirs_cover_every_hierarchy() {
        let p = |s: &str| Some(s.to_string());
        let v1 = CgroupPaths {
            version: 1,
            memory: p("/sys/fs/cgroup/memory/lockbox/a"),
            cpu: p("/sys/fs/cgroup/cpu/lockbox/a"),
            pids: p("/sys/fs/cgroup/pids/lockbox/a"),
            dirs: vec![
                "/sys/fs/cgroup/memory/lockbox/a".into(),
                "/sys/fs/cgroup/cpu/lockbox/a".into(),
                "/sys/fs/cgroup/cpuacct/x/lockbox/a".into(),
                "/sys/fs/cgroup/pids/lockbox/a".into(),
            ],
        };
        let mut got = cgroup_dirs(&v1);
        got.sort();
        let mut want: Vec<PathBuf> = v1.dirs.iter().map(PathBuf::from).collect();
        want.sort();
        assert_eq!(got, want);
        // State from before `dirs`: the separate cpuacct mount is derived.
        let old = CgroupPaths {
            dirs: Vec::new(),
            ..v1.clone()
        };
        assert!(cgroup_dirs(&old).contains(&PathBuf::from("/sys/fs/cgroup/cpuacct/lockbox/a")));
        // v2: one directory.
        let v2 = CgroupPaths {
            version: 2,
            memory: p("/sys/fs/cgroup/unified/lockbox/b"),
            cpu: p("/sys/fs/cgroup/unified/lockbox/b"),
            pids: p("/sys/fs/cgroup/unified/lockbox/b"),
            dirs: vec!["/sys/fs/cgroup/unified/lockbox/b".into()],
        };
        assert_eq!(cgroup_dirs(&v2).len(), 1);
    }
}
