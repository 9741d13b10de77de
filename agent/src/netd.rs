//! A sandbox with a network policy (docs/network.md): its only interface
//! is a tap device served by the lockbox-net forwarder, which runs as a
//! mode of this binary in the helper's (host) network namespace, never in
//! the sandbox. pasta is not started for it.
//!
//! - The tap is made inside the sandbox's network namespace by a forked
//!   child of the helper (rootless: after joining the sandbox's user
//!   namespace, where it is owner), configured (10.0.2.100/24, MTU 65520,
//!   default route via 10.0.2.2, IPv6 off), and its fd sent back.
//! - The forwarder is started from an fd of the helper's own executable
//!   opened before the sandbox existed (never a path anything can swap),
//!   with the tap fd and one end of a socketpair; it drops to 99997 (forwarders only) with
//!   no capabilities when started as root (lockbox_net::daemon).
//! - `<dir>/net.sock` (0600, in the sandbox's host-side directory, outside
//!   its root) is relayed line by line to the forwarder's control socket,
//!   so the engine reaches it across detach and reattach. The engine, not
//!   the helper, sends the start line: it holds the secret values, which
//!   are never written to launch.json.
//! - It ends when the helper ends: the helper's end of the control socket
//!   closes (even on SIGKILL), and the daemon stops at that EOF.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};

mod cgroup;
pub mod ingress;
mod redirect;
mod seccomp;

pub const MODE: &str = "net-forwarder";
pub(crate) const IFNAME: &[u8] = b"eth0";
const GUEST_ADDR: [u8; 4] = [10, 0, 2, 100];
const NETMASK: [u8; 4] = [255, 255, 255, 0];
const GATEWAY: [u8; 4] = [10, 0, 2, 2];
const MTU: i32 = 65520;
/// A request line from the engine: the daemon's own bound.
const MAX_REQUEST: u64 = lockbox_net::daemon::MAX_LINE as u64;
/// A reply line from the forwarder (events with long names).
const MAX_REPLY: u64 = 16 << 20;
/// A connected engine that sends nothing is dropped after this.
const CLIENT_IDLE: Duration = Duration::from_secs(30);

/// The running forwarder of one sandbox.
pub struct Netd {
    child: Child,
    cgroup: Option<cgroup::NetCgroup>,
    control: UnixStream,
    listener: UnixListener,
    socket: PathBuf,
}

/// Opened at the start of `run`, before any sandbox process exists.
pub fn own_executable() -> std::io::Result<File> {
    File::open("/proc/self/exe")
}

/// Makes the tap in the namespaces of `pid` and starts the forwarder in
/// a cgroup of its own next to the sandbox's (`sandbox_cgroup`); whether
/// that limit holds goes to `report`. `listener` is bound at `socket`.
// Each argument is one thing the forwarder is started with; a struct
// would only rename them.
#[allow(clippy::too_many_arguments)]
pub fn start(
    pid: libc::pid_t,
    rootless: bool,
    exe: &File,
    listener: UnixListener,
    socket: &Path,
    published: Vec<ingress::Bound>,
    sandbox_cgroup: &lockbox_protocol::CgroupPaths,
    report: &mut crate::report::Report,
) -> Result<Netd> {
    let (tap, fast) =
        make_tap(pid, rootless).context("tap device in the sandbox's network namespace")?;
    let fast = redirect_rule(pid, rootless, fast, report);
    spawn(
        tap,
        fast,
        exe,
        listener,
        socket,
        published,
        sandbox_cgroup,
        report,
    )
}

