//! The fast TCP path (docs/network.md): an nftables table in the
//! sandbox's network namespace redirects every outgoing TCP connection to
//! a listener the tap child made there; the forwarder holds the listener
//! and decides each connection. Installed before any sandbox process runs;
//! the sandbox has no CAP_NET_ADMIN in its namespace, so it cannot change
//! or flush the table. Without it (no `nft`), TCP still goes through the
//! tap and the user-mode stack under the same rules, only slower: that is
//! reported, not fatal.

use anyhow::Result;

/// Reported ok when the table is in place, not (with the reason) when TCP
/// goes through the tap instead.
pub const FEATURE: &str = "network_fast_tcp";

/// Loads the redirect table (to 127.0.0.1:`port`) into the network
/// namespace of `pid`.
pub fn install(pid: libc::pid_t, rootless: bool, port: u16) -> Result<()> {
    let rules = lockbox_net::forwarder::redirect_ruleset(port);
    crate::nft::load_into(pid, rootless, &rules, "the redirect table")
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
