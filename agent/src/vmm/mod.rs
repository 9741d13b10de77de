//! `lockbox-helper vmm <vmm.json>`: the host process of a microVM sandbox.
//! It stays in the host's namespaces, makes the cgroup the VMM runs in
//! (the engine owns it afterwards: metrics, freezer, removal), binds the
//! agent socket, starts qemu in its jail (`jail.rs`), reports one
//! `LaunchStatus` line and then supervises: the lifeline's EOF (or its
//! own death, through PR_SET_PDEATHSIG down the chain) ends qemu, and
//! qemu's exit ends this process after it removed the cgroup.
//!
//! The engine writes the whole qemu command line (paths as qemu sees them
//! inside the jail); this process decides only how qemu is confined.

mod jail;
mod landlock;
mod log_relay;
mod net;
mod root;
mod seccomp;
mod share;

use std::fs;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use lockbox_protocol::{ErrorCode, LaunchStatus, Limits};
use serde::Deserialize;

use crate::cgroup::Cgroup;
use crate::report::Report;
use crate::supervisor::status;

/// What the engine asks for (engine/src/backend/microvm/launch.rs writes it).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmmSpec {
    /// The sandbox id: the cgroup's name.
    pub id: String,
    /// qemu's host path; must be under /usr, which the jail shows read-only.
    pub qemu: String,
    /// qemu's arguments; fd 3 is the agent socket's listener.
    pub args: Vec<String>,
    /// Host files and directories qemu may reach, and where it sees them.
    pub binds: Vec<Bind>,
    /// Host path of the agent socket this process binds (qemu gets fd 3).
    pub socket: String,
    /// The cgroup's limits: guest memory plus the VMM's own overhead.
    pub limits: Limits,
    /// Whether /dev/kvm is passed in.
    pub kvm: bool,
    /// Host path of the QMP socket this process binds (qemu gets fd 4):
    /// the engine's control of the VM (stop, migrate, cont). Only the
    /// engine connects to it (0600, in the sandbox's directory).
    #[serde(default)]
    pub qmp: Option<String>,
    /// Volumes: one confined virtiofsd each (share.rs).
    #[serde(default)]
    pub shares: Vec<share::ShareSpec>,
    /// A network: the forwarder on a link qemu gets as fd 5 (net.rs).
    #[serde(default)]
    pub net: Option<net::NetSpec>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bind {
    pub src: String,
    /// Absolute path inside the jail, one level below its root
    /// (`/vm`, `/disk/rw.img`).
    pub dst: String,
    pub writable: bool,
    /// A per-sandbox file: handed to the VMM's unprivileged uid.
    pub own: bool,
}

/// The host uid/gid qemu runs as when the helper is root: outside the
/// range sandbox files get (supervisor::HOST_ID_BASE..) and below the
/// user-namespace owner id; it owns nothing on the host but the
/// per-sandbox disk files handed to it.
pub const VMM_ID: u32 = crate::supervisor::HOST_ID_BASE - 2;

