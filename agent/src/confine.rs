//! Confinement. The agent (PID 1) confines itself once, right after setup:
//! bounding set and capabilities reduced to a minimal set, no_new_privs,
//! Landlock (all access beneath the sandbox root, nothing outside it) and
//! the seccomp filter. Every process it starts inherits all of that through
//! fork and exec, so the per-exec part (between the spawner's clone and
//! exec, system calls only, see spawner.rs) is small: signal mask, session,
//! rlimits, user, cwd; the OOM score and the small per-exec filter are the
//! spawner's own, inherited.
//! Installing the filter once also spares a BPF JIT per exec, and a
//! compromised agent is held by the same walls as the workloads.

use std::io;

use anyhow::{Context, Result};
use landlock::{
    Access, AccessFs, PathBeneath, PathFd, Ruleset, RulesetAttr, RulesetCreatedAttr, RulesetStatus,
    ABI,
};
use lockbox_protocol::LaunchSpec;

use crate::report::Report;

/// What sandbox root keeps: what ordinary package installs and servers
/// need. Everything else (SYS_ADMIN, NET_ADMIN, SYS_PTRACE,
/// DAC_READ_SEARCH, SETFCAP, MKNOD, NET_RAW, SETPCAP, ...) is gone,
/// including from the bounding set, so no exec can regain it.
const KEEP_CAPS: [u32; 9] = [
    0,  // CHOWN
    1,  // DAC_OVERRIDE
    3,  // FOWNER
    4,  // FSETID
    5,  // KILL
    6,  // SETGID
    7,  // SETUID
    10, // NET_BIND_SERVICE
    29, // AUDIT_WRITE
];

pub struct Confine {
    nofile: Option<u64>,
    exec_filter: std::sync::Arc<seccompiler::BpfProgram>,
    rootless: bool,
    /// The sandbox's user, resolved once the root was built: what execs
    /// and file requests without a user of their own run as.
    pub default_user: crate::users::User,
}

fn cvt(r: libc::c_int) -> io::Result<()> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn landlock_self() -> Result<RulesetStatus> {
    let abi = ABI::V5;
    let status = Ruleset::default()
        .handle_access(AccessFs::from_all(abi))?
        .create()?
        .add_rule(PathBeneath::new(PathFd::new("/")?, AccessFs::from_all(abi)))?
        .restrict_self()?;
    Ok(status.ruleset)
}

/// The seccomp programs, compiled (installed by `lock_agent_with`).
pub struct Filters {
    agent: Vec<seccompiler::BpfProgram>,
    exec: std::sync::Arc<seccompiler::BpfProgram>,
}

impl Filters {
    pub fn compile() -> Result<Filters> {
        Ok(Filters {
            agent: crate::seccomp::program()?,
            exec: std::sync::Arc::new(crate::seccomp::exec_program()?),
        })
    }
}

impl Confine {
    /// Confines the calling process (the agent, after setup, while it is
    /// still single-threaded) and records what took effect.
    pub fn lock_agent(
        spec: &LaunchSpec,
        default_user: crate::users::User,
        report: &mut Report,
    ) -> Result<Confine> {
        Self::lock_agent_with(spec, default_user, report, Filters::compile()?)
    }

    /// `lock_agent` with filters compiled beforehand (native setup compiles
    /// them while it waits for the cgroup join, off the critical path).
    pub fn lock_agent_with(
        spec: &LaunchSpec,
        default_user: crate::users::User,
        report: &mut Report,
        compiled: Filters,
    ) -> Result<Confine> {
        let Filters {
            agent: filters,
            exec: exec_filter,
        } = compiled;
        crate::caps::limit_to(&KEEP_CAPS).context("reduce capabilities")?;
        report.ok("caps");
        // SAFETY: prctl with integer arguments.
        cvt(unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) })
            .context("no_new_privs")?;
        report.ok("no_new_privs");
        match landlock_self() {
            Ok(RulesetStatus::FullyEnforced) | Ok(RulesetStatus::PartiallyEnforced) => {
                report.ok("landlock")
            }
            Ok(RulesetStatus::NotEnforced) => {
                report.not("landlock", "the kernel does not enforce Landlock")
            }
            Err(e) => report.not("landlock", format!("{e}")),
        }
        for p in &filters {
            seccompiler::apply_filter(p).context("install seccomp filter")?;
        }
        report.ok("seccomp");
        report.ok("rlimits");
        Ok(Confine {
            nofile: spec.limits.nofile,
            exec_filter,
            rootless: std::fs::read_to_string("/proc/self/setgroups")
                .map(|s| s.trim() == "deny")
                .unwrap_or(false),
            default_user,
        })
    }

    /// What each new process applies to itself (see `apply_in_child`).
    pub fn child_setup(&self) -> ChildSetup {
        ChildSetup {
            nofile: self.nofile,
            rootless: self.rootless,
            filter: self.exec_filter.clone(),
        }
    }
}

