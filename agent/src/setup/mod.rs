//! The sandbox child: runs right after the namespace-creating clone, as
//! PID 1 of the new pid namespace. It waits for the supervisor to write its
//! id maps and hand over the prepared mounts, builds the root filesystem,
//! and then turns into the agent (see `init`).

pub mod devfs;
pub mod mountfd;
pub mod net;
pub mod plan;
pub mod procfs;
pub mod rootfs;
pub mod trace;

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;

use anyhow::{Context, Result};
use lockbox_protocol::{ErrorCode, LaunchSpec, NetworkMode};

use crate::report::Report;
use plan::{Plan, SetupResult};

/// Never returns: exits with the agent's status.
pub fn child_main(spec: LaunchSpec, sync: UnixStream, go: OwnedFd, listener: OwnedFd) -> ! {
    let mut report = Report::default();
    // No mark before the plan arrives: until then the child only waits
    // while the supervisor works, and the timeline is one sequence.
    let mut trace = trace::Trace::default();
    let result = build(&spec, &sync, go, &mut report, &mut trace);
    trace.mark("child_done");
    let (error, code) = match &result {
        Ok(_) => (None, None),
        Err(e) => (Some(format!("{e:#}")), Some(code_of(e))),
    };
    let msg = SetupResult {
        error,
        code,
        report: report.clone(),
        trace: trace.take(),
    };
    let mut s = &sync;
    let _ = s.write_all(&serde_json::to_vec(&msg).unwrap_or_default());
    drop(sync);
    let status = match result {
        Ok(confine) => crate::init::run(spec, listener, confine.0, confine.1),
        Err(_) => 1,
    };
    std::process::exit(status)
}

fn code_of(e: &anyhow::Error) -> ErrorCode {
    for c in e.chain() {
        if let Some(w) = c.downcast_ref::<lockbox_protocol::WireError>() {
            return w.code;
        }
        if let Some(t) = c.downcast_ref::<mountfd::TargetError>() {
            return ErrorCode::from_errno(t.errno());
        }
        if let Some(io) = c.downcast_ref::<std::io::Error>() {
            if let Some(n) = io.raw_os_error() {
                return ErrorCode::from_errno(n);
            }
        }
    }
    ErrorCode::Internal
}

