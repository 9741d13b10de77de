//! Environments: the shape of one entry, the bounds of a list, and the
//! merge of one environment over another (image over defaults, config over
//! image, exec over sandbox).

use super::check::{
    shown, MAX_ENV_ENTRIES, MAX_ENV_ENTRY_BYTES, MAX_ENV_KEY_BYTES, MAX_ENV_TOTAL_BYTES,
};
use crate::error::{EngineError, Result};

/// One `KEY=VALUE` entry: the key is what precedes the first '=', so a key
/// can never hold '=' here; the SDKs reject such keys before joining them.
pub fn check(what: &str, e: &str) -> Result<()> {
    let Some((k, _)) = e.split_once('=') else {
        return Err(EngineError::invalid(format!(
            "{what} entry {} must look like KEY=VALUE",
            shown(e)
        )));
    };
    if k.is_empty() || e.contains('\0') {
        return Err(EngineError::invalid(format!(
            "{what} entry {} needs a non-empty key and no NUL byte",
            shown(e)
        )));
    }
    if k.len() > MAX_ENV_KEY_BYTES {
        return Err(EngineError::invalid(format!(
            "{what} key {} is longer than {MAX_ENV_KEY_BYTES} bytes",
            shown(k)
        )));
    }
    if e.len() > MAX_ENV_ENTRY_BYTES {
        return Err(EngineError::invalid(format!(
            "{what} entry {} is longer than {MAX_ENV_ENTRY_BYTES} bytes",
            shown(e)
        )));
    }
    Ok(())
}

/// The count and total size bounds of one environment, then each entry.
/// The count is checked first so a huge list is refused in O(1).
pub fn check_list(what: &str, env: &[String]) -> Result<()> {
    check_size(what, env)?;
    for e in env {
        check(what, e)?;
    }
    Ok(())
}

/// Only the count and total size (for an environment whose entries were
/// checked already, or come from the image).
pub fn check_size(what: &str, env: &[String]) -> Result<()> {
    if env.len() > MAX_ENV_ENTRIES {
        return Err(EngineError::invalid(format!(
            "{what} has {} entries; at most {MAX_ENV_ENTRIES}",
            env.len()
        )));
    }
    let total: usize = env.iter().map(|e| e.len() + 1).sum();
    if total > MAX_ENV_TOTAL_BYTES {
        return Err(EngineError::invalid(format!(
            "{what} is {total} bytes; at most {MAX_ENV_TOTAL_BYTES}"
        )));
    }
    Ok(())
}

/// `base` overridden key by key by `extra`, the last entry of a key
/// winning, in the order each key first appears. Linear: one hash lookup
/// per entry (a scan per entry made 32k entries take seconds). `extra` is
/// checked entry by entry (its size is the caller's to check); the result
/// is bounded like any environment.
pub fn merge(what: &str, base: &[String], extra: &[String]) -> Result<Vec<String>> {
    use std::collections::hash_map::Entry;
    let mut order: Vec<&String> = Vec::with_capacity(base.len() + extra.len());
    let mut slot: std::collections::HashMap<&str, usize> =
        std::collections::HashMap::with_capacity(base.len() + extra.len());
    for (i, e) in base.iter().chain(extra).enumerate() {
        if i >= base.len() {
            check(what, e)?;
        }
        let key = e.split_once('=').map_or(e.as_str(), |(k, _)| k);
        match slot.entry(key) {
            Entry::Occupied(o) => order[*o.get()] = e,
            Entry::Vacant(v) => {
                v.insert(order.len());
                order.push(e);
            }
        }
    }
    let out: Vec<String> = order.into_iter().cloned().collect();
    check_size(&format!("{what} after merging"), &out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn env_merges_by_key() {
        let base = vec!["PATH=/bin".to_string(), "A=1".to_string()];
        let m = merge("env", &base, &["A=2".into(), "B=3".into(), "B=4".into()]).unwrap();
        assert_eq!(m, vec!["PATH=/bin", "A=2", "B=4"]);
        assert!(merge("env", &base, &["bad".into()]).is_err());
        assert!(merge("env", &base, &["=x".into()]).is_err());
        assert!(merge("env", &base, &["A=\0".into()]).is_err());
    }

    /// 2 x 50k entries with half the keys shared. A scan per entry (the
    /// old merge) needs ~3e9 key compares here: minutes, not < 2 s.
    #[test]
    fn env_merge_is_linear() {
        let n = 50_000;
        let base: Vec<String> = (0..n).map(|i| format!("K{i}=base")).collect();
        let extra: Vec<String> = (n / 2..n + n / 2).map(|i| format!("K{i}=extra")).collect();
        let t = std::time::Instant::now();
        // Past the size bound on purpose: the merge runs in full, then the
        // result is refused.
        let e = merge("env", &base, &extra).unwrap_err();
        assert_eq!(e.code, lockbox_protocol::ErrorCode::InvalidArgument);
        assert!(e.message.contains("after merging"), "{}", e.message);
        // Minutes if quadratic; 10 s leaves a loaded machine room.
        assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
        let small_base: Vec<String> = base[..2000].to_vec();
        let m = merge("env", &small_base, &extra[..2000]).unwrap();
        assert_eq!(m.len(), 4000);
        assert_eq!(m[0], "K0=base");
        assert_eq!(m[3999], format!("K{}=extra", n / 2 + 1999));
    }

    #[test]
    fn merged_env_is_bounded() {
        let base: Vec<String> = (0..3000).map(|i| format!("A{i}=x")).collect();
        let extra: Vec<String> = (0..3000).map(|i| format!("B{i}=x")).collect();
        let e = merge("exec env", &base, &extra).unwrap_err();
        assert!(e.message.contains("6000 entries"), "{}", e.message);
        // The same keys again only override: still 3000.
        assert_eq!(merge("exec env", &base, &base).unwrap().len(), 3000);
    }
}
