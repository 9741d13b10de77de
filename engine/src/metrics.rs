//! Resource usage of a sandbox, read from the cgroup files the helper
//! reported (v1: one directory per controller; v2: one directory).

use std::path::{Path, PathBuf};

use lockbox_protocol::CgroupPaths;
use serde::{Deserialize, Serialize};

use crate::error::{EngineError, Result};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metrics {
    /// CPU time used by all processes, in microseconds.
    pub cpu_usec: u64,
    pub memory_bytes: u64,
    /// Highest memory use seen (0 when the kernel does not track it).
    pub memory_peak_bytes: u64,
    pub pids: u64,
    /// The forwarder's counters; absent without a network policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<crate::network::NetworkCounters>,
}

fn read_u64(p: &Path) -> Result<u64> {
    let s = std::fs::read_to_string(p).map_err(|e| EngineError::io(p.display(), e))?;
    let t = s.trim();
    if t == "max" {
        return Ok(u64::MAX);
    }
    t.parse()
        .map_err(|_| EngineError::internal(format!("{}: not a number: {t:?}", p.display())))
}

/// `usage_usec` from a v2 cpu.stat.
fn cpu_stat_usage_usec(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix("usage_usec "))
        .and_then(|v| v.trim().parse().ok())
}

/// v1 hierarchies may mount cpu and cpuacct together or apart: find the
/// cpuacct directory that matches a cpu directory.
fn cpuacct_dir(cpu: &Path) -> PathBuf {
    if cpu.join("cpuacct.usage").exists() {
        return cpu.to_path_buf();
    }
    let s = cpu.to_string_lossy();
    for (from, to) in [
        ("/cpu,cpuacct/", "/cpuacct/"),
        ("/cpu/", "/cpuacct/"),
        ("/cpu/", "/cpu,cpuacct/"),
    ] {
        if s.contains(from) {
            let p = PathBuf::from(s.replacen(from, to, 1));
            if p.join("cpuacct.usage").exists() {
                return p;
            }
        }
    }
    cpu.to_path_buf()
}

pub fn read(paths: &CgroupPaths) -> Result<Metrics> {
    let mut m = Metrics::default();
    match paths.version {
        2 => {
            let dir = paths
                .memory
                .as_deref()
                .ok_or_else(|| EngineError::unsupported("no cgroup for this sandbox"))?;
            let dir = Path::new(dir);
            m.memory_bytes = read_u64(&dir.join("memory.current"))?;
            m.memory_peak_bytes = read_u64(&dir.join("memory.peak")).unwrap_or(0);
            let stat = std::fs::read_to_string(dir.join("cpu.stat"))
                .map_err(|e| EngineError::io("cpu.stat", e))?;
            m.cpu_usec = cpu_stat_usage_usec(&stat).unwrap_or(0);
            m.pids = read_u64(&dir.join("pids.current")).unwrap_or(0);
        }
        1 => {
            if let Some(mem) = &paths.memory {
                let mem = Path::new(mem);
                m.memory_bytes = read_u64(&mem.join("memory.usage_in_bytes"))?;
                m.memory_peak_bytes = read_u64(&mem.join("memory.max_usage_in_bytes")).unwrap_or(0);
            }
            if let Some(cpu) = &paths.cpu {
                let d = cpuacct_dir(Path::new(cpu));
                m.cpu_usec = read_u64(&d.join("cpuacct.usage")).unwrap_or(0) / 1000;
            }
            if let Some(p) = &paths.pids {
                m.pids = read_u64(&Path::new(p).join("pids.current")).unwrap_or(0);
            }
        }
        _ => {
            return Err(EngineError::unsupported(
                "no cgroup could be made for this sandbox (see Info().NotEnforced)",
            ))
        }
    }
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_v1_and_v2_layouts() {
        let d = tempfile::tempdir().unwrap();
        let v2 = d.path().join("v2");
        std::fs::create_dir(&v2).unwrap();
        std::fs::write(v2.join("memory.current"), "4096\n").unwrap();
        std::fs::write(v2.join("memory.peak"), "8192\n").unwrap();
        std::fs::write(v2.join("cpu.stat"), "usage_usec 1500\nuser_usec 1000\n").unwrap();
        std::fs::write(v2.join("pids.current"), "3\n").unwrap();
        let s = v2.to_string_lossy().into_owned();
        let m = read(&CgroupPaths {
            version: 2,
            memory: Some(s.clone()),
            cpu: Some(s.clone()),
            pids: Some(s),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(
            m,
            Metrics {
                cpu_usec: 1500,
                memory_bytes: 4096,
                memory_peak_bytes: 8192,
                pids: 3,
                network: None,
            }
        );

        for c in ["memory/x", "cpu/x", "cpuacct/x", "pids/x"] {
            std::fs::create_dir_all(d.path().join(c)).unwrap();
        }
        std::fs::write(d.path().join("memory/x/memory.usage_in_bytes"), "100").unwrap();
        std::fs::write(d.path().join("memory/x/memory.max_usage_in_bytes"), "200").unwrap();
        std::fs::write(d.path().join("cpuacct/x/cpuacct.usage"), "5000000").unwrap();
        std::fs::write(d.path().join("pids/x/pids.current"), "7").unwrap();
        let p = |s: &str| Some(d.path().join(s).to_string_lossy().into_owned());
        let m = read(&CgroupPaths {
            version: 1,
            memory: p("memory/x"),
            cpu: p("cpu/x"),
            pids: p("pids/x"),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(
            m,
            Metrics {
                cpu_usec: 5000,
                memory_bytes: 100,
                memory_peak_bytes: 200,
                pids: 7,
                network: None,
            }
        );

        assert!(read(&CgroupPaths::default()).is_err());
    }
}
