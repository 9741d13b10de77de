//! The forwarder's system call filter: an allow-list, installed after the
//! privilege drop and before the first frame is read, inherited by the
//! thread the forwarder then starts. The set is what the forwarder was
//! seen to use (`strace -f` over `make test-net-wire`: tap and socket I/O,
//! epoll, eventfd, threads, memory, time, getrandom for rustls and the
//! leaf certificates) plus the neighbours a different path of the same
//! code may take (sendmsg next to sendto, epoll_pwait next to epoll_wait).
//!
//! Anything else kills the whole process (SECCOMP_RET_KILL_PROCESS), not
//! EPERM: the forwarder parses what the sandbox sends, so the one way it
//! calls something off the list is a bug or a compromise, and a process
//! that is stopped at once cannot probe the kernel call by call. What a
//! missed call costs is that sandbox's network (the relay reports the
//! forwarder gone), nothing host-wide. Two calls are refused softly on
//! top: open/openat get EACCES (glibc's malloc reads
//! /proc/sys/vm/overcommit_memory when it trims; the forwarder needs no
//! file once it serves), clone3 gets ENOSYS (its flags are in memory, out
//! of a filter's reach; glibc then uses clone, allowed only for threads).
//!
//! Narrowed by argument: socket only for AF_INET and AF_INET6 (no
//! AF_UNIX: as an ordinary uid it could still reach host daemons that accept any
//! local user; no AF_PACKET, AF_NETLINK), ioctl only FIONBIO and FIONREAD
//! (nothing reaches the tap's own ioctls), mmap/mprotect never with
//! PROT_EXEC, prctl only PR_SET_NAME and
//! PR_SET_NO_NEW_PRIVS. No kill, tgkill, ptrace, execve,
//! fork: a forwarder shares its uid (99997) with every other one.

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen as Len, SeccompCmpOp as Op,
    SeccompCondition as Cond, SeccompFilter, SeccompRule,
};

const ALLOWED: &[libc::c_long] = &[
    // tap, sockets, the control socket
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_readv,
    libc::SYS_writev,
    libc::SYS_recvfrom,
    libc::SYS_recvmsg,
    libc::SYS_recvmmsg,
    libc::SYS_sendto,
    libc::SYS_sendmsg,
    libc::SYS_sendmmsg,
    libc::SYS_connect,
    libc::SYS_bind,
    libc::SYS_shutdown,
    libc::SYS_getsockopt,
    libc::SYS_setsockopt,
    libc::SYS_getsockname,
    libc::SYS_getpeername,
    // published ports: only on the listening sockets the helper bound
    libc::SYS_accept4,
    // the fast TCP path's relay: socket → pipe → socket
    libc::SYS_splice,
    libc::SYS_pipe2,
    libc::SYS_close,
    libc::SYS_fcntl,
    libc::SYS_fstat,
    libc::SYS_poll,
    libc::SYS_ppoll,
    // the runtime
    libc::SYS_epoll_create1,
    libc::SYS_epoll_ctl,
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
    libc::SYS_epoll_pwait2,
    libc::SYS_eventfd2,
    libc::SYS_futex,
    libc::SYS_sched_yield,
    libc::SYS_sched_getaffinity,
    // threads and memory
    libc::SYS_set_robust_list,
    libc::SYS_rseq,
    libc::SYS_munmap,
    libc::SYS_mremap,
    libc::SYS_madvise,
    libc::SYS_brk,
    libc::SYS_rt_sigaction,
    libc::SYS_rt_sigprocmask,
    libc::SYS_rt_sigreturn,
    libc::SYS_sigaltstack,
    libc::SYS_restart_syscall,
    libc::SYS_exit,
    libc::SYS_exit_group,
    libc::SYS_getpid,
    libc::SYS_gettid,
    // time, randomness
    libc::SYS_clock_gettime,
    libc::SYS_clock_getres,
    libc::SYS_clock_nanosleep,
    libc::SYS_nanosleep,
    libc::SYS_gettimeofday,
    libc::SYS_getrandom,
    // soft-refused by `soft()`: allowed here so that one decides
    libc::SYS_open,
    libc::SYS_openat,
    libc::SYS_clone3,
];

