//! Loading an nftables ruleset into a sandbox's network namespace: the
//! outbound mode's closed host ranges (pasta.rs) and the policy path's TCP
//! redirect (netd/redirect.rs).

use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

/// nft lives in sbin, which users' PATH often lacks.
pub fn binary() -> String {
    if let Ok(p) = std::env::var("LOCKBOX_NFT") {
        return p;
    }
    let path = std::env::var("PATH").unwrap_or_default();
    let found = path
        .split(':')
        .chain(["/usr/sbin", "/sbin"])
        .filter(|d| d.starts_with('/'))
        .map(|d| Path::new(d).join("nft"))
        .find(|p| p.is_file());
    found.map_or_else(|| "nft".into(), |p| p.to_string_lossy().into_owned())
}

/// Runs `nft -f -` with `rules` in the network namespace of `pid`:
/// rootless also in its user namespace, where the caller is root; as host
/// root with our own credentials (host root would be no one inside, and
/// exec would drop its capabilities). `what` names the ruleset in errors.
pub fn load_into(pid: libc::pid_t, rootless: bool, rules: &str, what: &str) -> Result<()> {
    let userns = std::fs::File::open(format!("/proc/{pid}/ns/user")).context("open user ns")?;
    let netns = std::fs::File::open(format!("/proc/{pid}/ns/net")).context("open net ns")?;
    let (u, n) = (userns.as_raw_fd(), netns.as_raw_fd());
    let nft = binary();
    let mut cmd = Command::new(&nft);
    cmd.args(["-f", "-"])
        .env_clear()
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let helper = std::process::id() as libc::pid_t;
    // SAFETY: setns and prctl only; the fds stay open until after spawn.
    unsafe {
        cmd.pre_exec(move || {
            crate::pasta::child_of_helper(helper)?;
            if rootless && libc::setns(u, libc::CLONE_NEWUSER) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::setns(n, libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    };
    let mut child = cmd
        .spawn()
        .with_context(|| format!("run {nft} (install Debian's nftables package)"))?;
    if let Some(mut i) = child.stdin.take() {
        i.write_all(rules.as_bytes())
            .with_context(|| format!("write {what}"))?;
    }
    let out = child.wait_with_output().context("wait for nft")?;
    drop((userns, netns));
    if !out.status.success() {
        bail!(
            "nft refused {what} ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}
