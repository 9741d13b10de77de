//! The outer process of `lockbox-helper run`: stays in the host's
//! namespaces, owns the cgroup and the agent socket, creates the sandbox
//! child, reports one `LaunchStatus` line, then watches the lifeline and
//! cleans up when the sandbox ends.

use std::fs;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{chown, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use lockbox_protocol::{ErrorCode, LaunchSpec, LaunchStatus, MountSpec, NetworkMode};

use crate::cgroup::Cgroup;
use crate::report::Report;
use crate::setup::plan::{Plan, SetupResult, Source};
use crate::setup::trace::Trace;
use crate::sys;

/// Where sandbox uid/gid 0..65536 live on the host when we are root. A
/// fixed range outside normal accounts (Debian hands out subuids from
/// 100000 too): files the sandbox creates in its writable layer are owned
/// by these ids on the host, never by host root.
pub const HOST_ID_BASE: u32 = 100_000;
pub const ID_RANGE: u32 = 65_536;
/// When we are root, the host id that owns each sandbox's user namespace.
/// The kernel charges a namespace's per-user quotas (inotify instances and
/// watches, namespaces, fanotify groups) to its owner as well: with host
/// root as the owner, a sandbox could use up host root's share. This id
/// runs nothing on the host and is outside the range sandbox files get.
pub const NS_OWNER_ID: u32 = HOST_ID_BASE - 1;

pub struct Failure {
    pub code: ErrorCode,
    pub message: String,
}

fn fail(code: ErrorCode, message: impl Into<String>) -> Failure {
    Failure {
        code,
        message: message.into(),
    }
}

fn io_fail(what: &str, e: std::io::Error) -> Failure {
    let code = e
        .raw_os_error()
        .map(ErrorCode::from_errno)
        .unwrap_or(ErrorCode::Internal);
    fail(code, format!("{what}: {e}"))
}

struct Running {
    pid: libc::pid_t,
    pidfd: OwnedFd,
    cgroup: Cgroup,
    socket: PathBuf,
    pasta: Option<crate::pasta::Pasta>,
    netd: Option<crate::netd::Netd>,
}

/// Entry point of `run`. Returns the process exit status.
pub fn run(spec_path: &Path) -> i32 {
    let (mut trace, trace_path) = Trace::from_env();
    let spec: Result<LaunchSpec, Failure> = fs::read(spec_path)
        .map_err(|e| io_fail(&format!("read {}", spec_path.display()), e))
        .and_then(|b| {
            serde_json::from_slice(&b)
                .map_err(|e| fail(ErrorCode::InvalidArgument, format!("bad launch spec: {e}")))
        });
    let launched = spec.and_then(|s| launch(&s, &mut trace).map(|r| (s, r)));
    match launched {
        Ok((spec, (running, report))) => {
            status(LaunchStatus {
                ok: true,
                error: None,
                code: None,
                helper_pid: Some(std::process::id()),
                report: Some(report.0),
            });
            if let Some(p) = &trace_path {
                trace.mark("status_written");
                trace.write(p, &spec.id);
            }
            watch(&spec, running)
        }
        Err(f) => {
            eprintln!("lockbox-helper: launch failed: {}", f.message);
            status(LaunchStatus {
                ok: false,
                error: Some(f.message),
                code: Some(f.code),
                helper_pid: Some(std::process::id()),
                report: None,
            });
            1
        }
    }
}

/// Writes the one status line and closes stdout, so the engine's read
/// ends even though we keep running.
pub(crate) fn status(s: LaunchStatus) {
    let mut line = serde_json::to_vec(&s).unwrap_or_default();
    line.push(b'\n');
    // SAFETY: fd 1 is ours to write and replace.
    unsafe {
        let mut out = std::fs::File::from_raw_fd(1);
        let _ = out.write_all(&line);
        std::mem::forget(out);
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_WRONLY);
        if null >= 0 {
            libc::dup2(null, 1);
            libc::close(null);
        }
    }
}