pub fn run(spec_path: &Path) -> i32 {
    // Before anything a guest can influence runs: the forwarder is started
    // from this fd, never from a path (netd::own_executable).
    let exe = crate::netd::own_executable();
    let spec: Result<VmmSpec, String> = fs::read(spec_path)
        .map_err(|e| format!("read {}: {e}", spec_path.display()))
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| format!("bad vmm spec: {e}")));
    let spec = match spec {
        Ok(s) => s,
        Err(e) => return failed(ErrorCode::InvalidArgument, e),
    };
    if spec.id.is_empty() || spec.id.contains(['/', '\0']) || spec.id.starts_with('.') {
        return failed(ErrorCode::InvalidArgument, format!("bad id {:?}", spec.id));
    }
    if is_devnull(0) {
        // Detached (no lifeline): out of the engine's session and process
        // group, so a Ctrl-C or hangup meant for the host program does not
        // stop the VM, which outlives that program.
        // SAFETY: setsid has no memory effects.
        unsafe { libc::setsid() };
    }
    let mut report = Report::default();
    let cgroup = Cgroup::create(&spec.id, &spec.limits, &mut report);
    let exe = match exe {
        Ok(f) => f,
        Err(e) => return failed(ErrorCode::Internal, format!("open /proc/self/exe: {e}")),
    };
    // Published ports first, with their own error code (a port in use is
    // already_exists, as for a native sandbox).
    let published = match spec
        .net
        .as_ref()
        .map(|n| crate::netd::ingress::bind(&n.ports))
    {
        Some(Err((code, m))) => {
            cgroup.remove();
            remove_sockets(&spec);
            return failed(code, m);
        }
        Some(Ok(p)) => p,
        None => Vec::new(),
    };
    match start(&spec, published, &exe, &cgroup, &mut report) {
        Ok((child, net)) => {
            let mut r = report.0.clone();
            r.cgroup = cgroup.paths.clone();
            // The forwarder's own cgroup (netd/cgroup.rs): the engine's
            // cleanup removes it with the VMM's.
            r.cgroup.dirs.extend(report.0.cgroup.dirs.iter().cloned());
            status(LaunchStatus {
                ok: true,
                error: None,
                code: None,
                helper_pid: Some(std::process::id()),
                report: Some(r),
            });
            let code = supervise(child);
            // Kills the forwarder, removes net.sock and its cgroup.
            drop(net);
            kill_cgroup(&cgroup);
            cgroup.remove();
            remove_sockets(&spec);
            code
        }
        Err(e) => {
            kill_cgroup(&cgroup);
            cgroup.remove();
            remove_sockets(&spec);
            failed(ErrorCode::Internal, e)
        }
    }
}

fn remove_sockets(spec: &VmmSpec) {
    let _ = fs::remove_file(&spec.socket);
    if let Some(q) = &spec.qmp {
        let _ = fs::remove_file(q);
    }
}

/// A listening socket only this uid may connect to: bound under a umask
/// that leaves no window in which the socket file is more open than 0600.
fn bind_private(path: &str) -> Result<std::os::unix::net::UnixListener, String> {
    // SAFETY: umask is process-wide; the helper is single-threaded here.
    let old = unsafe { libc::umask(0o177) };
    let l = std::os::unix::net::UnixListener::bind(path);
    // SAFETY: restores the previous mask.
    unsafe { libc::umask(old) };
    let l = l.map_err(|e| format!("bind {path}: {e}"))?;
    let _ = fs::set_permissions(path, fs::Permissions::from_mode(0o600));
    Ok(l)
}

fn failed(code: ErrorCode, msg: String) -> i32 {
    eprintln!("lockbox-helper vmm: {msg}");
    status(LaunchStatus {
        ok: false,
        error: Some(msg),
        code: Some(code),
        helper_pid: Some(std::process::id()),
        report: None,
    });
    1
}

