//! Lockbox's own syscall filter on qemu, under qemu's `-sandbox` (contract
//! C4). A deny-list, never an allow-list: qemu's device models, TCG and
//! migration use a wide and version-dependent set of calls, and qemu's own
//! filter already narrows that set once it has started. This one is
//! installed by the jail before the execve of qemu, so it also covers
//! qemu's startup (before `-sandbox` applies) and stays if a qemu flaw
//! makes `-sandbox` ineffective. Denied calls fail with EPERM (qemu falls
//! back where it can: io_uring to ppoll/epoll, clone3 to clone).

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen as Len, SeccompCmpOp as Op,
    SeccompCondition as Cond, SeccompFilter, SeccompRule,
};

/// What a VMM never needs: another process's memory, kernel extension
/// (modules, bpf, kexec), keyrings, userfaultfd (only postcopy migration,
/// which Lockbox does not use), new mounts or namespaces, io_uring (a
/// large and often-vulnerable interface), file handles, host clocks and
/// the other host-wide knobs.
const DENIED: &[libc::c_long] = &[
    libc::SYS_ptrace,
    libc::SYS_process_vm_readv,
    libc::SYS_process_vm_writev,
    libc::SYS_pidfd_getfd,
    libc::SYS_kcmp,
    libc::SYS_bpf,
    libc::SYS_perf_event_open,
    libc::SYS_userfaultfd,
    libc::SYS_keyctl,
    libc::SYS_add_key,
    libc::SYS_request_key,
    libc::SYS_mount,
    libc::SYS_umount2,
    libc::SYS_open_tree,
    libc::SYS_move_mount,
    libc::SYS_fsopen,
    libc::SYS_fsconfig,
    libc::SYS_fsmount,
    libc::SYS_fspick,
    libc::SYS_mount_setattr,
    libc::SYS_pivot_root,
    libc::SYS_chroot,
    libc::SYS_unshare,
    libc::SYS_setns,
    libc::SYS_kexec_load,
    libc::SYS_kexec_file_load,
    libc::SYS_init_module,
    libc::SYS_finit_module,
    libc::SYS_delete_module,
    libc::SYS_io_uring_setup,
    libc::SYS_io_uring_enter,
    libc::SYS_io_uring_register,
    libc::SYS_execveat,
    libc::SYS_open_by_handle_at,
    libc::SYS_name_to_handle_at,
    libc::SYS_reboot,
    libc::SYS_swapon,
    libc::SYS_swapoff,
    libc::SYS_acct,
    libc::SYS_quotactl,
    libc::SYS_lookup_dcookie,
    libc::SYS_iopl,
    libc::SYS_ioperm,
    libc::SYS_syslog,
    libc::SYS_uselib,
    libc::SYS_ustat,
    libc::SYS_sysfs,
    libc::SYS_nfsservctl,
    libc::SYS_settimeofday,
    libc::SYS_clock_settime,
    libc::SYS_clock_adjtime,
    libc::SYS_adjtimex,
    libc::SYS_vhangup,
];

/// Every namespace flag clone takes (CLONE_NEWTIME is 0x80).
const NS_FLAGS: [u64; 8] = [
    libc::CLONE_NEWNS as u64,
    libc::CLONE_NEWCGROUP as u64,
    libc::CLONE_NEWUTS as u64,
    libc::CLONE_NEWIPC as u64,
    libc::CLONE_NEWUSER as u64,
    libc::CLONE_NEWPID as u64,
    libc::CLONE_NEWNET as u64,
    0x80,
];

fn arch() -> Result<seccompiler::TargetArch> {
    std::env::consts::ARCH.try_into().context("seccomp arch")
}

