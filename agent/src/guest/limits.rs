//! The sandbox's memory and pids limits inside the guest: a cgroup v2
//! child holding PID 1 (the agent) and so every process it starts. The VM
//! is sized a little above the limit (the guest kernel's own memory), so
//! an allocation past the limit is an OOM kill of the workload inside the
//! guest, as in a native sandbox, and the VM stays up. PID 1 is never the
//! OOM killer's choice.

use std::io;
use std::path::Path;

use lockbox_protocol::Limits;

use crate::report::Report;

const ROOT: &str = "/sys/fs/cgroup";

fn write(dir: &Path, file: &str, v: &str) -> io::Result<()> {
    std::fs::write(dir.join(file), v).map_err(|e| io::Error::new(e.kind(), format!("{file}: {e}")))
}

pub fn apply(limits: &Limits, report: &mut Report) {
    if limits.memory_mib.is_none() && limits.pids.is_none() {
        return;
    }
    let r = (|| -> io::Result<()> {
        crate::sys::mount(
            Some("cgroup2"),
            Path::new(ROOT),
            Some("cgroup2"),
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            None,
        )?;
        let root = Path::new(ROOT);
        write(root, "cgroup.subtree_control", "+memory +pids")?;
        let dir = root.join("sandbox");
        std::fs::create_dir_all(&dir)?;
        if let Some(m) = limits.memory_mib {
            write(&dir, "memory.max", &(m << 20).to_string())?;
            let _ = write(&dir, "memory.swap.max", "0");
        }
        if let Some(p) = limits.pids {
            write(&dir, "pids.max", &p.to_string())?;
        }
        write(&dir, "cgroup.procs", "1")
    })();
    let err = r.err().map(|e| format!("guest cgroup: {e}"));
    for (f, set) in [
        ("memory", limits.memory_mib.is_some()),
        ("pids", limits.pids.is_some()),
    ] {
        if set {
            match &err {
                None => report.ok(f),
                Some(e) => report.not(f, e.clone()),
            }
        }
    }
}
