//! qemu's jail, in the spirit of Firecracker's jailer: its own user,
//! mount, pid, ipc, uts, network and cgroup namespaces; a root of a small
//! read-only tmpfs holding only /usr (qemu, its libraries and firmware),
//! the guest's kernel and initramfs, the sandbox's disk images and
//! /dev/{null,urandom} (and /dev/kvm when used); an unprivileged host uid;
//! no capabilities; no_new_privs. qemu adds its own seccomp filter
//! (`-sandbox on,...`, in the engine's command line).
//!
//! The mounts are cloned here by the helper before it drops anything
//! (it may read the sandbox's directory; the VMM's uid may not), then
//! attached inside the jail.

use std::ffi::CString;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

use super::root::{
    self, ctx, cvt, die_with, report_and_exit, tree, Tree, MOUNT_ATTR_NODEV, MOUNT_ATTR_NOEXEC,
    MOUNT_ATTR_NOSUID, MOUNT_ATTR_RDONLY,
};
use super::VmmSpec;
use crate::cgroup::Cgroup;
use crate::sys;

pub struct Mounts {
    trees: Vec<Tree>,
    /// Top-level names that are symlinks on the host (merged /usr).
    links: Vec<(String, PathBuf)>,
    /// qemu's Landlock rules; None where the kernel has no Landlock.
    landlock: Option<Vec<super::landlock::Rule>>,
}

pub struct Child {
    pub pid: libc::pid_t,
    pub pidfd: OwnedFd,
    /// qemu's stdout/stderr, relayed with a budget (set by the caller).
    pub log: Option<super::log_relay::Relay>,
}

impl Mounts {
    pub fn prepare(spec: &VmmSpec) -> io::Result<Mounts> {
        let (mut trees, links) = root::system()?;
        let dev = MOUNT_ATTR_NOSUID | MOUNT_ATTR_NOEXEC;
        trees.push(tree(Path::new("/dev/urandom"), "/dev/urandom", dev)?);
        if spec.kvm {
            trees.push(tree(Path::new("/dev/kvm"), "/dev/kvm", dev)?);
        }
        for b in &spec.binds {
            if !b.dst.starts_with('/') || b.dst.contains("..") || b.dst == "/" {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("bad jail path {:?}", b.dst),
                ));
            }
            let attrs = MOUNT_ATTR_NOSUID
                | MOUNT_ATTR_NODEV
                | MOUNT_ATTR_NOEXEC
                | if b.writable { 0 } else { MOUNT_ATTR_RDONLY };
            trees.push(tree(Path::new(&b.src), &b.dst, attrs)?);
        }
        let landlock = (super::landlock::kernel_abi() > 0)
            .then(|| {
                let t = trees
                    .iter()
                    .map(|t| (t.dst.as_path(), t.is_dir, t.writable));
                super::landlock::jail_rules(Path::new(&spec.qemu), t)
            })
            .transpose()?;
        Ok(Mounts {
            trees,
            links,
            landlock,
        })
    }
}

/// Forks the jail's outer process: it joins the cgroup, drops to the
/// VMM's uid, makes the namespaces and forks qemu as PID 1 of the new pid
/// namespace, then waits for it. Any failure before qemu's execve comes
/// back through a close-on-exec pipe.
// Each fd qemu inherits is its own argument: their numbers are fixed
// (see Fds), and a struct would only rename them.
#[allow(clippy::too_many_arguments)]
pub fn spawn(
    spec: &VmmSpec,
    mounts: &Mounts,
    listener: OwnedFd,
    qmp: Option<OwnedFd>,
    shares: &[(OwnedFd, RawFd)],
    net: Option<&OwnedFd>,
    cgroup: &Cgroup,
    root: bool,
) -> io::Result<Child> {
    let argv: Vec<CString> = std::iter::once(spec.qemu.as_str())
        .chain(spec.args.iter().map(String::as_str))
        .map(|a| CString::new(a).map_err(|_| io::Error::other("NUL in qemu argument")))
        .collect::<io::Result<_>>()?;
    let kvm_gid = if spec.kvm && root {
        use std::os::unix::fs::MetadataExt;
        Some(std::fs::metadata("/dev/kvm")?.gid())
    } else {
        None
    };
    let mut p = [0; 2];
    // SAFETY: pipe2 into a local array.
    if unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fresh fds from pipe2.
    let (rd, wr) = unsafe { (OwnedFd::from_raw_fd(p[0]), OwnedFd::from_raw_fd(p[1])) };
    let helper = std::process::id() as libc::pid_t;
    let fsize = max_file_size(spec);
    // SAFETY: the helper is single-threaded here; the child only makes
    // system calls and exits.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    if pid == 0 {
        drop(rd);
        let lim = libc::rlimit {
            rlim_cur: fsize,
            rlim_max: fsize,
        };
        // SAFETY: setrlimit with a local value; lowering needs no privilege.
        if unsafe { libc::setrlimit(libc::RLIMIT_FSIZE, &lim) } != 0 {
            report_and_exit(&wr, &io::Error::last_os_error());
        }
        let fds = Fds {
            agent: &listener,
            qmp: qmp.as_ref(),
            net,
            shares,
        };
        let e = outer(mounts, &fds, cgroup, root, kvm_gid, helper, &argv, &wr);
        report_and_exit(&wr, &e);
    }
    drop(wr);
    let pidfd = sys::pidfd_open(pid)?;
    let mut msg = String::new();
    let _ = (&std::fs::File::from(rd)).read_to_string(&mut msg);
    if !msg.is_empty() {
        // SAFETY: our own child.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
            libc::waitpid(pid, std::ptr::null_mut(), 0);
        }
        return Err(io::Error::other(msg));
    }
    Ok(Child {
        pid,
        pidfd,
        log: None,
    })
}

