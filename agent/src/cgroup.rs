//! The sandbox's cgroup, made by the supervisor in the host's cgroup
//! namespace: v2 when a delegated hierarchy with the needed controllers is
//! usable, else v1 (memory, cpu, cpuacct, pids). Every limit that could not
//! be written ends up in the report with the reason.

use std::fs;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use lockbox_protocol::{CgroupPaths, Limits};

use crate::report::Report;

pub struct Cgroup {
    /// Every directory made, leaf first order does not matter (all leaves).
    dirs: Vec<PathBuf>,
    pub paths: CgroupPaths,
}

/// (controller list of the hierarchy, mount point) for every cgroup mount.
fn cgroup_mounts() -> Vec<(String, Vec<String>, PathBuf)> {
    let Ok(text) = fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for line in text.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let mut r = right.split(' ');
        let fstype = r.next().unwrap_or("");
        let _src = r.next();
        let opts: Vec<String> = r
            .next()
            .unwrap_or("")
            .split(',')
            .map(String::from)
            .collect();
        let mnt = left.split(' ').nth(4).unwrap_or("");
        if fstype == "cgroup" || fstype == "cgroup2" {
            out.push((fstype.to_string(), opts, PathBuf::from(mnt)));
        }
    }
    out
}

/// Our own cgroup path in the hierarchy whose /proc/self/cgroup key is `key`
/// ("" for v2, else the comma-joined controller list).
fn own_path(key: &str) -> Option<String> {
    let text = fs::read_to_string("/proc/self/cgroup").ok()?;
    text.lines().find_map(|l| {
        let mut it = l.splitn(3, ':');
        let _id = it.next()?;
        let ctrl = it.next()?;
        let path = it.next()?;
        (ctrl == key).then(|| path.to_string())
    })
}

fn join(mount: &Path, own: &str, id: &str) -> PathBuf {
    mount
        .join(own.trim_start_matches('/'))
        .join("lockbox")
        .join(id)
}

/// create_dir_all that survives a concurrent sandbox removing the shared
/// `lockbox` parent between our mkdirs (it removes it when it was the last).
fn make_dir(dir: &Path) -> io::Result<()> {
    let mut last = None;
    for _ in 0..5 {
        match fs::create_dir_all(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::other("cgroup dir vanished")))
}

fn write(dir: &Path, file: &str, value: &str) -> io::Result<()> {
    fs::write(dir.join(file), value)
        .map_err(|e| io::Error::new(e.kind(), format!("{}/{file}: {e}", dir.display())))
}

impl Cgroup {
    /// Makes the cgroup and writes the limits. Never fails: what could not
    /// be done is recorded in `report`.
    pub fn create(id: &str, limits: &Limits, report: &mut Report) -> Cgroup {
        match Self::try_v2(id, limits, report) {
            Some(c) => c,
            None => Self::v1(id, limits, report),
        }
    }

    fn try_v2(id: &str, limits: &Limits, report: &mut Report) -> Option<Cgroup> {
        let mounts = cgroup_mounts();
        let (_, _, mnt) = mounts.iter().find(|(t, _, _)| t == "cgroup2")?;
        let own = own_path("")?;
        let base = mnt.join(own.trim_start_matches('/'));
        let ctrls = fs::read_to_string(base.join("cgroup.controllers")).ok()?;
        let have: Vec<&str> = ctrls.split_whitespace().collect();
        if !["memory", "pids", "cpu"].iter().all(|c| have.contains(c)) {
            return None;
        }
        let parent = base.join("lockbox");
        fs::create_dir_all(&parent).ok()?;
        // Enabling controllers for children fails in a cgroup that itself
        // holds processes (v2's no-internal-process rule); then v2 is not
        // usable from here and v1 gets its chance.
        write(&base, "cgroup.subtree_control", "+memory +pids +cpu").ok()?;
        write(&parent, "cgroup.subtree_control", "+memory +pids +cpu").ok()?;
        let dir = parent.join(id);
        make_dir(&dir).ok()?;
        if let Some(m) = limits.memory_mib {
            let bytes = (m << 20).to_string();
            report.outcome("memory", write(&dir, "memory.max", &bytes));
            let _ = write(&dir, "memory.swap.max", "0");
        }
        if let Some(c) = limits.cpus {
            let quota = ((c * 100_000.0) as u64).max(1000);
            report.outcome("cpus", write(&dir, "cpu.max", &format!("{quota} 100000")));
        }
        if let Some(p) = limits.pids {
            report.outcome("pids", write(&dir, "pids.max", &p.to_string()));
        }
        let s = dir.to_string_lossy().into_owned();
        Some(Cgroup {
            dirs: vec![dir],
            paths: CgroupPaths {
                version: 2,
                memory: Some(s.clone()),
                cpu: Some(s.clone()),
                pids: Some(s.clone()),
                dirs: vec![s],
            },
        })
    }