/// Starts the forwarder on `frames`: the sandbox's tap, or a microVM's
/// end of its datagram link to qemu (vmm/net.rs; `fast` is then None).
#[allow(clippy::too_many_arguments)]
pub fn spawn(
    frames: OwnedFd,
    fast: Option<OwnedFd>,
    exe: &File,
    listener: UnixListener,
    socket: &Path,
    published: Vec<ingress::Bound>,
    sandbox_cgroup: &lockbox_protocol::CgroupPaths,
    report: &mut crate::report::Report,
) -> Result<Netd> {
    let tap = frames;
    let mut limits = match cgroup::create(sandbox_cgroup) {
        Ok(c) => Some(c),
        Err(e) => {
            report.not(cgroup::FEATURE, e);
            None
        }
    };
    let join: Vec<RawFd> = limits
        .iter()
        .flat_map(|c| c.join.iter().map(|f| f.as_raw_fd()))
        .collect();
    let (ours, theirs) = UnixStream::pair().context("socketpair")?;
    let (t, c) = (tap.as_raw_fd(), theirs.as_raw_fd());
    let mut cmd = Command::new(format!("/proc/self/fd/{}", exe.as_raw_fd()));
    cmd.arg0("lockbox-helper")
        .args([
            MODE,
            "--tap-fd",
            &t.to_string(),
            "--control-fd",
            &c.to_string(),
        ])
        .args(ingress::args(&published))
        .args(
            fast.iter()
                .flat_map(|l| ["--redirect-fd".to_string(), l.as_raw_fd().to_string()]),
        )
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .current_dir("/");
    let keep: Vec<RawFd> = [t, c]
        .into_iter()
        .chain(fast.iter().map(|l| l.as_raw_fd()))
        .chain(published.iter().map(|p| p.fd()))
        .collect();
    let helper = std::process::id() as libc::pid_t;
    // SAFETY: only async-signal-safe system calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            let mut empty: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut empty);
            libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 || libc::getppid() != helper
            {
                return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
            }
            // Into its own cgroup; checked from the helper after spawn.
            for fd in &join {
                libc::write(*fd, b"0".as_ptr().cast(), 1);
            }
            // Nothing of the helper's but the tap, the control socket and
            // the published ports (and stderr, the log).
            libc::syscall(
                libc::SYS_close_range,
                3u32,
                u32::MAX,
                libc::CLOSE_RANGE_CLOEXEC,
            );
            for &fd in &keep {
                if libc::fcntl(fd, libc::F_SETFD, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            if let Some(c) = &limits {
                c.remove();
            }
            return Err(e).context("start the network forwarder");
        }
    };
    // The ports are the forwarder's now: freed when it ends.
    drop((tap, theirs, published, fast));
    if let Some(c) = limits.as_mut() {
        c.join.clear();
        if c.holds(child.id()) {
            report.ok(cgroup::FEATURE);
            // The engine's cleanup removes every directory listed here
            // (after Remove, which SIGKILLs this helper); the freezer and
            // metrics use the sandbox's own, listed first.
            for d in &c.dirs {
                report.0.cgroup.dirs.push(d.to_string_lossy().into_owned());
            }
        } else {
            report.not(
                cgroup::FEATURE,
                "the forwarder could not join its cgroup (no write access to it or a common ancestor)",
            );
        }
    }
    let _ = std::fs::set_permissions(socket, std::os::unix::fs::PermissionsExt::from_mode(0o600));
    Ok(Netd {
        child,
        cgroup: limits,
        control: ours,
        listener,
        socket: socket.to_path_buf(),
    })
}

impl Netd {
    /// Relays `net.sock` to the forwarder on a thread, one client at a
    /// time (the engine connects per request). Called once the helper has
    /// forked everything it forks: from here it has threads.
    pub fn serve(&self) -> Result<()> {
        let listener = self.listener.try_clone()?;
        let control = self.control.try_clone()?;
        std::thread::Builder::new()
            .name("net-relay".into())
            .spawn(move || relay(listener, control))?;
        Ok(())
    }

    /// Kills and reaps the forwarder, removes the socket and its cgroup.
    pub fn stop(self) {
        drop(self)
    }
}

/// Also on a create that fails after the forwarder started.
impl Drop for Netd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.socket);
        if let Some(c) = &self.cgroup {
            c.remove();
        }
    }
}