fn validate(spec: &LaunchSpec) -> Result<(), Failure> {
    let bad = |m: String| Err(fail(ErrorCode::InvalidArgument, m));
    if spec.id.is_empty() || spec.id.contains(['/', '\0']) || spec.id == ".." {
        return bad(format!("invalid sandbox id {:?}", spec.id));
    }
    if spec.rootfs.lower.is_empty() {
        return bad("rootfs.lower is empty".into());
    }
    for l in &spec.rootfs.lower {
        if !Path::new(l).is_dir() {
            return Err(fail(
                ErrorCode::NotFound,
                format!("rootfs layer {l} is not a directory"),
            ));
        }
    }
    // The engine's plan checked the same bounds (protocol::bounds): a spec
    // that gets here outside them was not written by the engine.
    spec.limits
        .check()
        .map_err(|m| fail(ErrorCode::InvalidArgument, m))?;
    for m in &spec.mounts {
        match m {
            MountSpec::Bind { source, target, .. } => {
                if !Path::new(source).exists() {
                    return Err(fail(
                        ErrorCode::NotFound,
                        format!("volume source {source} does not exist"),
                    ));
                }
                if !target.starts_with('/') {
                    return bad(format!("mount target {target} must be absolute"));
                }
            }
            MountSpec::Tmpfs { target, size_mib } => {
                if !target.starts_with('/') || *size_mib == 0 {
                    return bad(format!(
                        "tmpfs {target}: absolute target and positive size needed"
                    ));
                }
            }
        }
    }
    if spec.network.forwarder && spec.network.mode != NetworkMode::None {
        return bad("a network policy replaces outbound mode".into());
    }
    if !spec.network.ports.is_empty()
        && spec.network.mode != NetworkMode::Outbound
        && !spec.network.forwarder
    {
        return Err(fail(
            ErrorCode::InvalidArgument,
            "published ports need network mode outbound or a network policy",
        ));
    }
    Ok(())
}

/// Binds the agent socket. sun_path holds 107 bytes; longer paths are bound
/// by their base name from inside the directory (we are single-threaded,
/// so the chdir cannot race).
fn bind_socket(path: &Path) -> Result<UnixListener, Failure> {
    let _ = fs::remove_file(path);
    if path.as_os_str().len() < 100 {
        return UnixListener::bind(path)
            .map_err(|e| io_fail(&format!("bind {}", path.display()), e));
    }
    let dir = path.parent().unwrap_or(Path::new("/"));
    let name = path
        .file_name()
        .ok_or_else(|| fail(ErrorCode::InvalidArgument, "bad socket path"))?;
    let back = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"));
    std::env::set_current_dir(dir).map_err(|e| io_fail("chdir to socket dir", e))?;
    let r = UnixListener::bind(name);
    let _ = std::env::set_current_dir(back);
    r.map_err(|e| io_fail(&format!("bind {}", path.display()), e))
}

