//! What every process the agent starts goes through between fork and exec:
//! its own session, resource limits, a reduced capability set (bounding
//! set included), the requested user, no_new_privs, Landlock and seccomp.
//! Everything that allocates is prepared once in `prepare`; the per-exec
//! part only makes system calls.

use std::ffi::CString;
use std::io;
use std::sync::Arc;

use anyhow::Result;
use landlock::{
    Access, AccessFs, PathBeneath, PathFd, Ruleset, RulesetAttr, RulesetCreated,
    RulesetCreatedAttr, RulesetStatus, ABI,
};
use lockbox_protocol::LaunchSpec;
use seccompiler::BpfProgram;

use crate::report::Report;

/// Kept for sandbox root: what ordinary package installs and servers need.
/// Everything else (SYS_ADMIN, NET_ADMIN, SYS_PTRACE, DAC_READ_SEARCH,
/// SETFCAP, MKNOD, NET_RAW, ...) is gone, including from the bounding set.
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
    seccomp: Arc<Vec<BpfProgram>>,
    landlock: Option<RulesetCreated>,
    nofile: Option<u64>,
    last_cap: u32,
    rootless: bool,
    pub default_uid: u32,
    pub default_gid: u32,
}

/// The per-exec settings handed to `apply`.
pub struct ExecCreds {
    pub uid: u32,
    pub gid: u32,
    pub cwd: CString,
    pub tty: bool,
}

fn last_cap() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(40)
}

fn landlock_ruleset() -> Result<RulesetCreated> {
    let abi = ABI::V5;
    Ok(Ruleset::default()
        .handle_access(AccessFs::from_all(abi))?
        .create()?
        .add_rule(PathBeneath::new(PathFd::new("/")?, AccessFs::from_all(abi)))?)
}

/// Finds out whether this kernel enforces Landlock by restricting a
/// throwaway child (the agent itself must stay unrestricted).
fn landlock_enforced(rs: &RulesetCreated) -> Result<bool, String> {
    let probe = rs.try_clone().map_err(|e| e.to_string())?;
    // SAFETY: single-threaded here (before the runtime starts); the child
    // only makes system calls and exits.
    match unsafe { libc::fork() } {
        -1 => Err(io::Error::last_os_error().to_string()),
        0 => {
            let ok = matches!(
                probe.restrict_self().map(|s| s.ruleset),
                Ok(RulesetStatus::FullyEnforced) | Ok(RulesetStatus::PartiallyEnforced)
            );
            // SAFETY: leave without running anything of the parent's.
            unsafe { libc::_exit(if ok { 0 } else { 1 }) }
        }
        pid => {
            let st = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None);
            Ok(matches!(st, Ok(nix::sys::wait::WaitStatus::Exited(_, 0))))
        }
    }
}

impl Confine {
    pub fn prepare(spec: &LaunchSpec, report: &mut Report) -> Result<Confine> {
        let seccomp = crate::seccomp::program()?;
        report.ok("seccomp");
        report.ok("no_new_privs");
        report.ok("caps");
        report.ok("rlimits");
        let landlock = match landlock_ruleset() {
            Ok(rs) => match landlock_enforced(&rs) {
                Ok(true) => {
                    report.ok("landlock");
                    Some(rs)
                }
                Ok(false) => {
                    report.not("landlock", "the kernel does not enforce Landlock");
                    None
                }
                Err(e) => {
                    report.not("landlock", format!("probe failed: {e}"));
                    None
                }
            },
            Err(e) => {
                report.not("landlock", format!("{e}"));
                None
            }
        };
        Ok(Confine {
            seccomp: Arc::new(seccomp),
            landlock,
            nofile: spec.limits.nofile,
            last_cap: last_cap(),
            rootless: std::fs::read_to_string("/proc/self/setgroups")
                .map(|s| s.trim() == "deny")
                .unwrap_or(false),
            default_uid: spec.uid,
            default_gid: spec.gid,
        })
    }