fn relay(listener: UnixListener, control: UnixStream) {
    let mut from_fwd = BufReader::new(match control.try_clone() {
        Ok(c) => c,
        Err(_) => return,
    });
    let mut to_fwd = control;
    let mut forwarder_gone = false;
    for conn in listener.incoming() {
        let Ok(conn) = conn else { continue };
        // Once the forwarder is gone each caller gets an immediate end of
        // stream (its error says so), not a wait for its timeout.
        if forwarder_gone {
            continue;
        }
        if let Err(Broken::Forwarder) = serve_client(conn, &mut to_fwd, &mut from_fwd) {
            eprintln!("lockbox-helper: the network forwarder is gone");
            forwarder_gone = true;
        }
    }
}

enum Broken {
    Client,
    Forwarder,
}

/// One bounded line (newline kept); None at EOF.
fn line(r: &mut impl BufRead, max: u64) -> std::io::Result<Option<Vec<u8>>> {
    let mut buf = Vec::new();
    r.take(max + 1).read_until(b'\n', &mut buf)?;
    if buf.is_empty() {
        return Ok(None);
    }
    if buf.last() != Some(&b'\n') {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "line too long or cut",
        ));
    }
    Ok(Some(buf))
}

fn serve_client(
    conn: UnixStream,
    to_fwd: &mut UnixStream,
    from_fwd: &mut BufReader<UnixStream>,
) -> Result<(), Broken> {
    let _ = conn.set_read_timeout(Some(CLIENT_IDLE));
    let _ = conn.set_write_timeout(Some(CLIENT_IDLE));
    let mut out = conn.try_clone().map_err(|_| Broken::Client)?;
    let mut rd = BufReader::new(conn);
    while let Some(req) = line(&mut rd, MAX_REQUEST).map_err(|_| Broken::Client)? {
        to_fwd.write_all(&req).map_err(|_| Broken::Forwarder)?;
        let reply = match line(from_fwd, MAX_REPLY) {
            Ok(Some(r)) => r,
            _ => return Err(Broken::Forwarder),
        };
        out.write_all(&reply).map_err(|_| Broken::Client)?;
    }
    Ok(())
}

/// `lockbox-helper net-forwarder --tap-fd N --control-fd M`.
pub fn forwarder_main(args: &[String]) -> i32 {
    let fd = |name: &str| -> Option<RawFd> {
        let i = args.iter().position(|a| a == name)?;
        let v: RawFd = args.get(i + 1)?.parse().ok()?;
        // SAFETY: F_GETFD only asks whether the fd is open.
        (v > 2 && unsafe { libc::fcntl(v, libc::F_GETFD) } >= 0).then_some(v)
    };
    let (Some(t), Some(c)) = (fd("--tap-fd"), fd("--control-fd")) else {
        eprintln!("lockbox-helper {MODE}: --tap-fd and --control-fd must name open fds");
        return 2;
    };
    if t == c {
        eprintln!("lockbox-helper {MODE}: --tap-fd and --control-fd must differ");
        return 2;
    }
    // SAFETY: both were checked open and differ; they were handed to us.
    let (tap, control) = unsafe { (OwnedFd::from_raw_fd(t), UnixStream::from_raw_fd(c)) };
    // Compiled before the daemon reads anything, installed by it after
    // the privilege drop.
    let filter = match seccomp::programs() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("lockbox-helper {MODE}: seccomp filter: {e:#}");
            return 1;
        }
    };
    // The redirect listener: optional (without it TCP goes through the
    // tap), never one of the other fds.
    let r = fd("--redirect-fd");
    if args.iter().any(|a| a == "--redirect-fd")
        && r.is_none_or(|r| r == t || r == c || !redirect::is_listener(r))
    {
        eprintln!("lockbox-helper {MODE}: --redirect-fd must name a listening TCP socket");
        return 2;
    }
    let taken: Vec<RawFd> = [t, c].into_iter().chain(r).collect();
    let published = match ingress::parse(args, GUEST_ADDR.into(), &taken) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("lockbox-helper {MODE}: {e}");
            return 2;
        }
    };
    let confine = || seccomp::install(&filter);
    // SAFETY: checked open, listening, and distinct from the others; it
    // was handed to this process to own.
    let fast = r.map(|r| unsafe { OwnedFd::from_raw_fd(r) });
    match lockbox_net::daemon::serve_with(tap, fast, control, published, confine) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("lockbox-helper {MODE}: {e}");
            1
        }
    }
}