fn launch(spec: &LaunchSpec, trace: &mut Trace) -> Result<(Running, Report), Failure> {
    trace.mark("spec_read");
    validate(spec)?;
    if spec.detached {
        // Out of the engine's session and process group: a Ctrl-C or hangup
        // meant for the host program must not stop a detached sandbox.
        let _ = nix::unistd::setsid();
    }
    let rootless = nix::unistd::geteuid().as_raw() != 0;
    let mut report = Report::default();
    block_signals();

    let dir = Path::new(&spec.dir);
    for d in [&spec.rootfs.upper, &spec.rootfs.work] {
        fs::create_dir_all(d).map_err(|e| io_fail(&format!("create {d}"), e))?;
        if !rootless {
            // Sandbox root is HOST_ID_BASE on the host: it must own its layer.
            chown(d, Some(HOST_ID_BASE), Some(HOST_ID_BASE))
                .map_err(|e| io_fail(&format!("chown {d}"), e))?;
        }
    }
    trace.mark("validate_layer_dirs");
    let cgroup = Cgroup::create(&spec.id, &spec.limits, &mut report);
    trace.mark("cgroup_create");
    report.0.cgroup = cgroup.paths.clone();
    let cleanup_cg = |f: Failure| {
        cgroup.remove();
        f
    };
    let listener = bind_socket(Path::new(&spec.socket_path)).map_err(cleanup_cg)?;
    // Before the sandbox exists: the executable the forwarder runs from,
    // and the socket the engine drives it through.
    let net_sock = dir.join("net.sock");
    let forwarder = if spec.network.forwarder {
        let exe = crate::netd::own_executable()
            .map_err(|e| cleanup_cg(io_fail("open the helper's own executable", e)))?;
        Some((exe, bind_socket(&net_sock).map_err(cleanup_cg)?))
    } else {
        None
    };
    let _ = fs::set_permissions(&spec.socket_path, fs::Permissions::from_mode(0o600));
    let (parent_sock, child_sock) =
        seqpacket_pair().map_err(|e| cleanup_cg(io_fail("socketpair", e)))?;

    // The go signal (see `start_attacher`) goes through a pipe, not the
    // seqpacket: a write to a seqpacket whose peer already failed and
    // closed would discard the report it left for us.
    let (go_rd, go_wr) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| cleanup_cg(io_fail("pipe", e.into())))?;
    let flags = libc::CLONE_NEWUSER
        | libc::CLONE_NEWNS
        | libc::CLONE_NEWPID
        | libc::CLONE_NEWUTS
        | libc::CLONE_NEWIPC
        | libc::CLONE_NEWNET;
    trace.mark("socket_bind");
    let self_join = cgroup.self_join();
    let pid =
        clone_as_owner(flags, rootless).map_err(|e| cleanup_cg(io_fail("create namespaces", e)))?;
    trace.mark("clone_namespaces");
    if pid == 0 {
        if let Some((join, _)) = self_join {
            join.join();
        }
        drop(parent_sock);
        drop(go_wr);
        unblock_signals();
        hide_host_strings();
        let l: OwnedFd = listener.into();
        crate::setup::child_main(spec.clone(), child_sock, go_rd, l);
    }
    drop(child_sock);
    drop(go_rd);
    drop(listener);
    let kill_child = |f: Failure| {
        // SAFETY: our own child.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None);
        cgroup.remove();
        let _ = fs::remove_file(&spec.socket_path);
        f
    };
    let pidfd = sys::pidfd_open(pid).map_err(|e| kill_child(io_fail("pidfd_open", e)))?;
    write_id_maps(pid, rootless).map_err(|e| kill_child(io_fail("write id maps", e)))?;
    trace.mark("id_maps");
    // On v1 the child has joined its cgroup itself (`Cgroup::self_join`).
    // Otherwise the join waits for the kernel (moving another process
    // takes an RCU grace period, milliseconds): a forked process does it
    // while we prepare the mounts and the child builds its root. Either
    // way the child runs nothing of the sandbox's until it is told the
    // join is done (`go` below).
    let join_outcome = self_join.map(|(_, outcome)| outcome);
    let attach = join_outcome.is_none().then_some(&cgroup);
    let attacher = start_attacher(pid, attach, rootless)
        .map_err(|e| kill_child(io_fail("user namespace limits", e)))?;
    trace.mark("attacher_forked");
    let mut pasta = None;
    if spec.network.mode == NetworkMode::Outbound {
        let outbound_fail = |e: anyhow::Error| {
            kill_child(fail(
                ErrorCode::Unsupported,
                format!("outbound network: {e:#}"),
            ))
        };
        crate::pasta::close_host_ranges(pid, rootless).map_err(outbound_fail)?;
        report.ok("outbound_host_ranges_closed");
        pasta = Some(
            crate::pasta::start(pid, &spec.network.ports, rootless, &dir.join("pasta.pid"))
                .map_err(outbound_fail)?,
        );
        report.ok("network_outbound");
        if !spec.network.ports.is_empty() {
            report.ok("ports");
        }
    }
    let mut netd = None;
    if let Some((exe, net_listener)) = forwarder {
        // After the clone: the sandbox never holds these sockets.
        let published = crate::netd::ingress::bind(&spec.network.ports)
            .map_err(|(code, m)| kill_child(fail(code, m)))?;
        netd = Some(
            crate::netd::start(
                pid,
                rootless,
                &exe,
                net_listener,
                &net_sock,
                published,
                &cgroup.paths,
                &mut report,
            )
            .map_err(|e| {
                kill_child(fail(
                    ErrorCode::Unsupported,
                    format!("network policy: {e:#}"),
                ))
            })?,
        );
        report.ok("network_policy");
        if !spec.network.ports.is_empty() {
            report.ok("ports");
        }
    }
    trace.mark("network");
    let (plan, fds) = prepare_mounts(spec, pid, rootless, &mut report);
    trace.mark("prepare_layer_mounts");
    let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
    sys::send_fds(parent_sock.as_raw_fd(), &raw)
        .map_err(|e| kill_child(io_fail("send mounts", e)))?;
    drop(fds);
    let plan_json = serde_json::to_vec(&plan).unwrap_or_default();
    (&parent_sock)
        .write_all(&plan_json)
        .map_err(|e| kill_child(io_fail("send plan", e)))?;
    trace.mark("plan_sent");
    let attach_err = attacher
        .finish()
        .map_err(|e| kill_child(io_fail("user namespace limits", e)))?
        .or_else(|| join_outcome.and_then(|o| o.wait()));
    report.ok("userns_limits");
    if let Some(e) = attach_err {
        for f in ["memory", "cpus", "pids"] {
            if report.0.enforced.iter().any(|x| x == f) {
                report.0.enforced.retain(|x| x != f);
                report.not(f, format!("cannot join cgroup: {e}"));
            }
        }
    }
    trace.mark("cgroup_attach_limits_joined");
    // A child that failed has closed its end: its report, read below,
    // says why, so a failed send is not the error to return.
    let _ = fs::File::from(go_wr).write_all(crate::setup::plan::GO);
    trace.mark("go_sent");

    let mut buf = vec![0u8; 1 << 20];
    let n = (&parent_sock).read(&mut buf).unwrap_or(0);
    if n == 0 {
        return Err(kill_child(fail(
            ErrorCode::Internal,
            "sandbox setup died without a report (see helper.log)",
        )));
    }
    let res: SetupResult = serde_json::from_slice(&buf[..n])
        .map_err(|e| kill_child(fail(ErrorCode::Internal, format!("bad setup report: {e}"))))?;
    if let Some(err) = res.error {
        return Err(kill_child(fail(
            res.code.unwrap_or(ErrorCode::Internal),
            format!("sandbox setup: {err}"),
        )));
    }
    report.merge(res.report);
    trace.extend(res.trace);
    trace.mark("setup_result_read");
    if rootless {
        report.not(
            "uid_mapping",
            "rootless: sandbox root is the calling user; only that one id is mapped",
        );
    } else {
        report.ok("uid_mapping");
    }
    Ok((
        Running {
            pid,
            pidfd,
            cgroup,
            socket: PathBuf::from(&spec.socket_path),
            pasta,
            netd,
        },
        report,
    ))
}