/// The programs to install, in order, right before `execve(qemu, ...)`.
/// `exe` is the address of the path string that execve will be given:
/// every other execve is refused, so the one exec into qemu passes and
/// a compromised qemu cannot exec anything unless it also places a path
/// at that exact address (and then Landlock allows executing only qemu
/// and its loader, and qemu's `spawn=deny` refuses execve outright).
pub fn programs(exe: *const libc::c_char) -> Result<Vec<BpfProgram>> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for s in DENIED {
        rules.insert(*s, vec![]);
    }
    let cond = |arg, op, v| -> Result<Cond> { Ok(Cond::new(arg, Len::Qword, op, v)?) };
    rules.insert(
        libc::SYS_clone,
        NS_FLAGS
            .iter()
            .map(|f| Ok(SeccompRule::new(vec![cond(0, Op::MaskedEq(*f), *f)?])?))
            .collect::<Result<_>>()?,
    );
    rules.insert(
        libc::SYS_execve,
        vec![SeccompRule::new(vec![cond(0, Op::Ne, exe as u64)?])?],
    );
    // personality() that turns off ASLR or makes data executable.
    rules.insert(
        libc::SYS_personality,
        [0x0040000u64, 0x0400000u64]
            .iter()
            .map(|b| {
                Ok(SeccompRule::new(vec![
                    Cond::new(0, Len::Dword, Op::MaskedEq(*b), *b)?,
                    Cond::new(0, Len::Dword, Op::Ne, 0xffff_ffff)?,
                ])?)
            })
            .collect::<Result<_>>()?,
    );
    let deny = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        arch()?,
    )?;
    // clone3 passes its flags in memory, out of a filter's reach: ENOSYS
    // makes glibc fall back to clone, whose flags the rules above check.
    let clone3 = SeccompFilter::new(
        BTreeMap::from([(libc::SYS_clone3, vec![])]),
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
        arch()?,
    )?;
    let mut progs = vec![deny.try_into()?, clone3.try_into()?];
    progs.extend(crate::seccomp::x32_kill());
    Ok(progs)
}

pub fn install(progs: &[BpfProgram]) -> std::io::Result<()> {
    for p in progs {
        seccompiler::apply_filter(p).map_err(|e| std::io::Error::other(e.to_string()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The one path string execve may be given in these tests.
    const ALLOWED: &std::ffi::CStr = c"/bin/false";

    /// Runs `f` in a forked child under the filters; returns its exit code.
    fn in_child(f: impl FnOnce() -> i32) -> i32 {
        // SAFETY: the child only makes system calls and exits.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            // SAFETY: prctl with integers.
            unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
            let ok = programs(ALLOWED.as_ptr())
                .and_then(|p| Ok(install(&p)?))
                .is_ok();
            // SAFETY: leave without destructors.
            unsafe { libc::_exit(if ok { f() } else { 99 }) };
        }
        let mut st = 0;
        // SAFETY: our own child.
        unsafe { libc::waitpid(pid, &mut st, 0) };
        assert!(libc::WIFEXITED(st), "child died: {st:#x}");
        libc::WEXITSTATUS(st)
    }

    fn errno() -> i32 {
        std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
    }

    #[test]
    fn denies_namespaces_and_kernel_surface_but_not_threads() {
        // Control: an ordinary fork and a thread still work under it.
        let code = in_child(|| {
            let t = std::thread::spawn(|| 5).join().unwrap_or(0);
            // SAFETY: fork; the grandchild exits at once.
            let p = unsafe { libc::fork() };
            if p == 0 {
                unsafe { libc::_exit(0) };
            }
            if t == 5 && p > 0 {
                0
            } else {
                1
            }
        });
        assert_eq!(code, 0, "threads or fork broke under the filter");
        let code = in_child(|| {
            // SAFETY: each call is refused before it does anything.
            let unshare =
                unsafe { libc::unshare(libc::CLONE_NEWUSER) } == -1 && errno() == libc::EPERM;
            let uring =
                unsafe { libc::syscall(libc::SYS_io_uring_setup, 1, std::ptr::null_mut::<u8>()) }
                    == -1
                    && errno() == libc::EPERM;
            let ptrace = unsafe { libc::ptrace(libc::PTRACE_TRACEME, 0, 0, 0) } == -1
                && errno() == libc::EPERM;
            let clone_ns = unsafe {
                libc::syscall(
                    libc::SYS_clone,
                    (libc::CLONE_NEWNET | libc::SIGCHLD) as u64,
                    0,
                    0,
                    0,
                    0,
                )
            } == -1
                && errno() == libc::EPERM;
            i32::from(!unshare)
                | i32::from(!uring) << 1
                | i32::from(!ptrace) << 2
                | i32::from(!clone_ns) << 3
        });
        assert_eq!(code, 0, "bitmask of calls that were not refused: {code:#b}");
    }

    #[test]
    fn only_the_prepared_execve_passes() {
        let exec = |path: *const libc::c_char| {
            let argv = [path, std::ptr::null()];
            let env: [*const libc::c_char; 1] = [std::ptr::null()];
            // SAFETY: NULL-terminated arrays of valid C strings.
            unsafe { libc::execve(path, argv.as_ptr(), env.as_ptr()) };
            if errno() == libc::EPERM {
                42
            } else {
                43
            }
        };
        // Control: the prepared string execs (/bin/false exits 1).
        assert_eq!(in_child(|| exec(ALLOWED.as_ptr())), 1);
        // The same path at another address is refused.
        let copy = std::ffi::CString::new("/bin/false").unwrap();
        assert_eq!(in_child(|| exec(copy.as_ptr())), 42);
    }
}
