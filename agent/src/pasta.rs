//! Outbound networking through pasta (Debian's passt package): a user-mode
//! TCP/IP stack that joins the sandbox's network namespace, gives it a tap
//! interface with a private address, and relays connections through
//! ordinary host sockets. The gateway is not mapped to the host
//! (`--no-map-gw`), so the host's 127.0.0.1 services stay unreachable.
//! Published ports are pasta's `-t 127.0.0.1/HOST:GUEST` forwards.
//!
//! pasta relays to whatever address the sandbox asks for, the host's own
//! among them, and cannot filter destinations. So before the sandbox runs
//! anything, an nftables table in the sandbox's network namespace rejects
//! the host's addresses and the private, shared, link-local and multicast
//! ranges. The sandbox keeps no CAP_NET_ADMIN, so it cannot change it.
//!
//! pasta runs in the foreground under a watchdog that kills it when the
//! helper ends, however the helper ends (see `start`).

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::IpAddr;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use lockbox_protocol::PortSpec;

/// The sandbox's side of the user-mode network.
pub const GUEST_ADDR: &str = "10.0.2.100";
pub const GATEWAY: &str = "10.0.2.2";
/// pasta answers DNS here by forwarding to the host's resolver.
pub const DNS: &str = "10.0.2.3";

/// Never reachable from an outbound sandbox: this network, private
/// (RFC 1918), shared address space (CGNAT), loopback, link-local, IETF
/// protocol assignments, benchmarking, multicast and reserved/broadcast.
const CLOSED_V4: &[&str] = &[
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.0.0.0/24",
    "192.168.0.0/16",
    "198.18.0.0/15",
    "224.0.0.0/4",
    "240.0.0.0/4",
];
/// Unspecified, loopback, IPv4-mapped, NAT64, ULA, link-local, multicast.
const CLOSED_V6: &[&str] = &[
    "::/127",
    "::ffff:0:0/96",
    "64:ff9b::/96",
    "fc00::/7",
    "fe80::/10",
    "ff00::/8",
];

fn binary() -> String {
    std::env::var("LOCKBOX_PASTA").unwrap_or_else(|_| "pasta".into())
}

/// In the child between fork and exec: the helper blocks SIGTERM, SIGINT
/// and SIGHUP, and a child inherits that mask (pasta would then ignore a
/// plain kill); and the child dies with the helper, even by SIGKILL.
pub(crate) fn child_of_helper(helper: libc::pid_t) -> std::io::Result<()> {
    // SAFETY: plain system calls on this process.
    unsafe {
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        if libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut()) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        // The helper may have died before the prctl.
        if libc::getppid() != helper {
            libc::_exit(1);
        }
    }
    Ok(())
}

/// A running pasta, held through its watchdog (see `start`).
pub struct Pasta {
    watchdog: libc::pid_t,
    /// Closing it (explicitly, or by the helper's death) makes the
    /// watchdog kill pasta.
    stop: std::os::fd::OwnedFd,
}

/// Starts pasta for the namespaces of `pid` and returns once the interface
/// is configured (pasta writes `pid_file` then).
///
/// pasta must run as root here (it opens /dev/net/tun, which may be
/// root-only), and joins the sandbox's user namespace, which root does not
/// own: the kernel then clears a parent-death signal. So a watchdog, a
/// fork of the helper, starts pasta as its own child and kills it when the
/// helper's end of a pipe closes: on `stop`, or when the helper dies,
/// however it dies. The watchdog is the only process that can reap pasta,
/// so the pid it kills is always pasta's.
pub fn start(
    pid: libc::pid_t,
    ports: &[PortSpec],
    rootless: bool,
    pid_file: &Path,
) -> Result<Pasta> {
    use std::os::fd::FromRawFd;
    let _ = std::fs::remove_file(pid_file);
    let pipe = || -> Result<(std::fs::File, std::fs::File)> {
        let mut fds = [0; 2];
        // SAFETY: fds is a valid 2-element array.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(std::io::Error::last_os_error()).context("pipe");
        }
        // SAFETY: fresh fds.
        Ok(unsafe {
            (
                std::fs::File::from_raw_fd(fds[0]),
                std::fs::File::from_raw_fd(fds[1]),
            )
        })
    };
    let (ready_rd, ready_wr) = pipe()?;
    let (stop_rd, stop_wr) = pipe()?;
    let cmd = command(ports, rootless, pid_file);
    // SAFETY: we are single-threaded (the helper's design); the watchdog
    // only runs the code below and exits.
    match unsafe { nix::unistd::fork() }.context("fork the pasta watchdog")? {
        nix::unistd::ForkResult::Child => {
            drop((ready_rd, stop_wr));
            let code = watchdog(cmd, pid, ready_wr, stop_rd, pid_file);
            // SAFETY: leave without running the helper's exit path.
            unsafe { libc::_exit(code) }
        }
        nix::unistd::ForkResult::Parent { child } => {
            drop((ready_wr, stop_rd));
            let p = Pasta {
                watchdog: child.as_raw(),
                stop: stop_wr.into(),
            };
            let mut b = [0u8; 1];
            let mut r = &ready_rd;
            match std::io::Read::read(&mut r, &mut b) {
                Ok(1) => Ok(p),
                _ => {
                    stop(p);
                    bail!("pasta failed to configure the network; see helper.log")
                }
            }
        }
    }
}