    fn v1(id: &str, limits: &Limits, report: &mut Report) -> Cgroup {
        let mounts = cgroup_mounts();
        let mut cg = Cgroup {
            dirs: Vec::new(),
            paths: CgroupPaths::default(),
        };
        let mut errors = Vec::new();
        let mut make = |ctrl: &str| -> Option<PathBuf> {
            let (_, opts, mnt) = mounts
                .iter()
                .find(|(t, o, _)| t == "cgroup" && o.iter().any(|x| x == ctrl))?;
            let key: Vec<&str> = opts
                .iter()
                .map(String::as_str)
                .filter(|o| {
                    [
                        "cpu", "cpuacct", "memory", "pids", "cpuset", "blkio", "devices", "freezer",
                    ]
                    .contains(o)
                        || o.starts_with("name=")
                })
                .collect();
            let own = own_path(&key.join(","))?;
            let dir = join(mnt, &own, id);
            match make_dir(&dir) {
                Ok(()) => Some(dir),
                Err(e) => {
                    errors.push(format!("{ctrl}: cannot create {}: {e}", dir.display()));
                    None
                }
            }
        };
        let memory = make("memory");
        let cpu = make("cpu");
        let cpuacct = make("cpuacct");
        let pids = make("pids");
        // Only for Pause/Resume (the engine's freezer.rs): no limit lives here.
        let freezer = make("freezer");
        let reason = |what: &str| {
            if errors.is_empty() {
                format!("no usable cgroup v1 {what} hierarchy")
            } else {
                errors.join("; ")
            }
        };
        for d in [&memory, &cpu, &cpuacct, &pids, &freezer]
            .into_iter()
            .flatten()
        {
            if !cg.dirs.contains(d) {
                cg.dirs.push(d.clone());
            }
        }
        if let Some(m) = limits.memory_mib {
            match &memory {
                Some(d) => {
                    let bytes = (m << 20).to_string();
                    let r = write(d, "memory.limit_in_bytes", &bytes);
                    // memsw is only present with swap accounting; without it
                    // there is no swap to escape into on this kind of host.
                    if r.is_ok() && d.join("memory.memsw.limit_in_bytes").exists() {
                        let _ = write(d, "memory.memsw.limit_in_bytes", &bytes);
                    }
                    report.outcome("memory", r);
                }
                None => report.not("memory", reason("memory")),
            }
        }
        if let Some(c) = limits.cpus {
            match &cpu {
                Some(d) => {
                    let quota = ((c * 100_000.0) as u64).max(1000);
                    let r = write(d, "cpu.cfs_period_us", "100000")
                        .and_then(|_| write(d, "cpu.cfs_quota_us", &quota.to_string()));
                    report.outcome("cpus", r);
                }
                None => report.not("cpus", reason("cpu")),
            }
        }
        if let Some(p) = limits.pids {
            match &pids {
                Some(d) => report.outcome("pids", write(d, "pids.max", &p.to_string())),
                None => report.not("pids", reason("pids")),
            }
        }
        let s = |p: &Option<PathBuf>| p.as_ref().map(|p| p.to_string_lossy().into_owned());
        cg.paths = CgroupPaths {
            version: if cg.dirs.is_empty() { 0 } else { 1 },
            memory: s(&memory),
            // The cpu controller's dir; when cpuacct is a separate hierarchy
            // its dir is the same path under the cpuacct mount.
            cpu: s(&cpu).or(s(&cpuacct)),
            pids: s(&pids),
            dirs: cg
                .dirs
                .iter()
                .map(|d| d.to_string_lossy().into_owned())
                .collect(),
        };
        cg
    }