fn seqpacket_pair() -> std::io::Result<(UnixStream, UnixStream)> {
    let mut fds = [0; 2];
    // SAFETY: fds is a valid 2-element array.
    let r = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fresh fds from socketpair.
    Ok(unsafe {
        (
            UnixStream::from_raw_fd(fds[0]),
            UnixStream::from_raw_fd(fds[1]),
        )
    })
}

/// clone_fork, with the new user namespace owned by NS_OWNER_ID when we are
/// root (its owner is our effective id at the time of the clone).
fn clone_as_owner(flags: libc::c_int, rootless: bool) -> std::io::Result<libc::pid_t> {
    if rootless {
        return sys::clone_fork(flags);
    }
    const KEEP: u32 = u32::MAX; // -1: leave that id as it is
                                // SAFETY: credential calls on this single-threaded process; the real
                                // and saved ids stay 0, so switching back is always allowed.
    unsafe {
        if libc::setresgid(KEEP, NS_OWNER_ID, KEEP) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        if libc::setresuid(KEEP, NS_OWNER_ID, KEEP) != 0 {
            let e = std::io::Error::last_os_error();
            libc::setresgid(KEEP, 0, KEEP);
            return Err(e);
        }
    }
    let r = sys::clone_fork(flags);
    if !matches!(r, Ok(0)) {
        // SAFETY: as above.
        let back = unsafe { libc::setresuid(KEEP, 0, KEEP) | libc::setresgid(KEEP, 0, KEEP) };
        if back != 0 {
            // Never go on with host root half dropped.
            std::process::abort();
        }
    }
    r
}

/// In the sandbox child, before anything of the sandbox runs: argv and the
/// environment hold host paths (the helper's, the launch spec's,
/// LOCKBOX_HOME), and every process inside can read PID 1's argv in
/// /proc/1/cmdline. Both are overwritten in place; the agent reads neither.
fn hide_host_strings() {
    let Ok(stat) = fs::read_to_string("/proc/self/stat") else {
        return;
    };
    // Fields after the command name, which may hold spaces: state is
    // field 3, arg_start..env_end are fields 48..51.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<u64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    let (Some(&arg_start), Some(&arg_end), Some(&env_start), Some(&env_end)) =
        (f.get(45), f.get(46), f.get(47), f.get(48))
    else {
        return;
    };
    // SAFETY: clearenv only drops libc's table; nothing holds entries.
    // The two ranges are this process's own argv and environment strings
    // (the kernel's record of where they are), writable stack memory that
    // nothing reads after this point. /proc/self/mem is no way to do it:
    // after the id switch of clone_as_owner it belongs to host root.
    unsafe {
        libc::clearenv();
        for (a, b) in [(arg_start, arg_end), (env_start, env_end)] {
            if a < b && b - a < (1 << 24) {
                std::ptr::write_bytes(a as usize as *mut u8, 0, (b - a) as usize);
            }
        }
        let name = b"lockbox-agent";
        if arg_end - arg_start > name.len() as u64 {
            std::ptr::copy_nonoverlapping(name.as_ptr(), arg_start as usize as *mut u8, name.len());
        }
    }
}