/// The largest file qemu may write: its writable disk (which a guest
/// cannot grow through the block device, but a qemu the guest took over
/// could ftruncate or fallocate to fill the host's disk) or a checkpoint's
/// state (at most the guest's RAM and device state, below the cgroup's
/// memory limit), with a margin. Beyond it a write fails with SIGXFSZ.
fn max_file_size(spec: &VmmSpec) -> u64 {
    let mut max = spec.limits.memory_mib.unwrap_or(0) << 20;
    for b in spec.binds.iter().filter(|b| b.writable) {
        if let Ok(m) = std::fs::metadata(&b.src) {
            if m.is_file() {
                max = max.max(m.len());
            }
        }
    }
    max + (16 << 20)
}

/// The sockets qemu inherits: the agent port's listener as fd 3, the QMP
/// monitor's as fd 4, the network link's as fd 5 (vmm/net.rs).
struct Fds<'a> {
    agent: &'a OwnedFd,
    qmp: Option<&'a OwnedFd>,
    net: Option<&'a OwnedFd>,
    /// virtiofsd's vhost-user sockets, each at the number qemu's command
    /// line names (vmm/share.rs).
    shares: &'a [(OwnedFd, RawFd)],
}

/// Runs in the forked child; returns only on failure.
#[allow(clippy::too_many_arguments)]
fn outer(
    mounts: &Mounts,
    fds: &Fds<'_>,
    cgroup: &Cgroup,
    root: bool,
    kvm_gid: Option<u32>,
    helper: libc::pid_t,
    argv: &[CString],
    wr: &OwnedFd,
) -> io::Error {
    let r = (|| -> io::Result<()> {
        // SAFETY: getpid.
        ctx("join cgroup", cgroup.attach(unsafe { libc::getpid() }))?;
        // SAFETY: credential calls on this (single-threaded) process.
        let (uid, gid) = unsafe {
            if root {
                let groups: Vec<libc::gid_t> = kvm_gid.into_iter().collect();
                ctx(
                    "setgroups",
                    cvt(libc::setgroups(groups.len(), groups.as_ptr())),
                )?;
                ctx(
                    "setresgid",
                    cvt(libc::setresgid(super::VMM_ID, super::VMM_ID, super::VMM_ID)),
                )?;
                ctx(
                    "setresuid",
                    cvt(libc::setresuid(super::VMM_ID, super::VMM_ID, super::VMM_ID)),
                )?;
            }
            (libc::geteuid(), libc::getegid())
        };
        // A changed uid made us not dumpable, which makes /proc/self root's
        // and the id maps below unwritable for us.
        // SAFETY: prctl with integers.
        unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 1, 0, 0, 0) };
        die_with(Some(helper))?;
        let ns = libc::CLONE_NEWUSER
            | libc::CLONE_NEWNS
            | libc::CLONE_NEWPID
            | libc::CLONE_NEWIPC
            | libc::CLONE_NEWUTS
            | libc::CLONE_NEWNET
            | libc::CLONE_NEWCGROUP;
        // SAFETY: unshare with flags.
        ctx("unshare", cvt(unsafe { libc::unshare(ns) }))?;
        ctx(
            "setgroups deny",
            std::fs::write("/proc/self/setgroups", "deny"),
        )?;
        ctx(
            "uid_map",
            std::fs::write("/proc/self/uid_map", format!("0 {uid} 1")),
        )?;
        ctx(
            "gid_map",
            std::fs::write("/proc/self/gid_map", format!("0 {gid} 1")),
        )?;
        // SAFETY: single-threaded; the child execs or exits.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(io::Error::last_os_error());
        }
        if pid == 0 {
            let e = inner(mounts, fds, argv);
            report_and_exit(wr, &e);
        }
        // SAFETY: closing our copy of the pipe's write end: the helper
        // sees EOF when qemu's execve closes the last one.
        unsafe { libc::close(wr.as_raw_fd()) };
        let mut st = 0;
        // SAFETY: waits for our own child.
        unsafe { libc::waitpid(pid, &mut st, 0) };
        // SAFETY: leave without destructors.
        unsafe {
            libc::_exit(if libc::WIFEXITED(st) {
                libc::WEXITSTATUS(st)
            } else {
                128 + libc::WTERMSIG(st)
            })
        }
    })();
    r.err()
        .unwrap_or_else(|| io::Error::other("jail: unreachable"))
}

