//! The fast TCP path (docs/network.md): an nftables table in the
//! sandbox's network namespace redirects every outgoing TCP connection to
//! a listener the tap child made there; the forwarder holds the listener
//! and decides each connection. Installed before any sandbox process runs;
//! the sandbox has no CAP_NET_ADMIN in its namespace, so it cannot change
//! or flush the table. Without it (no `nft`), TCP still goes through the
//! tap and the user-mode stack under the same rules, only slower: that is
//! reported, not fatal.

use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

/// Reported ok when the table is in place, not (with the reason) when TCP
/// goes through the tap instead.
pub const FEATURE: &str = "network_fast_tcp";

/// Loads the redirect table (to 127.0.0.1:`port`) into the network
/// namespace of `pid`: rootless from inside its user namespace, where
/// the caller is root; as root with our own credentials (as
/// `pasta::close_host_ranges` does).
pub fn install(pid: libc::pid_t, rootless: bool, port: u16) -> Result<()> {
    let userns = std::fs::File::open(format!("/proc/{pid}/ns/user")).context("open user ns")?;
    let netns = std::fs::File::open(format!("/proc/{pid}/ns/net")).context("open net ns")?;
    let (u, n) = (userns.as_raw_fd(), netns.as_raw_fd());
    let nft = crate::pasta::nft_binary();
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
    let mut child = cmd.spawn().with_context(|| format!("run {nft}"))?;
    if let Some(mut i) = child.stdin.take() {
        i.write_all(lockbox_net::forwarder::redirect_ruleset(port).as_bytes())
            .context("write the redirect table")?;
    }
    let out = child.wait_with_output().context("wait for nft")?;
    drop((userns, netns));
    if !out.status.success() {
        bail!(
            "nft refused the redirect table ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// In the forwarder: whether `fd` is a listening TCP socket (what the
/// helper hands over as `--redirect-fd`).
pub fn is_listener(fd: std::os::fd::RawFd) -> bool {
    let get = |level, opt| {
        let mut v: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: getsockopt into an int of the given length.
        let r = unsafe {
            libc::getsockopt(
                fd,
                level,
                opt,
                (&mut v as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        (r == 0).then_some(v)
    };
    get(libc::SOL_SOCKET, libc::SO_ACCEPTCONN) == Some(1)
        && get(libc::SOL_SOCKET, libc::SO_PROTOCOL) == Some(libc::IPPROTO_TCP)
}