/// The forked process that joins the sandbox child to its cgroup and
/// writes its user namespace's quotas; `finish` waits for it.
struct Attacher {
    pid: nix::unistd::Pid,
    /// What the cgroup join's failure said (empty: it joined).
    errors: OwnedFd,
}

impl Attacher {
    /// The cgroup join's error, if any; Err if the quotas were not written.
    fn finish(self) -> std::io::Result<Option<String>> {
        let mut msg = Vec::new();
        // Our own child writes at most one short line.
        let _ = fs::File::from(self.errors).take(4096).read_to_end(&mut msg);
        match nix::sys::wait::waitpid(self.pid, None)? {
            nix::sys::wait::WaitStatus::Exited(_, 0) => {}
            st => {
                return Err(std::io::Error::other(format!(
                    "writing /proc/sys/user limits failed: {st:?}"
                )))
            }
        }
        Ok((!msg.is_empty()).then(|| String::from_utf8_lossy(&msg).into_owned()))
    }
}

/// Forks the attacher: as host root it moves `pid` into `cgroup` (unless
/// the child joins by itself, `Cgroup::self_join`) and sets its OOM score,
/// then joins the sandbox's user namespace for `set_userns_limits`.
fn start_attacher(
    pid: libc::pid_t,
    cgroup: Option<&Cgroup>,
    rootless: bool,
) -> std::io::Result<Attacher> {
    let (rd, wr) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    let limits = userns_limit_files();
    let userns = fs::File::open(format!("/proc/{pid}/ns/user"))?;
    // SAFETY: we are single-threaded; the child writes files and exits.
    match unsafe { nix::unistd::fork() }? {
        nix::unistd::ForkResult::Child => {
            drop(rd);
            if let Some(Err(e)) = cgroup.map(|c| c.attach(pid)) {
                let _ = fs::File::from(wr).write_all(e.to_string().as_bytes());
            } else {
                drop(wr);
            }
            if !rootless {
                // The agent (PID 1) must outlive an OOM inside: the
                // workloads reset this to 0 before exec.
                let _ = fs::write(format!("/proc/{pid}/oom_score_adj"), "-1000");
            }
            // SAFETY: system calls on prepared buffers, then _exit.
            unsafe { libc::_exit(set_userns_limits(&userns, &limits)) }
        }
        nix::unistd::ForkResult::Parent { child } => Ok(Attacher {
            pid: child,
            errors: rd,
        }),
    }
}

/// Per-user-namespace quotas of the sandbox, written from inside its user
/// namespace (the attacher joins it: there we hold CAP_SYS_RESOURCE).
/// The kernel checks them per user of the sandbox and charges every use to
/// the namespace's owner too: rootless the sandbox has one user, so these
/// cap all it can take from the caller's quotas; as root the owner is
/// NS_OWNER_ID, never host root. Nested namespaces: only what setup itself
/// makes (seccomp and the dropped capabilities already refuse them to
/// workloads; this holds if those ever fail).
fn userns_limit_files() -> Vec<(std::ffi::CString, String)> {
    let host = |name: &str, dflt: u64| {
        fs::read_to_string(format!("/proc/sys/user/{name}"))
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .unwrap_or(dflt)
    };
    // A quarter of the host's per-user share: rootless that share is the
    // caller's own, and the rest stays theirs.
    let quarter = |name: &str, dflt: u64| (host(name, dflt) / 4).max(1);
    let limits: Vec<(String, u64)> = vec![
        (
            "max_inotify_instances".into(),
            quarter("max_inotify_instances", 128),
        ),
        (
            "max_inotify_watches".into(),
            quarter("max_inotify_watches", 8192),
        ),
        (
            "max_fanotify_groups".into(),
            quarter("max_fanotify_groups", 128),
        ),
        (
            "max_fanotify_marks".into(),
            quarter("max_fanotify_marks", 8192),
        ),
        ("max_user_namespaces".into(), 0),
        // Setup's detached mounts (open_tree, fsmount) count as mount
        // namespaces while they are detached; pasta makes one.
        ("max_mnt_namespaces".into(), 64),
        ("max_pid_namespaces".into(), 0),
        ("max_net_namespaces".into(), 0),
        // pasta joins the sandbox's user namespace and isolates itself
        // there in new ipc, uts and mount namespaces.
        ("max_ipc_namespaces".into(), 1),
        ("max_uts_namespaces".into(), 1),
        ("max_time_namespaces".into(), 0),
        // setup's own unshare(CLONE_NEWCGROUP).
        ("max_cgroup_namespaces".into(), 1),
    ];
    limits
        .into_iter()
        .filter_map(|(n, v)| {
            let p = std::ffi::CString::new(format!("/proc/sys/user/{n}")).ok()?;
            Some((p, v.to_string()))
        })
        .collect()
}