/// SIGKILL when `parent` goes; and if it already went, go now. `None`
/// for PID 1 of the new pid namespace, whose parent is outside it (its
/// getppid() is 0): a parent that died before the prctl leaves it to the
/// helper's teardown, which kills the whole cgroup.
/// PID 1 of the jail's pid namespace: builds the root and becomes qemu.
fn inner(mounts: &Mounts, fds: &Fds<'_>, argv: &[CString]) -> io::Error {
    let r = (|| -> io::Result<()> {
        die_with(None)?;
        // A fresh proc of the jail's pid namespace; it may be refused where
        // the host's /proc is partly masked, and qemu runs without it.
        root::enter(&mounts.trees, &mounts.links, false, b"lockbox-vmm")?;
        let zero = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: setrlimit with a local value.
        unsafe { libc::setrlimit(libc::RLIMIT_CORE, &zero) };
        // Out of the way first: the agent's move to 3 must not close it.
        // SAFETY: F_DUPFD_CLOEXEC of an fd we hold.
        let qmp = fds
            .qmp
            .map(|q| unsafe { libc::fcntl(q.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 10) });
        // SAFETY: as above.
        let net = fds
            .net
            .map(|n| unsafe { libc::fcntl(n.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 10) });
        move_to(fds.agent.as_raw_fd(), 3)?;
        if let Some(q) = qmp {
            cvt(q)?;
            move_to(q, 4)?;
        }
        if let Some(n) = net {
            cvt(n)?;
            move_to(n, super::net::NET_FD)?;
        }
        // stdout is /dev/null once the helper reported; qemu's console
        // (only with the engine's LOCKBOX_VM_CONSOLE debug switch) goes to
        // the helper's log instead.
        // SAFETY: dup2 of our stderr.
        unsafe { libc::dup2(2, 1) };
        // SAFETY: close every other fd but the pipe (close-on-exec).
        unsafe {
            libc::syscall(
                libc::SYS_close_range,
                if net.is_some() {
                    super::net::NET_FD as u32 + 1
                } else if qmp.is_some() {
                    5u32
                } else {
                    4u32
                },
                u32::MAX,
                libc::CLOSE_RANGE_CLOEXEC,
            )
        };
        if net.is_some() && qmp.is_none() {
            // Nothing of the helper's at 4 (the range above starts at 6).
            // SAFETY: marks an fd close-on-exec, whatever it is.
            unsafe { libc::fcntl(4, libc::F_SETFD, libc::FD_CLOEXEC) };
        }
        super::share::place_fds(fds.shares)?;
        ctx("drop capabilities", crate::caps::drop_all())?;
        // SAFETY: prctl with integers.
        ctx(
            "no_new_privs",
            cvt(unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) }),
        )?;
        if let Some(rules) = &mounts.landlock {
            super::landlock::enforce(rules)?;
        }
        let filters = super::seccomp::programs(argv[0].as_ptr())
            .map_err(|e| io::Error::other(format!("seccomp filter: {e:#}")))?;
        ctx("seccomp", super::seccomp::install(&filters))?;
        die_with(None)?;
        let mut ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
        ptrs.push(std::ptr::null());
        let env: [*const libc::c_char; 1] = [std::ptr::null()];
        // SAFETY: NULL-terminated arrays of valid C strings.
        unsafe { libc::execve(argv[0].as_ptr(), ptrs.as_ptr(), env.as_ptr()) };
        let e = io::Error::last_os_error();
        Err(io::Error::new(e.kind(), format!("execve qemu: {e}")))
    })();
    r.err()
        .unwrap_or_else(|| io::Error::other("jail: unreachable"))
}

/// dup2 without close-on-exec (qemu inherits it as `fd=3`).
fn move_to(fd: RawFd, to: RawFd) -> io::Result<()> {
    if fd == to {
        // SAFETY: clears FD_CLOEXEC on our fd.
        return cvt(unsafe { libc::fcntl(fd, libc::F_SETFD, 0) });
    }
    // SAFETY: dup2 of an fd we hold.
    cvt(unsafe { libc::dup2(fd, to) })
}