/// Installs the redirect table for `listener` in the sandbox's network
/// namespace; the listener is kept only if that worked (otherwise TCP
/// goes through the tap, which `report` says).
fn redirect_rule(
    pid: libc::pid_t,
    rootless: bool,
    listener: Option<OwnedFd>,
    report: &mut crate::report::Report,
) -> Option<OwnedFd> {
    let Some(l) = listener else {
        report.not(
            redirect::FEATURE,
            "no listener in the sandbox's network namespace",
        );
        return None;
    };
    let port = std::net::TcpListener::from(l.try_clone().ok()?)
        .local_addr()
        .ok()?
        .port();
    match redirect::install(pid, rootless, port) {
        Ok(()) => {
            report.ok(redirect::FEATURE);
            Some(l)
        }
        Err(e) => {
            report.not(redirect::FEATURE, format!("{e:#}"));
            None
        }
    }
}

/// The tap, made and configured by a forked child inside the sandbox's
/// network namespace and sent back over a socketpair.
/// With it, the fast TCP path's listener, made in the same namespace
/// (None if that failed: TCP then goes through the tap).
fn make_tap(pid: libc::pid_t, rootless: bool) -> Result<(OwnedFd, Option<OwnedFd>)> {
    let userns = File::open(format!("/proc/{pid}/ns/user")).context("open user ns")?;
    let netns = File::open(format!("/proc/{pid}/ns/net")).context("open net ns")?;
    let (ours, theirs) = UnixStream::pair().context("socketpair")?;
    // SAFETY: the helper is single-threaded here (its design); the child
    // makes system calls only and leaves with _exit.
    match unsafe { nix::unistd::fork() }.context("fork")? {
        nix::unistd::ForkResult::Child => {
            drop(ours);
            let code = match tap_in_namespace(&userns, &netns, rootless) {
                Ok(fd) => {
                    let listener = lockbox_net::forwarder::redirect_listener().ok();
                    let fds: Vec<RawFd> = std::iter::once(fd.as_raw_fd())
                        .chain(listener.as_ref().map(|l| l.as_raw_fd()))
                        .collect();
                    match crate::sys::send_fds(theirs.as_raw_fd(), &fds) {
                        Ok(()) => 0,
                        Err(_) => 1,
                    }
                }
                Err((step, errno)) => {
                    // The first byte is what recv_fds takes as its payload.
                    let _ = (&theirs).write_all(format!("!{step}: {errno}").as_bytes());
                    1
                }
            };
            // SAFETY: leave without running the helper's exit path.
            unsafe { libc::_exit(code) }
        }
        nix::unistd::ForkResult::Parent { child } => {
            drop(theirs);
            let fds = crate::sys::recv_fds(ours.as_raw_fd());
            let _ = nix::sys::wait::waitpid(child, None);
            match fds {
                Ok(mut v) if v.len() == 1 => Ok((v.remove(0), None)),
                Ok(mut v) if v.len() == 2 => {
                    let l = v.remove(1);
                    Ok((v.remove(0), Some(l)))
                }
                _ => {
                    let mut why = String::new();
                    let _ = (&ours).take(512).read_to_string(&mut why);
                    bail!("{}", if why.is_empty() { "no tap fd" } else { &why })
                }
            }
        }
    }
}