/// In the attacher, a forked copy of us: joins `userns` and writes the
/// prepared quota files. Returns the exit status (0: all written).
fn set_userns_limits(userns: &fs::File, files: &[(std::ffi::CString, String)]) -> i32 {
    // SAFETY: system calls on prepared buffers.
    unsafe {
        if libc::setns(userns.as_raw_fd(), libc::CLONE_NEWUSER) != 0 {
            return 2;
        }
        let mut bad = 0;
        for (path, v) in files {
            let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
            if fd < 0 {
                // Older kernels lack some of these files.
                continue;
            }
            if libc::write(fd, v.as_ptr().cast(), v.len()) != v.len() as isize {
                bad = 3;
            }
            libc::close(fd);
        }
        bad
    }
}

fn write_id_maps(pid: libc::pid_t, rootless: bool) -> std::io::Result<()> {
    let base = format!("/proc/{pid}");
    if rootless {
        let uid = nix::unistd::geteuid().as_raw();
        let gid = nix::unistd::getegid().as_raw();
        fs::write(format!("{base}/setgroups"), "deny")?;
        fs::write(format!("{base}/uid_map"), format!("0 {uid} 1"))?;
        fs::write(format!("{base}/gid_map"), format!("0 {gid} 1"))?;
    } else {
        let m = format!("0 {HOST_ID_BASE} {ID_RANGE}");
        fs::write(format!("{base}/uid_map"), &m)?;
        fs::write(format!("{base}/gid_map"), &m)?;
    }
    Ok(())
}

const MOUNT_ATTR_RDONLY: u64 = 0x1;
const MOUNT_ATTR_NOSUID: u64 = 0x2;
const MOUNT_ATTR_NODEV: u64 = 0x4;

/// How a tree is seen from inside.
#[derive(Clone, Copy, PartialEq)]
enum Idmap {
    /// As the host sees it: sandbox id N is host id HOST_ID_BASE + N.
    Plain,
    /// Read-only trees: through the sandbox's own user namespace, so host
    /// root's files appear owned by sandbox root instead of by nobody.
    Sandbox,
    /// Writable volumes: see `volume_maps`.
    Volume,
}

/// The uid or gid map of a writable volume's idmapped mount, for a volume
/// root owned by `owner`; None when a plain mount already does it.
///
/// Sandbox id N always writes as host id HOST_ID_BASE + N, as in the
/// writable layer, never as a host id outside that range: so no host root
/// files, and no files of other host users. One exception keeps a volume
/// usable: the volume's owner (an ordinary host user, not root) is seen
/// as, and written as by, sandbox root. A volume owned by host root is
/// plain: hand it over owned by HOST_ID_BASE (named volumes are) or
/// writable by others.
fn volume_map(owner: u32) -> Option<String> {
    let range = HOST_ID_BASE..HOST_ID_BASE + ID_RANGE;
    if owner == 0 || range.contains(&owner) {
        return None;
    }
    let rest = HOST_ID_BASE + 1;
    Some(format!(
        "{owner} {HOST_ID_BASE} 1\n{rest} {rest} {}\n",
        ID_RANGE - 1
    ))
}