/// The per-exec settings every process gets, whatever the request.
pub struct ChildSetup {
    nofile: Option<u64>,
    rootless: bool,
    filter: std::sync::Arc<seccompiler::BpfProgram>,
}

/// Raises the calling process's OOM score to the maximum. The OOM killer
/// takes workloads first: the agent is at -1000 where the supervisor may
/// set that, but a host without CAP_SYS_RESOURCE (rootless, some
/// containers) leaves it at 0, and memory held outside any resident set
/// (tmpfs, pipes) would then make the agent, with the largest resident
/// set, the victim. Raising needs no privilege, but while a process is not
/// dumpable its /proc files belong to host root, which no id here can
/// open: dumpable just for the open. Only for a process that shares its
/// memory with nobody (the spawner, when it starts).
pub fn raise_oom_score() {
    // SAFETY: plain system calls on this process.
    unsafe {
        libc::prctl(libc::PR_SET_DUMPABLE, 1);
        let fd = libc::open(
            c"/proc/self/oom_score_adj".as_ptr(),
            libc::O_WRONLY | libc::O_CLOEXEC,
        );
        libc::prctl(libc::PR_SET_DUMPABLE, 0);
        if fd >= 0 {
            libc::write(fd, b"1000".as_ptr().cast(), 4);
            libc::close(fd);
        }
    }
}

/// Installs the per-exec filter (openat2 refused) on the calling process:
/// the spawner, which never calls openat2, so every process it clones
/// inherits the filter instead of attaching it between clone and exec.
pub fn install_exec_filter(s: &ChildSetup) -> io::Result<()> {
    seccompiler::apply_filter(&s.filter).map_err(|e| io::Error::other(e.to_string()))
}

fn raw(r: libc::c_long) -> Result<(), i32> {
    if r < 0 {
        Err(io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EINVAL))
    } else {
        Ok(())
    }
}

/// Run in a new process between clone and exec, on memory it shares with
/// the spawner: raw system calls only (glibc's set*id wrappers would
/// consult thread state that is the spawner's), no allocation. Returns the
/// errno of the step that failed.
pub fn apply_in_child(
    s: &ChildSetup,
    uid: u32,
    gid: u32,
    tty: bool,
    cwd: *const libc::c_char,
) -> Result<(), i32> {
    // SAFETY: every call below is a plain system call on this process.
    unsafe {
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        raw(libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut()) as libc::c_long)?;
        raw(libc::syscall(libc::SYS_setsid))?;
        if tty {
            raw(libc::ioctl(0, libc::TIOCSCTTY, 0) as libc::c_long)?;
        }
        let core = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        raw(libc::syscall(libc::SYS_setrlimit, libc::RLIMIT_CORE, &core))?;
        if let Some(n) = s.nofile {
            let l = libc::rlimit {
                rlim_cur: n,
                rlim_max: n,
            };
            raw(libc::syscall(libc::SYS_setrlimit, libc::RLIMIT_NOFILE, &l))?;
        }
        if !s.rootless {
            let g = gid;
            raw(libc::syscall(libc::SYS_setgroups, 1, &g))?;
        }
        raw(libc::syscall(libc::SYS_setresgid, gid, gid, gid))?;
        // Root keeps the (already reduced) set; any other uid loses all.
        raw(libc::syscall(libc::SYS_setresuid, uid, uid, uid))?;
        raw(libc::syscall(libc::SYS_chdir, cwd))?;
    }
    Ok(())
}