/// Binds the socket, prepares the jail's mounts (as the helper: it may
/// read what the unprivileged VMM may not) and forks the jailed qemu.
fn start(
    spec: &VmmSpec,
    published: Vec<crate::netd::ingress::Bound>,
    exe: &std::fs::File,
    cgroup: &Cgroup,
    report: &mut Report,
) -> Result<(jail::Child, Option<net::VmNet>), String> {
    if !spec.qemu.starts_with("/usr/") || spec.qemu.contains("/../") {
        return Err(format!("qemu {} is not under /usr", spec.qemu));
    }
    let listener = bind_private(&spec.socket)?;
    let qmp = spec
        .qmp
        .as_deref()
        .map(bind_private)
        .transpose()?
        .map(OwnedFd::from);
    // SAFETY: geteuid.
    let is_root = unsafe { libc::geteuid() } == 0;
    // A /dev/kvm only root may open (no group access) cannot be handed to
    // the VMM's uid: then qemu keeps the helper's uid, said in the report.
    let kvm_root_only = spec.kvm && {
        use std::os::unix::fs::MetadataExt;
        fs::metadata("/dev/kvm")
            .map(|m| m.mode() & 0o060 != 0o060)
            .unwrap_or(true)
    };
    let root = is_root && !kvm_root_only;
    if root {
        for b in spec.binds.iter().filter(|b| b.own) {
            std::os::unix::fs::lchown(&b.src, Some(VMM_ID), Some(VMM_ID))
                .map_err(|e| format!("chown {}: {e}", b.src))?;
        }
    }
    let dir = Path::new(&spec.socket).parent().unwrap_or(Path::new("/"));
    let shares = share::start_all(&spec.shares, dir, cgroup)?;
    let mut net = spec
        .net
        .as_ref()
        .map(|n| net::start(n, published, exe, cgroup, report))
        .transpose()?;
    let mounts = jail::Mounts::prepare(spec).map_err(|e| format!("jail mounts: {e}"))?;
    let (relay, saved) =
        log_relay::redirect_stderr().map_err(|e| format!("qemu's log pipe: {e}"))?;
    let child = jail::spawn(
        spec,
        &mounts,
        OwnedFd::from(listener),
        qmp,
        &shares,
        net.as_ref().and_then(|n| n.qemu_end.as_ref()),
        cgroup,
        root,
    )
    .map_err(|e| format!("start qemu: {e}"));
    log_relay::restore(&saved);
    let mut child = child?;
    child.log = Some(relay);
    if let Some(n) = net.as_mut() {
        // qemu holds its end now; from here the helper has threads.
        n.qemu_end = None;
        n.netd
            .serve()
            .map_err(|e| format!("the forwarder's control relay: {e}"))?;
    }
    for f in [
        "userns", "mountns", "pidns", "netns", "ipcns", "utsns", "cgroupns",
    ] {
        report.ok(&format!("vmm_{f}"));
    }
    report.ok("vmm_no_new_privs");
    report.ok("vmm_caps");
    report.ok("vmm_qemu_sandbox");
    report.ok("vmm_seccomp");
    if !shares.is_empty() {
        report.ok("vmm_virtiofsd_jail");
    }
    if landlock::kernel_abi() > 0 {
        report.ok("vmm_landlock");
    } else {
        report.not("vmm_landlock", "this kernel has no Landlock");
    }
    if root {
        report.ok("vmm_uid");
    } else if is_root {
        report.not(
            "vmm_uid",
            "/dev/kvm is root-only on this host: qemu keeps uid 0 (in its own user namespace)",
        );
    } else {
        report.not("vmm_uid", "rootless: qemu runs as the caller's uid");
    }
    Ok((child, net))
}

/// Waits for qemu's end or the lifeline's EOF (stdin; /dev/null for a
/// detached sandbox reads EOF at once, so then only qemu's end counts).
fn supervise(mut child: jail::Child) -> i32 {
    let detached = unsafe { libc::isatty(0) } == 0 && is_devnull(0);
    let mut fds = [
        libc::pollfd {
            fd: child.pidfd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: if detached { -1 } else { 0 },
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: child.log.as_ref().map_or(-1, |l| l.fd()),
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    loop {
        // SAFETY: valid pollfd array.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 3, -1) };
        if n < 0 {
            if std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            break;
        }
        if fds[0].revents != 0 {
            break;
        }
        if fds[2].revents != 0 {
            let log = child.log.as_mut().expect("polled only when set");
            if !log.pump(&mut std::io::stderr()) {
                fds[2].fd = -1;
            }
        }
        if fds[1].revents != 0 {
            let mut b = [0u8; 64];
            // SAFETY: read into a local buffer.
            let r = unsafe { libc::read(0, b.as_mut_ptr().cast(), b.len()) };
            if r <= 0 {
                // SAFETY: kill our own child.
                unsafe { libc::kill(child.pid, libc::SIGKILL) };
                break;
            }
        }
    }
    let mut st = 0;
    // SAFETY: reaps our own child.
    unsafe { libc::waitpid(child.pid, &mut st, 0) };
    if let Some(log) = child.log.as_mut() {
        log.finish(&mut std::io::stderr());
    }
    if libc::WIFEXITED(st) {
        libc::WEXITSTATUS(st)
    } else {
        128 + libc::WTERMSIG(st)
    }
}

fn is_devnull(fd: i32) -> bool {
    let mut a: libc::stat = unsafe { std::mem::zeroed() };
    let mut b: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: stat into local structs.
    unsafe {
        libc::fstat(fd, &mut a) == 0
            && libc::stat(c"/dev/null".as_ptr(), &mut b) == 0
            && a.st_rdev == b.st_rdev
            && (a.st_mode & libc::S_IFMT) == libc::S_IFCHR
    }
}

/// Every process of the VMM, whatever it did, before the cgroup goes.
fn kill_cgroup(cgroup: &Cgroup) {
    for d in &cgroup.paths.dirs {
        let _ = fs::write(Path::new(d).join("cgroup.kill"), "1");
    }
}