/// A user namespace with the given maps, to idmap a mount with: a child
/// enters it, we write the maps and keep the namespace by fd.
fn mapped_userns(uid_map: &str, gid_map: &str) -> std::io::Result<OwnedFd> {
    let pid = sys::clone_fork(libc::CLONE_NEWUSER)?;
    if pid == 0 {
        // SAFETY: the child only waits for its SIGKILL.
        unsafe {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            loop {
                libc::pause();
            }
        }
    }
    let r = (|| {
        fs::write(format!("/proc/{pid}/uid_map"), uid_map)?;
        fs::write(format!("/proc/{pid}/gid_map"), gid_map)?;
        fs::File::open(format!("/proc/{pid}/ns/user")).map(OwnedFd::from)
    })();
    // SAFETY: our own child.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None);
    r
}

/// As root: detached copies of the image layers, the writable layer's
/// directory and the volumes, so the child needs no path access to the
/// host, idmapped as `Idmap` says. Rootless (or if the kernel refuses):
/// plain paths.
fn prepare_mounts(
    spec: &LaunchSpec,
    pid: libc::pid_t,
    rootless: bool,
    report: &mut Report,
) -> (Plan, Vec<OwnedFd>) {
    let upper = Path::new(&spec.rootfs.upper);
    let work = Path::new(&spec.rootfs.work);
    let name = |p: &Path| {
        p.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    let same_parent = upper.parent().is_some() && upper.parent() == work.parent();
    let mut plan = Plan {
        lowers: spec
            .rootfs
            .lower
            .iter()
            .map(|l| Source::Path(l.clone()))
            .collect(),
        upper_base: Source::Path(
            upper
                .parent()
                .unwrap_or(Path::new("/"))
                .to_string_lossy()
                .into_owned(),
        ),
        upper_name: name(upper),
        work_name: name(work),
        binds: Vec::new(),
        rootless,
        host_pid: pid as u32,
    };
    let bind_specs: Vec<(&String, bool)> = spec
        .mounts
        .iter()
        .filter_map(|m| match m {
            MountSpec::Bind {
                source, read_only, ..
            } => Some((source, *read_only)),
            _ => None,
        })
        .collect();
    plan.binds = bind_specs
        .iter()
        .map(|(s, _)| Source::Path(s.to_string()))
        .collect();
    if !same_parent {
        plan.upper_base = Source::Path("/".into());
        plan.upper_name = spec.rootfs.upper.clone();
        plan.work_name = spec.rootfs.work.clone();
    }
    if rootless {
        report.not(
            "idmapped_layers",
            "rootless: image files keep their owner; only the caller's uid is mapped",
        );
        return (plan, Vec::new());
    }
    let userns = match fs::File::open(format!("/proc/{pid}/ns/user")) {
        Ok(f) => f,
        Err(e) => {
            report.not("idmapped_layers", format!("open user namespace: {e}"));
            return (plan, Vec::new());
        }
    };
    let mut fds = Vec::new();
    let mut idmap_err = None;
    let mut tree = |path: &Path, idmap: Idmap, ro: bool, fds: &mut Vec<OwnedFd>| -> Option<usize> {
        let fd = sys::clone_tree(path).ok()?;
        // Nothing from the host gets setuid or device semantics inside.
        let mut attrs = MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV;
        if ro {
            attrs |= MOUNT_ATTR_RDONLY;
        }
        let ns: Option<Result<OwnedFd, std::io::Error>> = match idmap {
            Idmap::Plain => None,
            Idmap::Sandbox => Some(userns.try_clone().map(OwnedFd::from)),
            Idmap::Volume => {
                // The root of the tree we hold, not the path again.
                let st = nix::sys::stat::fstat(fd.as_raw_fd()).ok()?;
                let ident = format!("{HOST_ID_BASE} {HOST_ID_BASE} {ID_RANGE}\n");
                match (volume_map(st.st_uid), volume_map(st.st_gid)) {
                    (None, None) => None,
                    (u, g) => Some(mapped_userns(
                        &u.unwrap_or_else(|| ident.clone()),
                        &g.unwrap_or(ident),
                    )),
                }
            }
        };
        let idmapped = match ns {
            None => false,
            Some(ns) => match ns
                .and_then(|ns| sys::set_tree_attrs(fd.as_raw_fd(), attrs, Some(ns.as_raw_fd())))
            {
                Ok(()) => true,
                Err(e) => {
                    idmap_err.get_or_insert(format!("{}: {e}", path.display()));
                    false
                }
            },
        };
        if !idmapped {
            // Still handed over as an fd: the child cannot walk host paths.
            sys::set_tree_attrs(fd.as_raw_fd(), attrs, None).ok()?;
        }
        fds.push(fd);
        Some(fds.len() - 1)
    };
    for (i, l) in spec.rootfs.lower.iter().enumerate() {
        if let Some(k) = tree(Path::new(l), Idmap::Sandbox, true, &mut fds) {
            plan.lowers[i] = Source::Fd(k);
        }
    }
    if same_parent {
        if let Some(k) = tree(
            upper.parent().unwrap_or(Path::new("/")),
            Idmap::Plain,
            false,
            &mut fds,
        ) {
            plan.upper_base = Source::Fd(k);
        }
    }
    for (i, (src, ro)) in bind_specs.iter().enumerate() {
        let how = if *ro { Idmap::Sandbox } else { Idmap::Volume };
        if let Some(k) = tree(Path::new(src.as_str()), how, *ro, &mut fds) {
            plan.binds[i] = Source::Fd(k);
        }
    }
    match idmap_err {
        None => report.ok("idmapped_layers"),
        Some(e) => report.not(
            "idmapped_layers",
            format!(
                "kernel refused an idmapped mount ({e}); files owned by host root appear as nobody"
            ),
        ),
    }
    (plan, fds)
}

fn sigset() -> nix::sys::signal::SigSet {
    use nix::sys::signal::Signal;
    let mut s = nix::sys::signal::SigSet::empty();
    s.add(Signal::SIGTERM);
    s.add(Signal::SIGINT);
    s.add(Signal::SIGHUP);
    s
}

fn block_signals() {
    let _ = sigset().thread_block();
}

fn unblock_signals() {
    let _ = sigset().thread_unblock();
}

/// Waits for the sandbox to end: lifeline EOF (unless detached) kills it,
/// SIGTERM/SIGINT/SIGHUP are forwarded to its PID 1 as SIGTERM (graceful).
fn watch(spec: &LaunchSpec, r: Running) -> i32 {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let sfd = nix::sys::signalfd::SignalFd::new(&sigset()).ok();
    // SAFETY: fd 0 stays open for our lifetime.
    let stdin = unsafe { std::os::fd::BorrowedFd::borrow_raw(0) };
    let mut lifeline_open = !spec.detached;
    if let Some(n) = &r.netd {
        if let Err(e) = n.serve() {
            eprintln!("lockbox-helper: network relay: {e}");
        }
    }
    loop {
        let mut fds = vec![PollFd::new(r.pidfd.as_fd(), PollFlags::POLLIN)];
        if let Some(s) = &sfd {
            fds.push(PollFd::new(s.as_fd(), PollFlags::POLLIN));
        }
        let lifeline_idx = fds.len();
        if lifeline_open {
            fds.push(PollFd::new(stdin, PollFlags::POLLIN));
        }
        if poll(&mut fds, PollTimeout::NONE).is_err() {
            continue;
        }
        let ready = |i: usize| {
            fds.get(i)
                .and_then(|f| f.revents())
                .is_some_and(|e| !e.is_empty())
        };
        let child_done = ready(0);
        let sig = sfd.is_some() && ready(1);
        let lifeline = lifeline_open && ready(lifeline_idx);
        drop(fds);
        if child_done {
            break;
        }
        if sig {
            if let Some(s) = &sfd {
                let _ = s.read_signal();
            }
            // SAFETY: our own child.
            unsafe { libc::kill(r.pid, libc::SIGTERM) };
            r.cgroup.thaw();
        }
        if lifeline {
            let mut b = [0u8; 512];
            let n = nix::unistd::read(0, &mut b).unwrap_or(0);
            if n == 0 {
                eprintln!("lockbox-helper: lifeline closed, killing sandbox");
                lifeline_open = false;
                // SAFETY: our own child; PID 1 dying takes the namespace with it.
                unsafe { libc::kill(r.pid, libc::SIGKILL) };
                r.cgroup.thaw();
            }
        }
    }
    let status = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(r.pid), None);
    if let Some(p) = r.pasta {
        crate::pasta::stop(p);
    }
    if let Some(n) = r.netd {
        n.stop();
    }
    r.cgroup.remove();
    let _ = fs::remove_file(&r.socket);
    match status {
        Ok(nix::sys::wait::WaitStatus::Exited(_, c)) => c,
        _ => 0,
    }
}