    /// Prepares the sandbox child to join the cgroup by itself (v1 only).
    ///
    /// Moving another process (`attach`, a cgroup.procs write) takes the
    /// kernel's global threadgroup lock, whose write side waits an RCU
    /// grace period: milliseconds, tens of them on a loaded host, on the
    /// path of every create. A thread that writes "0" to a v1 `tasks` file
    /// moves itself without that lock. The files are opened here, with the
    /// supervisor's credentials (the kernel checks the opener's), and the
    /// child, single-threaded as a clone of the single-threaded supervisor,
    /// writes them before it does anything else.
    ///
    /// None for v2 (cgroup.threads only moves threads inside a threaded
    /// subtree), or when a file cannot be opened: `attach` then does it.
    pub fn self_join(&self) -> Option<(SelfJoin, JoinOutcome)> {
        if self.paths.version != 1 || self.dirs.is_empty() {
            return None;
        }
        let tasks = self
            .dirs
            .iter()
            .map(|d| {
                fs::OpenOptions::new()
                    .write(true)
                    .custom_flags(libc::O_CLOEXEC)
                    .open(d.join("tasks"))
                    .map(OwnedFd::from)
            })
            .collect::<io::Result<Vec<_>>>()
            .ok()?;
        let (rd, wr) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).ok()?;
        Some((SelfJoin { tasks, errors: wr }, JoinOutcome { errors: rd }))
    }

    /// Moves `pid` into every directory of the cgroup.
    pub fn attach(&self, pid: libc::pid_t) -> io::Result<()> {
        for d in &self.dirs {
            write(d, "cgroup.procs", &pid.to_string())?;
        }
        Ok(())
    }

    /// Lets a paused sandbox (engine/src/freezer.rs) run again: a frozen
    /// task acts on SIGKILL only once thawed, so every teardown thaws.
    pub fn thaw(&self) {
        for d in &self.dirs {
            let _ = fs::write(d.join("cgroup.freeze"), "0");
            let _ = fs::write(d.join("freezer.state"), "THAWED");
        }
    }

    /// Removes the directories, waiting briefly for dying tasks to leave.
    pub fn remove(&self) {
        self.thaw();
        for d in &self.dirs {
            for _ in 0..200 {
                match fs::remove_dir(d) {
                    Ok(()) => break,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                    Err(_) => std::thread::sleep(std::time::Duration::from_millis(10)),
                }
            }
            if let Some(parent) = d.parent() {
                // Shared by all sandboxes: only goes when the last one does.
                let _ = fs::remove_dir(parent);
            }
        }
    }
}

/// The child's half of `Cgroup::self_join`.
pub struct SelfJoin {
    tasks: Vec<OwnedFd>,
    errors: OwnedFd,
}