fn build(
    spec: &LaunchSpec,
    sync: &UnixStream,
    go: OwnedFd,
    report: &mut Report,
    trace: &mut trace::Trace,
) -> Result<(crate::confine::Confine, u32)> {
    // Die with the supervisor: it owns the cgroup and the socket.
    // SAFETY: prctl with plain integer arguments.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
    let mut fds = crate::sys::recv_fds(sync.as_raw_fd()).context("waiting for the supervisor")?;
    let mut buf = Vec::new();
    let mut s = sync;
    let mut chunk = vec![0u8; 1 << 16];
    let n = s.read(&mut chunk)?;
    buf.extend_from_slice(&chunk[..n]);
    let mut plan: Plan = serde_json::from_slice(&buf).context("bad plan from supervisor")?;
    trace.mark("child_plan_received");
    become_root(&plan)?;
    // setuid cleared the death signal.
    // SAFETY: as above.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
    report.ok("userns");
    report.ok("pidns");
    report.ok("ipcns");
    report.ok("utsns");
    trace.mark("child_become_root");

    // Everything the host provides is taken as fds now: after `enter` the
    // host's root is gone.
    rootfs::adopt_paths(spec, &mut plan, &mut fds)?;
    trace.mark("child_adopt_paths");
    let devices = devfs::HostDevices::clone().context("/dev")?;
    trace.mark("child_host_devices");
    let kernel = procfs::KernelMounts::create().context("/proc")?;
    trace.mark("child_proc_sys_fsmount");
    let root = rootfs::enter(spec, &plan, &fds, report)?;
    trace.mark("child_overlay_pivot");
    report.ok("mountns");
    let dev_null = devfs::populate(&root, devices, spec.limits.memory_mib).context("/dev")?;
    trace.mark("child_dev");
    procfs::mount_proc(&root, &kernel, &dev_null).context("/proc")?;
    report.ok("proc_masked");
    trace.mark("child_proc_mask");
    match procfs::mount_sys(&root, kernel).context("/sys")? {
        None => report.ok("sys_read_only"),
        Some(why) => report.not("sys", format!("/sys left absent: {why}")),
    }
    trace.mark("child_sys");
    rootfs::volumes(spec, &root, &plan, &fds, report)?;
    drop(fds);
    trace.mark("child_volumes");

    if spec.workdir.starts_with('/') && !Path::new(&spec.workdir).exists() {
        // Like an image WORKDIR: the default cwd of every exec must exist.
        // Made by the same no-symlink walk as mount targets: PID 1 still
        // holds every capability here, and an image link must not steer
        // it into a writable volume.
        mountfd::open_target(&root, &spec.workdir, mountfd::Kind::Dir)
            .with_context(|| format!("create workdir {}", spec.workdir))?;
    }
    let host = if spec.hostname.is_empty() {
        &spec.name
    } else {
        &spec.hostname
    };
    if !host.is_empty() {
        nix::unistd::sethostname(host).context("sethostname")?;
    }
    net::loopback_up().context("bring up loopback")?;
    report.ok("netns");
    trace.mark("child_workdir_hostname_lo");
    if spec.network.mode == NetworkMode::Outbound {
        // pasta answers DNS on its forwarder address.
        // Written without following a link: the image's resolv.conf may
        // point at a volume file or at one of PID 1's own descriptors.
        let r = mountfd::open_target(&root, "/etc", mountfd::Kind::Dir)
            .map_err(anyhow::Error::from)
            .and_then(|etc| {
                write_new_file(
                    &etc,
                    "resolv.conf",
                    format!("nameserver {}\n", crate::pasta::DNS),
                )
            });
        if let Err(e) = r {
            report.not("dns", format!("cannot write /etc/resolv.conf: {e:#}"));
        }
    }
    // Before confinement, as the root it was built as: a name given at
    // create (or the image's USER) must exist in this root.
    let user =
        crate::users::resolve(&spec.user).with_context(|| format!("user {:?}", spec.user))?;
    trace.mark("child_user_resolve");
    let filters = crate::confine::Filters::compile()?;
    trace.mark("child_seccomp_compile");
    // The supervisor joins us to our cgroup meanwhile; nothing of the
    // sandbox runs before it has.
    let mut word = [0u8; 8];
    let n = std::fs::File::from(go)
        .read(&mut word)
        .context("waiting for the cgroup join")?;
    if &word[..n] != plan::GO {
        anyhow::bail!("supervisor went away before the cgroup join");
    }
    trace.mark("child_go_received");
    // Unshared only now, after the supervisor moved us into our cgroup, so
    // that cgroup becomes the namespace's root.
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWCGROUP).context("cgroup namespace")?;
    report.ok("cgroupns");
    trace.mark("child_cgroupns");
    let confine = crate::confine::Confine::lock_agent_with(spec, user, report, filters)?;
    trace.mark("child_caps_landlock_seccomp");
    Ok((confine, plan.host_pid))
}

/// Replaces `name` in the directory `dir` (an O_PATH fd) with a regular
/// file holding `text`, never writing through a link or a special file.
fn write_new_file(dir: &OwnedFd, name: &str, text: String) -> Result<()> {
    let c = std::ffi::CString::new(name)?;
    // An existing entry (a link, a FIFO, a file) is removed, not opened.
    // SAFETY: valid dir fd and C string.
    unsafe { libc::unlinkat(dir.as_raw_fd(), c.as_ptr(), 0) };
    // SAFETY: valid dir fd and C string; O_EXCL|O_NOFOLLOW: only a new file.
    let fd = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            c.as_ptr(),
            libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            0o644,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("create {name}"));
    }
    // SAFETY: fresh fd.
    let mut f =
        std::fs::File::from(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) });
    f.write_all(text.as_bytes())?;
    Ok(())
}

fn become_root(plan: &Plan) -> Result<()> {
    use nix::unistd::{setresgid, setresuid, Gid, Uid};
    let root_g = Gid::from_raw(0);
    let root_u = Uid::from_raw(0);
    if !plan.rootless {
        // Drop the host's supplementary groups (host gid 0 among them).
        nix::unistd::setgroups(&[root_g]).context("setgroups")?;
    }
    setresgid(root_g, root_g, root_g).context("setresgid")?;
    setresuid(root_u, root_u, root_u).context("setresuid")?;
    Ok(())
}