    /// Builds the closure run in the child between fork and exec.
    pub fn pre_exec(
        &self,
        creds: ExecCreds,
    ) -> impl FnMut() -> io::Result<()> + Send + Sync + 'static {
        let seccomp = self.seccomp.clone();
        let mut landlock = self.landlock.as_ref().and_then(|r| r.try_clone().ok());
        let nofile = self.nofile;
        let last_cap = self.last_cap;
        let rootless = self.rootless;
        move || {
            apply(&creds, nofile, last_cap, rootless)?;
            if let Some(rs) = landlock.take() {
                rs.restrict_self()
                    .map_err(|e| io::Error::new(io::ErrorKind::PermissionDenied, e.to_string()))?;
            }
            for p in seccomp.iter() {
                seccompiler::apply_filter(p)
                    .map_err(|e| io::Error::new(io::ErrorKind::PermissionDenied, e.to_string()))?;
            }
            Ok(())
        }
    }
}

fn cvt(r: libc::c_int) -> io::Result<()> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

fn apply(c: &ExecCreds, nofile: Option<u64>, last_cap: u32, rootless: bool) -> io::Result<()> {
    // SAFETY: every call below is a plain system call on this process.
    unsafe {
        // The agent blocks SIGCHLD/SIGTERM (it reads them from a signalfd).
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        cvt(libc::sigprocmask(
            libc::SIG_SETMASK,
            &empty,
            std::ptr::null_mut(),
        ))?;
        cvt(libc::setsid())?;
        if c.tty {
            cvt(libc::ioctl(0, libc::TIOCSCTTY, 0))?;
        }
        // The agent is shielded from the OOM killer; its children are not.
        let fd = libc::open(
            c"/proc/self/oom_score_adj".as_ptr(),
            libc::O_WRONLY | libc::O_CLOEXEC,
        );
        if fd >= 0 {
            libc::write(fd, b"0".as_ptr().cast(), 1);
            libc::close(fd);
        }
        let core = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        cvt(libc::setrlimit(libc::RLIMIT_CORE, &core))?;
        if let Some(n) = nofile {
            let l = libc::rlimit {
                rlim_cur: n,
                rlim_max: n,
            };
            cvt(libc::setrlimit(libc::RLIMIT_NOFILE, &l))?;
        }
        for cap in 0..=last_cap {
            if !KEEP_CAPS.contains(&cap) {
                cvt(libc::prctl(
                    libc::PR_CAPBSET_DROP,
                    cap as libc::c_ulong,
                    0,
                    0,
                    0,
                ))?;
            }
        }
        cvt(libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0,
            0,
            0,
        ))?;
        if !rootless {
            let g = c.gid;
            cvt(libc::setgroups(1, &g))?;
        }
        cvt(libc::setresgid(c.gid, c.gid, c.gid))?;
        cvt(libc::setresuid(c.uid, c.uid, c.uid))?;
        // A non-root uid lost all capabilities in setresuid; root keeps the
        // minimal set.
        let mask = KEEP_CAPS.iter().fold(0u64, |m, c| m | (1u64 << c));
        let (keep_lo, keep_hi) = if c.uid == 0 {
            (mask as u32, (mask >> 32) as u32)
        } else {
            (0, 0)
        };
        let mut hdr = CapHeader {
            version: 0x2008_0522,
            pid: 0,
        };
        let data = [
            CapData {
                effective: keep_lo,
                permitted: keep_lo,
                inheritable: 0,
            },
            CapData {
                effective: keep_hi,
                permitted: keep_hi,
                inheritable: 0,
            },
        ];
        cvt(libc::syscall(libc::SYS_capset, &mut hdr, data.as_ptr()) as libc::c_int)?;
        cvt(libc::chdir(c.cwd.as_ptr()))?;
        cvt(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))?;
    }
    Ok(())
}
