//! Names users give sandboxes and volumes. They become directory names and
//! cgroup names, so they are restricted to a portable, path-safe alphabet.

use crate::error::{EngineError, Result};

pub const MAX_NAME_LEN: usize = crate::plan::check::MAX_NAME_BYTES;

/// Checks a sandbox or volume name: 1..=63 of `[A-Za-z0-9_.-]`, starting
/// with a letter or digit (so never `.`/`..` or a hidden file).
pub fn validate(kind: &str, name: &str) -> Result<()> {
    if name.is_empty() {
        return Err(EngineError::invalid(format!("{kind} name is empty")));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(EngineError::invalid(format!(
            "{kind} name {name:?} is longer than {MAX_NAME_LEN} bytes"
        )));
    }
    let first = name.as_bytes()[0];
    if !first.is_ascii_alphanumeric() {
        return Err(EngineError::invalid(format!(
            "{kind} name {name:?} must start with a letter or digit"
        )));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')))
    {
        return Err(EngineError::invalid(format!(
            "{kind} name {name:?} contains {c:?}; allowed: letters, digits, '_', '.', '-'"
        )));
    }
    Ok(())
}

/// A fresh random-looking id (also the default name suffix and cgroup name).
pub fn new_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let pid = std::process::id() as u64;
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    // splitmix64 over the mixed inputs: unique per process, spread out.
    let mut x = nanos ^ (pid << 32) ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^= x >> 31;
    format!("{:012x}", x & 0xffff_ffff_ffff)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_and_rejects() {
        for ok in ["a", "web-1", "A.b_c", "0"] {
            validate("sandbox", ok).unwrap();
        }
        for bad in ["", ".", "..", "-x", "a/b", "a b", "é", &"x".repeat(64)] {
            assert!(validate("sandbox", bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn ids_differ() {
        let a = new_id();
        let b = new_id();
        assert_ne!(a, b);
        assert_eq!(a.len(), 12);
    }
}