impl SelfJoin {
    /// In the sandbox child, first thing: joins every hierarchy and closes
    /// the files (opened with host credentials, they must not reach
    /// anything of the sandbox). A failure goes to the supervisor, which
    /// reports the limits as not enforced, as when `attach` fails.
    pub fn join(self) {
        let mut failed = None;
        for fd in &self.tasks {
            // SAFETY: a one-byte write from a static buffer to our own fd.
            if unsafe { libc::write(fd.as_raw_fd(), b"0".as_ptr().cast(), 1) } != 1 {
                failed.get_or_insert_with(io::Error::last_os_error);
            }
        }
        drop(self.tasks);
        if let Some(e) = failed {
            let msg = format!("join cgroup: {e}");
            // SAFETY: a write from a live buffer to our own pipe.
            unsafe { libc::write(self.errors.as_raw_fd(), msg.as_ptr().cast(), msg.len()) };
        }
    }
}

/// The supervisor's half of `Cgroup::self_join`.
pub struct JoinOutcome {
    errors: OwnedFd,
}

impl JoinOutcome {
    /// What the child's join said (None: it joined). Returns once the
    /// child has joined or failed, or is gone.
    pub fn wait(self) -> Option<String> {
        let mut msg = Vec::new();
        // The child writes one short line at most.
        let _ = fs::File::from(self.errors).take(4096).read_to_end(&mut msg);
        (!msg.is_empty()).then(|| String::from_utf8_lossy(&msg).into_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The host's cgroup file of `pid`, one "id:controllers:path" a line.
    fn cgroup_of(pid: i32) -> String {
        fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap()
    }

    /// Every open fd of `pid` that names a cgroup `tasks` file.
    fn tasks_fds(pid: i32) -> Vec<String> {
        fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .filter_map(|e| fs::read_link(e.ok()?.path()).ok())
            .map(|p| p.to_string_lossy().into_owned())
            .filter(|p| p.ends_with("/tasks"))
            .collect()
    }

    /// Forks a child that joins (or not) and then waits to be killed; the
    /// checks run here, on the live child, from its /proc.
    fn child_after(join: Option<SelfJoin>) -> i32 {
        // SAFETY: the child makes system calls only (join allocates only
        // on failure) and waits in pause until it is killed.
        match unsafe { nix::unistd::fork() }.unwrap() {
            nix::unistd::ForkResult::Child => {
                if let Some(j) = join {
                    j.join();
                }
                loop {
                    // SAFETY: plain pause.
                    unsafe { libc::pause() };
                }
            }
            nix::unistd::ForkResult::Parent { child } => child.as_raw(),
        }
    }

    fn reap(pid: i32) {
        // SAFETY: kill of our own child.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None);
    }

    #[test]
    fn a_child_joins_every_v1_hierarchy_by_itself_and_keeps_no_file() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root to make a cgroup");
            return;
        }
        let id = format!("selfjoin-test-{}", std::process::id());
        let limits = Limits {
            memory_mib: Some(256),
            pids: Some(64),
            ..Default::default()
        };
        let cg = Cgroup::create(&id, &limits, &mut Report::default());
        if cg.paths.version != 1 {
            cg.remove();
            eprintln!("skipped: no cgroup v1 hierarchies here (v2 joins through attach)");
            return;
        }
        let (join, outcome) = cg.self_join().expect("tasks files open as root");
        let pid = child_after(Some(join));
        let reported = outcome.wait();
        let after = cgroup_of(pid);
        let fds = tasks_fds(pid);
        // Control: a child that does not join stays where we are.
        let other = child_after(None);
        let control = cgroup_of(other);
        reap(pid);
        reap(other);
        cg.remove();
        assert_eq!(reported, None, "the join reported a failure");
        let ours = format!("/lockbox/{id}");
        for ctrl in ["memory", "pids", "freezer"] {
            let line = after
                .lines()
                .find(|l| l.split(':').nth(1) == Some(ctrl))
                .unwrap_or_else(|| panic!("no {ctrl} line in {after}"));
            assert!(line.ends_with(&ours), "{ctrl} not joined: {after}");
        }
        assert!(
            fds.is_empty(),
            "host cgroup files still open after the join: {fds:?}"
        );
        assert!(!control.contains(&ours), "control joined: {control}");
    }
}