pub(crate) type Step = (&'static str, std::io::Error);

fn tap_in_namespace(userns: &File, netns: &File, rootless: bool) -> Result<OwnedFd, Step> {
    let os = |s: &'static str| (s, std::io::Error::last_os_error());
    // SAFETY: system calls on fds we own, in a fresh single-threaded child.
    unsafe {
        // Non-dumpable before joining: this child holds the helper's fds
        // and memory, and inside the sandbox's user namespace its root
        // would otherwise pass ptrace's capability check (today no sandbox
        // process exists yet when it runs; attack review s4 H2).
        if libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) != 0 {
            return Err(os("make the tap child non-dumpable"));
        }
        if rootless && libc::setns(userns.as_raw_fd(), libc::CLONE_NEWUSER) != 0 {
            return Err(os("join the sandbox's user namespace"));
        }
        if libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
            return Err(os("join the sandbox's network namespace"));
        }
    }
    // The forwarder drops every non-IPv4 frame; with IPv6 off the sandbox
    // does not even try (sysctls under /proc/sys/net are the opener's
    // namespace's).
    for f in ["all", "default"] {
        let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{f}/disable_ipv6"), "1");
    }
    // SAFETY: plain open; the fd is owned below.
    let fd = unsafe { libc::open(c"/dev/net/tun".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(os("open /dev/net/tun"));
    }
    // SAFETY: fresh fd.
    let tap = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut req = ifreq();
    req.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short;
    // SAFETY: a valid ifreq for TUNSETIFF.
    if unsafe { libc::ioctl(tap.as_raw_fd(), libc::TUNSETIFF as _, &mut req) } != 0 {
        return Err(os("TUNSETIFF"));
    }
    configure()?;
    Ok(tap)
}

fn ifreq() -> libc::ifreq {
    // SAFETY: ifreq is plain old data; zeroed is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (i, b) in IFNAME.iter().enumerate() {
        req.ifr_name[i] = *b as libc::c_char;
    }
    req
}

fn sockaddr(a: [u8; 4]) -> libc::sockaddr {
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(a),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in and sockaddr have the same size; plain data.
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
}

/// Address, netmask, MTU, up, default route: what `ip` would do, by ioctl.
/// Also a microVM guest's (guest/net.rs): the same numbers on its
/// virtio-net interface.
pub(crate) fn configure() -> Result<(), Step> {
    let os = |s: &'static str| (s, std::io::Error::last_os_error());
    // SAFETY: plain socket call.
    let s = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if s < 0 {
        return Err(os("socket"));
    }
    // SAFETY: fresh fd.
    let _guard = unsafe { OwnedFd::from_raw_fd(s) };
    // SAFETY: each ioctl gets a valid ifreq / rtentry.
    unsafe {
        let mut r = ifreq();
        r.ifr_ifru.ifru_addr = sockaddr(GUEST_ADDR);
        if libc::ioctl(s, libc::SIOCSIFADDR, &r) != 0 {
            return Err(os("set the address"));
        }
        let mut r = ifreq();
        r.ifr_ifru.ifru_netmask = sockaddr(NETMASK);
        if libc::ioctl(s, libc::SIOCSIFNETMASK, &r) != 0 {
            return Err(os("set the netmask"));
        }
        let mut r = ifreq();
        r.ifr_ifru.ifru_mtu = MTU;
        if libc::ioctl(s, libc::SIOCSIFMTU, &r) != 0 {
            return Err(os("set the MTU"));
        }
        let mut r = ifreq();
        if libc::ioctl(s, libc::SIOCGIFFLAGS, &mut r) != 0 {
            return Err(os("read the flags"));
        }
        r.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
        if libc::ioctl(s, libc::SIOCSIFFLAGS, &r) != 0 {
            return Err(os("bring it up"));
        }
        let mut rt: libc::rtentry = std::mem::zeroed();
        rt.rt_dst = sockaddr([0; 4]);
        rt.rt_genmask = sockaddr([0; 4]);
        rt.rt_gateway = sockaddr(GATEWAY);
        rt.rt_flags = libc::RTF_UP | libc::RTF_GATEWAY;
        if libc::ioctl(s, libc::SIOCADDRT, &rt) != 0 {
            return Err(os("add the default route"));
        }
    }
    Ok(())
}