fn arg(n: u8, op: Op, v: u64) -> Result<Cond> {
    Ok(Cond::new(n, Len::Qword, op, v)?)
}

fn any_of(n: u8, values: &[u64]) -> Result<Vec<SeccompRule>> {
    values
        .iter()
        .map(|v| Ok(SeccompRule::new(vec![arg(n, Op::Eq, *v)?])?))
        .collect()
}

fn arch() -> Result<seccompiler::TargetArch> {
    std::env::consts::ARCH.try_into().context("seccomp arch")
}

fn allow_list() -> Result<BpfProgram> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = ALLOWED.iter().map(|s| (*s, vec![])).collect();
    rules.insert(
        libc::SYS_socket,
        any_of(0, &[libc::AF_INET as u64, libc::AF_INET6 as u64])?,
    );
    rules.insert(
        libc::SYS_ioctl,
        any_of(1, &[libc::FIONBIO, libc::FIONREAD])?,
    );
    let exec = libc::PROT_EXEC as u64;
    rules.insert(
        libc::SYS_mmap,
        vec![SeccompRule::new(vec![arg(2, Op::MaskedEq(exec), 0)?])?],
    );
    rules.insert(
        libc::SYS_mprotect,
        vec![SeccompRule::new(vec![arg(2, Op::MaskedEq(exec), 0)?])?],
    );
    // The programs after the first are installed under it: seccompiler
    // sets no_new_privs before each. Both only ever take away.
    rules.insert(
        libc::SYS_seccomp,
        any_of(0, &[libc::SECCOMP_SET_MODE_FILTER as u64])?,
    );
    rules.insert(
        libc::SYS_prctl,
        any_of(
            0,
            &[libc::PR_SET_NAME as u64, libc::PR_SET_NO_NEW_PRIVS as u64],
        )?,
    );
    // A thread, never a new process.
    let thread = libc::CLONE_THREAD as u64;
    rules.insert(
        libc::SYS_clone,
        vec![SeccompRule::new(vec![arg(
            0,
            Op::MaskedEq(thread),
            thread,
        )?])?],
    );
    let f = SeccompFilter::new(
        rules,
        SeccompAction::KillProcess,
        SeccompAction::Allow,
        arch()?,
    )?;
    Ok(f.try_into()?)
}

/// The calls refused with an error instead of a kill (the strictest of
/// all filters' answers wins, so these override the allow-list's Allow).
fn soft() -> Result<Vec<BpfProgram>> {
    let mut progs = Vec::new();
    for (calls, errno) in [
        (&[libc::SYS_open, libc::SYS_openat][..], libc::EACCES),
        (&[libc::SYS_clone3][..], libc::ENOSYS),
    ] {
        let rules = calls.iter().map(|s| (*s, vec![])).collect();
        let f = SeccompFilter::new(
            rules,
            SeccompAction::Allow,
            SeccompAction::Errno(errno as u32),
            arch()?,
        )?;
        progs.push(f.try_into()?);
    }
    Ok(progs)
}

/// Every program of the forwarder's filter, compiled.
pub fn programs() -> Result<Vec<BpfProgram>> {
    let mut progs = vec![allow_list()?];
    progs.extend(soft()?);
    progs.extend(crate::seccomp::x32_kill());
    Ok(progs)
}

/// Installs `programs` on every thread of this process (there is one
/// when the daemon calls it). no_new_privs is already set by then.
pub fn install(progs: &[BpfProgram]) -> std::io::Result<()> {
    for p in progs {
        seccompiler::apply_filter_all_threads(p).map_err(std::io::Error::other)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
