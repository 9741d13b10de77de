//! The forwarder's own cgroup: `<sandbox's cgroup dir>.net`, a sibling of
//! the sandbox's (in each v1 hierarchy with memory or pids, or the one v2
//! directory), with a fixed memory limit, no swap, and a pids limit.
//!
//! Why not the sandbox's own cgroup: there it would count against
//! WithMemory, and a sandbox at its limit would have the kernel's OOM
//! killer choose among its processes and the forwarder, which under load
//! is often the largest: the sandbox could starve or kill its own network
//! on purpose, and Pause (which freezes the sandbox's cgroup) would freeze
//! the control socket with it. Why not a child of it: v2 forbids enabling
//! controllers below a cgroup that holds processes. A sibling gets a limit
//! of its own, sized from the forwarder's bounds (docs/network.md), so a
//! forwarder over it is killed alone (the relay then reports it gone) and
//! a sandbox's OOM never touches it.
//!
//! The forwarder joins it itself between fork and exec (a write of "0" to
//! files the helper opened), and the join is checked afterwards in
//! /proc/<pid>/cgroup: a limit that was not applied is reported as not
//! enforced (`network_forwarder_limits`), never claimed.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use lockbox_protocol::CgroupPaths;

/// Worst case ~106 MiB of stack and channel buffers at 128 connections,
/// plus interception (a 64 KiB pipe, a 64 KiB head, rustls' buffers per
/// intercepted connection), the name table, the event queue and the
/// binary itself: 192 MiB leaves room without letting it grow unbounded.
pub const MEMORY_MAX: u64 = 192 << 20;
/// Two threads (control and forwarder); a few spare.
pub const PIDS_MAX: u32 = 8;
/// The feature name in the sandbox's report.
pub const FEATURE: &str = "network_forwarder_limits";

/// The forwarder's cgroup directories and the files it joins them by.
pub struct NetCgroup {
    pub dirs: Vec<PathBuf>,
    /// Opened by the helper; the forwarder writes "0" to each before exec.
    pub join: Vec<File>,
}

/// Makes the directories next to the sandbox's and writes the limits;
/// Err says why nothing is limited.
pub fn create(sandbox: &CgroupPaths) -> Result<NetCgroup, String> {
    let (memory, pids) = match sandbox.version {
        2 => {
            let d = sandbox.memory.as_ref().ok_or("no v2 directory")?;
            (Some(d), None)
        }
        1 => (sandbox.memory.as_ref(), sandbox.pids.as_ref()),
        _ => return Err("no cgroup could be made for this sandbox".into()),
    };
    let mut cg = NetCgroup {
        dirs: Vec::new(),
        join: Vec::new(),
    };
    let made = (|| {
        if let Some(m) = memory {
            let d = sibling(m)?;
            let mem = MEMORY_MAX.to_string();
            if sandbox.version == 2 {
                write(&d, "memory.max", &mem)?;
                let _ = write(&d, "memory.swap.max", "0");
                write(&d, "pids.max", &PIDS_MAX.to_string())?;
            } else {
                write(&d, "memory.limit_in_bytes", &mem)?;
                if d.join("memory.memsw.limit_in_bytes").exists() {
                    write(&d, "memory.memsw.limit_in_bytes", &mem)?;
                }
            }
            cg.add(d)?;
        } else {
            return Err("no memory controller".to_string());
        }
        // v1 may mount memory and pids together: one directory then.
        if let Some(p) = pids.filter(|p| Some(*p) != memory) {
            let d = sibling(p)?;
            write(&d, "pids.max", &PIDS_MAX.to_string())?;
            cg.add(d)?;
        } else if sandbox.version == 1 && pids.is_none() {
            return Err("no pids controller".to_string());
        }
        Ok(())
    })();
    match made {
        Ok(()) => Ok(cg),
        Err(e) => {
            cg.remove();
            Err(e)
        }
    }
}

fn sibling(sandbox_dir: &str) -> Result<PathBuf, String> {
    let d = PathBuf::from(format!("{sandbox_dir}.net"));
    // One left by a SIGKILLed helper of the same sandbox is reused.
    match fs::create_dir(&d) {
        Ok(()) => Ok(d),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(d),
        Err(e) => Err(format!("{}: {e}", d.display())),
    }
}

fn write(dir: &Path, file: &str, value: &str) -> Result<(), String> {
    fs::write(dir.join(file), value).map_err(|e| format!("{}/{file}: {e}", dir.display()))
}

impl NetCgroup {
    /// v2 moves a process by `cgroup.procs`; v1's `tasks` moves the
    /// writing thread, all there is in the forked child.
    fn add(&mut self, d: PathBuf) -> Result<(), String> {
        let file = if d.join("cgroup.procs").exists() && !d.join("tasks").exists() {
            "cgroup.procs"
        } else {
            "tasks"
        };
        let f = OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(d.join(file))
            .map_err(|e| format!("{}/{file}: {e}", d.display()))?;
        self.dirs.push(d);
        self.join.push(f);
        Ok(())
    }

    /// Whether `pid` is in every directory (its /proc/<pid>/cgroup lines
    /// end with the paths below each mount).
    pub fn holds(&self, pid: u32) -> bool {
        let Ok(text) = fs::read_to_string(format!("/proc/{pid}/cgroup")) else {
            return false;
        };
        self.dirs.iter().all(|d| {
            let name = d.file_name().map(|n| n.to_string_lossy().into_owned());
            text.lines().any(|l| {
                name.as_deref()
                    .is_some_and(|n| l.ends_with(&format!("/{n}")))
            })
        })
    }

    /// Removes the directories (the forwarder is reaped by then; a dying
    /// task may take a moment to leave).
    pub fn remove(&self) {
        for d in &self.dirs {
            let mut last = None;
            for _ in 0..100 {
                match fs::remove_dir(d) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                        last = Some(e);
                        std::thread::sleep(std::time::Duration::from_millis(2))
                    }
                    _ => {
                        last = None;
                        break;
                    }
                }
            }
            if let Some(e) = last {
                eprintln!("lockbox-helper: remove {}: {e}", d.display());
            }
        }
    }
}
