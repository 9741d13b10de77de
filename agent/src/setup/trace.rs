//! Setup timing for the benchmark: with `LOCKBOX_TRACE=<absolute file>` in
//! the helper's environment, the supervisor appends one JSON line per
//! sandbox to that file, holding CLOCK_MONOTONIC timestamps (ns) of each
//! setup step, its own and the sandbox child's. The engine writes its side
//! (spawn, status read) to the same file, so bench/compare.py can lay out
//! one timeline. Off unless the variable is set; when off, `mark` is one
//! load of a flag. The line is written after the status line, outside the
//! time the engine waits for.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::sync::atomic::{AtomicBool, Ordering};

/// Set once in the supervisor before the clone; the child inherits it.
static ON: AtomicBool = AtomicBool::new(false);

/// CLOCK_MONOTONIC in ns: one clock for the engine, the helper and the
/// sandbox child (no time namespace is made).
pub fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

#[derive(Default)]
pub struct Trace {
    marks: Vec<(String, u64)>,
}

impl Trace {
    /// The supervisor's trace: reads the variable (the first mark is taken
    /// here, at the start of `run`).
    pub fn from_env() -> (Trace, Option<std::path::PathBuf>) {
        let path = std::env::var_os("LOCKBOX_TRACE")
            .map(std::path::PathBuf::from)
            .filter(|p| p.is_absolute());
        ON.store(path.is_some(), Ordering::Relaxed);
        let mut t = Trace::default();
        t.mark("helper_main");
        (t, path)
    }

    pub fn mark(&mut self, step: &str) {
        if ON.load(Ordering::Relaxed) {
            self.marks.push((step.to_string(), now_ns()));
        }
    }

    pub fn take(&mut self) -> Vec<(String, u64)> {
        std::mem::take(&mut self.marks)
    }

    pub fn extend(&mut self, marks: Vec<(String, u64)>) {
        if ON.load(Ordering::Relaxed) {
            self.marks.extend(marks);
        }
    }

    /// Appends `{"id", "who": "helper", "marks"}` to `path`. Best effort:
    /// a trace must never fail a sandbox.
    pub fn write(&self, path: &std::path::Path, id: &str) {
        if self.marks.is_empty() {
            return;
        }
        let line = serde_json::json!({"id": id, "who": "helper", "marks": self.marks});
        let mut bytes = serde_json::to_vec(&line).unwrap_or_default();
        bytes.push(b'\n');
        let f = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path);
        if let Ok(mut f) = f {
            let _ = f.write_all(&bytes);
        }
    }
}