fn command(ports: &[PortSpec], rootless: bool, pid_file: &Path) -> Command {
    let mut cmd = Command::new(binary());
    cmd.args([
        "--config-net",
        "--no-map-gw",
        "--quiet",
        "-4",
        "--foreground",
    ])
    .args(["-a", GUEST_ADDR, "-n", "24", "-g", GATEWAY])
    .args(["--dns-forward", DNS])
    .args(["-u", "none", "-T", "none", "-U", "none"])
    .arg("-P")
    .arg(pid_file);
    if !rootless {
        // pasta drops root to nobody by default, and nobody may not join a
        // user namespace owned by another user.
        cmd.args(["--runas", "0"]);
    }
    if ports.is_empty() {
        cmd.args(["-t", "none"]);
    }
    for p in ports {
        cmd.arg("-t")
            .arg(format!("127.0.0.1/{}:{}", p.host, p.guest));
    }
    cmd.stdin(Stdio::null()).stdout(Stdio::null());
    cmd
}

/// The watchdog's life: start pasta, say when it is ready, and kill it
/// when `stop` reports EOF. Returns the exit status.
fn watchdog(
    mut cmd: Command,
    sandbox: libc::pid_t,
    ready: std::fs::File,
    stop: std::fs::File,
    pid_file: &Path,
) -> i32 {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    // Everything of the helper's but stderr (helper.log) and the two pipes:
    // the sandbox's setup socket, the lifeline, the status pipe.
    // SAFETY: plain fd calls on this fresh process.
    unsafe {
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
        libc::dup2(null, 0);
        libc::dup2(null, 1);
        let keep = [ready.as_raw_fd(), stop.as_raw_fd()];
        for fd in 3..1024 {
            if !keep.contains(&fd) {
                libc::close(fd);
            }
        }
    }
    // By fd, not by pid: pasta drops its capabilities before it opens the
    // namespaces, and the sandbox's processes are not its to inspect then.
    let ns = |t: &str| std::fs::File::open(format!("/proc/{sandbox}/ns/{t}"));
    let (Ok(userns), Ok(netns)) = (ns("user"), ns("net")) else {
        eprintln!("lockbox-helper: pasta: cannot open the sandbox's namespaces");
        return 1;
    };
    let (u, n) = (userns.as_raw_fd(), netns.as_raw_fd());
    cmd.arg("--userns")
        .arg(format!("/proc/self/fd/{u}"))
        .arg("--netns")
        .arg(format!("/proc/self/fd/{n}"))
        // We stop it; its own watch would poll /proc.
        .arg("--no-netns-quit");
    // SAFETY: the hook makes only async-signal-safe system calls.
    unsafe {
        cmd.pre_exec(move || {
            // The helper blocks SIGTERM, SIGINT and SIGHUP, and a child
            // inherits the mask: pasta would ignore a plain kill.
            let mut empty: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut empty);
            if libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut()) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            for fd in [u, n] {
                if libc::fcntl(fd, libc::F_SETFD, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        })
    };
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            eprintln!(
                "lockbox-helper: run {} (install Debian's passt package): {e}",
                binary()
            );
            return 1;
        }
    };
    drop((userns, netns));
    // In the foreground pasta writes its pid file once the namespace side
    // is configured: that is the readiness signal.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if std::fs::metadata(pid_file).is_ok_and(|m| m.len() > 0) {
            break;
        }
        match child.try_wait() {
            Ok(None) if Instant::now() < deadline => {}
            r => {
                eprintln!("lockbox-helper: pasta did not configure the network: {r:?}");
                let _ = child.kill();
                let _ = child.wait();
                return 1;
            }
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let _ = (&ready).write_all(b"1");
    drop(ready);
    // SAFETY: plain syscall; a non-negative result is a new fd.
    let pfd = unsafe { libc::syscall(libc::SYS_pidfd_open, child.id() as libc::pid_t, 0) };
    loop {
        let stop_fd = PollFd::new(stop.as_fd(), PollFlags::POLLIN);
        let mut fds = vec![stop_fd];
        // SAFETY: pfd stays open while we poll.
        let borrowed =
            (pfd >= 0).then(|| unsafe { std::os::fd::BorrowedFd::borrow_raw(pfd as i32) });
        if let Some(b) = &borrowed {
            fds.push(PollFd::new(b.as_fd(), PollFlags::POLLIN));
        }
        match poll(&mut fds, PollTimeout::NONE) {
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => break,
            Ok(_) => {}
        }
        let hit = |i: usize| {
            fds.get(i)
                .and_then(|f| f.revents())
                .is_some_and(|e| !e.is_empty())
        };
        if hit(0) || hit(1) {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    0
}

/// Stops pasta: the watchdog kills it, and we reap the watchdog.
pub fn stop(p: Pasta) {
    drop(p.stop);
    let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(p.watchdog), None);
}

/// The host's own addresses, on every interface.
fn host_addrs() -> Vec<IpAddr> {
    let mut out = Vec::new();
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list we free below; each
    // sockaddr is read according to its family.
    unsafe {
        if libc::getifaddrs(&mut head) != 0 {
            return out;
        }
        let mut p = head;
        while !p.is_null() {
            let a = (*p).ifa_addr;
            if !a.is_null() {
                match (*a).sa_family as i32 {
                    libc::AF_INET => {
                        let s = &*(a as *const libc::sockaddr_in);
                        out.push(IpAddr::from(u32::from_be(s.sin_addr.s_addr).to_be_bytes()));
                    }
                    libc::AF_INET6 => {
                        let s = &*(a as *const libc::sockaddr_in6);
                        out.push(IpAddr::from(s.sin6_addr.s6_addr));
                    }
                    _ => {}
                }
            }
            p = (*p).ifa_next;
        }
        libc::freeifaddrs(head);
    }
    out
}

/// The nftables ruleset closing the host and private ranges.
fn ruleset(host: &[IpAddr]) -> String {
    let set = |fixed: &[&str], v4: bool| {
        let mut e: Vec<String> = fixed.iter().map(|s| s.to_string()).collect();
        e.extend(
            host.iter()
                .filter(|a| a.is_ipv4() == v4)
                .map(|a| a.to_string()),
        );
        e.join(", ")
    };
    let mut r = String::new();
    let _ = write!(
        r,
        "table inet lockbox {{
  set closed4 {{ type ipv4_addr; flags interval; auto-merge; elements = {{ {} }} }}
  set closed6 {{ type ipv6_addr; flags interval; auto-merge; elements = {{ {} }} }}
  chain out {{
    type filter hook output priority 0; policy accept;
    oifname \"lo\" accept
    ct state established,related accept
    ip daddr {DNS} meta l4proto {{ tcp, udp }} th dport 53 accept
    ip daddr @closed4 meta l4proto tcp reject with tcp reset
    ip daddr @closed4 reject with icmpx type admin-prohibited
    ip6 daddr @closed6 meta l4proto tcp reject with tcp reset
    ip6 daddr @closed6 reject with icmpx type admin-prohibited
  }}
}}
",
        set(CLOSED_V4, true),
        set(CLOSED_V6, false)
    );
    r
}

/// Installs the outbound ruleset in the network namespace of `pid`
/// (outbound mode closes the host's addresses with nftables).
pub fn close_host_ranges(pid: libc::pid_t, rootless: bool) -> Result<()> {
    crate::nft::load_into(
        pid,
        rootless,
        &ruleset(&host_addrs()),
        "the outbound ruleset",
    )
}
