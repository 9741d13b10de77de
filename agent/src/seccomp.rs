//! The syscall filter every sandboxed process runs under. Default allow,
//! with EPERM for what a workload has no business doing and that widens
//! the kernel's attack surface: module loading, kexec, bpf, perf, keyrings,
//! userfaultfd, file handles, mounts, new user namespaces, io_uring, and
//! setting setuid/setgid bits by any call that takes a mode (chmod*, open*
//! with O_CREAT or O_TMPFILE, creat, mknod*): a file in a writable volume
//! is a host file, and a setuid one would be a way up for any host user
//! who can reach it. x32 system call numbers (the x86_64 arch with bit 30
//! set) kill the process: no rule above would see them otherwise.

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen as Len, SeccompCmpOp as Op,
    SeccompCondition as Cond, SeccompFilter, SeccompRule,
};

const DENIED: &[libc::c_long] = &[
    libc::SYS_init_module,
    libc::SYS_finit_module,
    libc::SYS_delete_module,
    libc::SYS_kexec_load,
    libc::SYS_kexec_file_load,
    libc::SYS_bpf,
    libc::SYS_perf_event_open,
    libc::SYS_keyctl,
    libc::SYS_add_key,
    libc::SYS_request_key,
    libc::SYS_userfaultfd,
    libc::SYS_open_by_handle_at,
    libc::SYS_name_to_handle_at,
    libc::SYS_reboot,
    libc::SYS_swapon,
    libc::SYS_swapoff,
    libc::SYS_mount,
    libc::SYS_umount2,
    libc::SYS_pivot_root,
    libc::SYS_chroot,
    libc::SYS_move_mount,
    libc::SYS_open_tree,
    libc::SYS_fsopen,
    libc::SYS_fsconfig,
    libc::SYS_fsmount,
    libc::SYS_fspick,
    libc::SYS_mount_setattr,
    libc::SYS_unshare,
    libc::SYS_setns,
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
    libc::SYS_io_uring_setup,
    libc::SYS_io_uring_enter,
    libc::SYS_io_uring_register,
    libc::SYS_settimeofday,
    libc::SYS_clock_settime,
    libc::SYS_clock_adjtime,
    libc::SYS_adjtimex,
    libc::SYS_vhangup,
];

const SUID_BITS: [u64; 2] = [libc::S_ISUID as u64, libc::S_ISGID as u64];

fn cond(arg: u8, op: Op, v: u64) -> Result<Cond> {
    Ok(Cond::new(arg, Len::Qword, op, v)?)
}

/// One rule per setuid/setgid bit on the mode argument `arg`.
fn suid_mode_rules(arg: u8, extra: Option<Cond>) -> Result<Vec<SeccompRule>> {
    SUID_BITS
        .iter()
        .map(|b| {
            let mut c = vec![cond(arg, Op::MaskedEq(*b), *b)?];
            if let Some(e) = &extra {
                c.push(e.clone());
            }
            Ok(SeccompRule::new(c)?)
        })
        .collect()
}

/// The setuid/setgid-mode rules alone: every call that takes a mode
/// (chmod*, creat, mknod*, open/openat with O_CREAT or O_TMPFILE).
fn suid_rules() -> Result<BTreeMap<i64, Vec<SeccompRule>>> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    let creat = libc::O_CREAT as u64;
    // O_TMPFILE makes a file with `mode` that linkat can then name.
    let tmpfile = 0o20_000_000u64; // __O_TMPFILE, without O_DIRECTORY
    rules.insert(libc::SYS_chmod, suid_mode_rules(1, None)?);
    rules.insert(libc::SYS_fchmod, suid_mode_rules(1, None)?);
    rules.insert(libc::SYS_fchmodat, suid_mode_rules(2, None)?);
    rules.insert(452 /* fchmodat2 */, suid_mode_rules(2, None)?);
    rules.insert(libc::SYS_creat, suid_mode_rules(1, None)?);
    rules.insert(libc::SYS_mknod, suid_mode_rules(1, None)?);
    rules.insert(libc::SYS_mknodat, suid_mode_rules(2, None)?);
    for (nr, flags, mode) in [(libc::SYS_open, 1, 2), (libc::SYS_openat, 2, 3)] {
        let mut r = suid_mode_rules(mode, Some(cond(flags, Op::MaskedEq(creat), creat)?))?;
        r.extend(suid_mode_rules(
            mode,
            Some(cond(flags, Op::MaskedEq(tmpfile), tmpfile)?),
        )?);
        rules.insert(nr, r);
    }
    Ok(rules)
}

/// For a host process that writes files on a sandbox's behalf (a microVM
/// volume's virtiofsd): EPERM for any setuid/setgid mode, whatever the
/// guest kernel asks, and ENOSYS for openat2 (its mode is out of a
/// filter's reach). Nothing else is restricted: the daemon still makes
/// its own namespaces and filter.
pub fn suid_modes_program() -> Result<Vec<BpfProgram>> {
    let arch = || -> Result<seccompiler::TargetArch> {
        std::env::consts::ARCH.try_into().context("seccomp arch")
    };
    let modes = SeccompFilter::new(
        suid_rules()?,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        arch()?,
    )?;
    let mut o2 = BTreeMap::new();
    o2.insert(libc::SYS_openat2, vec![]);
    let openat2 = SeccompFilter::new(
        o2,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
        arch()?,
    )?;
    let mut progs = vec![modes.try_into()?, openat2.try_into()?];
    progs.extend(x32_kill());
    Ok(progs)
}

pub fn program() -> Result<Vec<BpfProgram>> {
    let mut rules = suid_rules()?;
    for s in DENIED {
        rules.insert(*s, vec![]);
    }
    let newuser = libc::CLONE_NEWUSER as u64;
    rules.insert(
        libc::SYS_clone,
        vec![SeccompRule::new(vec![cond(
            0,
            Op::MaskedEq(newuser),
            newuser,
        )?])?],
    );
    // personality() that turns off ASLR or makes data executable.
    let persona: Vec<SeccompRule> = [0x0040000u64, 0x0400000u64]
        .iter()
        .map(|b| {
            Ok(SeccompRule::new(vec![
                Cond::new(0, Len::Dword, Op::MaskedEq(*b), *b)?,
                Cond::new(0, Len::Dword, Op::Ne, 0xffff_ffff)?,
            ])?)
        })
        .collect::<Result<_>>()?;
    rules.insert(libc::SYS_personality, persona);
    let arch = std::env::consts::ARCH.try_into().context("seccomp arch")?;
    let deny = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        arch,
    )?;
    // clone3 passes its flags in memory, out of a filter's reach: ENOSYS
    // makes libcs fall back to clone, whose flags the rule above checks.
    let mut c3 = BTreeMap::new();
    c3.insert(libc::SYS_clone3, vec![]);
    let clone3 = SeccompFilter::new(
        c3,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
        std::env::consts::ARCH.try_into().context("seccomp arch")?,
    )?;
    let mut progs = vec![deny.try_into()?, clone3.try_into()?];
    progs.extend(x32_kill());
    Ok(progs)
}

/// The filter each workload gets on top, installed between fork and exec:
/// openat2 passes its mode inside a struct no filter can read, so it is
/// ENOSYS (libcs then fall back to openat, whose mode the filter checks).
/// The agent keeps openat2 for its own resolve-in-root walks; it never
/// passes a mode with setuid bits.
pub fn exec_program() -> Result<BpfProgram> {
    let mut r = BTreeMap::new();
    r.insert(libc::SYS_openat2, vec![]);
    let f = SeccompFilter::new(
        r,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
        std::env::consts::ARCH.try_into().context("seccomp arch")?,
    )?;
    Ok(f.try_into()?)
}

/// x86_64 only: x32 calls carry the x86_64 arch tag and bit 30 in the
/// number, so a filter keyed on x86_64 numbers lets them all through.
/// Classic BPF: seccompiler cannot match a range of numbers.
#[cfg(target_arch = "x86_64")]
pub(crate) fn x32_kill() -> Option<BpfProgram> {
    const BPF_LD_W_ABS: u16 = 0x20;
    const BPF_JMP_JEQ_K: u16 = 0x15;
    const BPF_JMP_JGE_K: u16 = 0x35;
    const BPF_RET_K: u16 = 0x06;
    const SECCOMP_RET_KILL_PROCESS: u32 = 0x8000_0000;
    const SECCOMP_RET_ALLOW: u32 = 0x7fff_0000;
    const AUDIT_ARCH_X86_64: u32 = 62 | 0x8000_0000 | 0x4000_0000;
    let insn = |code, jt, jf, k| seccompiler::sock_filter { code, jt, jf, k };
    const X32_SYSCALL_BIT: u32 = 0x4000_0000;
    Some(vec![
        insn(BPF_LD_W_ABS, 0, 0, 4), // seccomp_data.arch
        insn(BPF_JMP_JEQ_K, 1, 0, AUDIT_ARCH_X86_64),
        insn(BPF_RET_K, 0, 0, SECCOMP_RET_KILL_PROCESS),
        insn(BPF_LD_W_ABS, 0, 0, 0), // seccomp_data.nr
        insn(BPF_JMP_JGE_K, 0, 1, X32_SYSCALL_BIT),
        insn(BPF_RET_K, 0, 0, SECCOMP_RET_KILL_PROCESS),
        insn(BPF_RET_K, 0, 0, SECCOMP_RET_ALLOW),
    ])
}

#[cfg(not(target_arch = "x86_64"))]
pub(crate) fn x32_kill() -> Option<BpfProgram> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::ffi::OsStrExt;

    fn errno() -> i32 {
        std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
    }

    /// Runs `f` in a forked child under `progs`; returns its exit code.
    fn in_child(progs: &[BpfProgram], f: impl FnOnce() -> i32) -> i32 {
        // SAFETY: the child only makes system calls and exits.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            // SAFETY: prctl with integers; then the filters; then exit.
            unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
            for p in progs {
                if seccompiler::apply_filter(p).is_err() {
                    unsafe { libc::_exit(100) };
                }
            }
            let code = f();
            unsafe { libc::_exit(code) };
        }
        let mut st = 0;
        // SAFETY: our own child.
        unsafe { libc::waitpid(pid, &mut st, 0) };
        assert!(libc::WIFEXITED(st), "child died: {st:#x}");
        libc::WEXITSTATUS(st)
    }

    /// What a virtiofsd asked for a setuid or setgid mode by its guest
    /// would do: fchmodat through /proc/self/fd (its SETATTR), fchmod, and
    /// openat/mknodat with the bit (CREATE, MKNOD). Under the filter each
    /// is EPERM and the host file keeps no such bit; the same calls with a
    /// plain mode work (the control), and without the filter the bit lands
    /// (the control that the check sees a real success).
    #[test]
    fn suid_modes_program_refuses_setuid_and_setgid_modes_only() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("f");
        std::fs::write(&f, b"x").unwrap();
        let c = |p: &std::path::Path| std::ffi::CString::new(p.as_os_str().as_bytes()).unwrap();
        let (cf, cdir) = (c(&f), c(d.path()));
        let attempts = |suid: u32| {
            let (cf, cdir) = (cf.clone(), cdir.clone());
            move || -> i32 {
                // SAFETY: calls on local C strings and fds we open here.
                unsafe {
                    let fd = libc::open(cf.as_ptr(), libc::O_RDONLY);
                    let dir = libc::open(cdir.as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY);
                    let proc_fd = std::ffi::CString::new(format!("/proc/self/fd/{fd}")).unwrap();
                    let mut refused = 0;
                    let r = libc::fchmodat(libc::AT_FDCWD, proc_fd.as_ptr(), 0o755 | suid, 0);
                    refused |= i32::from(r == -1 && errno() == libc::EPERM);
                    let r = libc::fchmod(fd, 0o755 | suid);
                    refused |= i32::from(r == -1 && errno() == libc::EPERM) << 1;
                    let r = libc::openat(
                        dir,
                        c"new".as_ptr(),
                        libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY,
                        0o755 | suid,
                    );
                    refused |= i32::from(r == -1 && errno() == libc::EPERM) << 2;
                    let r = libc::mknodat(dir, c"fifo".as_ptr(), libc::S_IFIFO | 0o644 | suid, 0);
                    refused |= i32::from(r == -1 && errno() == libc::EPERM) << 3;
                    refused
                }
            }
        };
        let mode = |p: &std::path::Path| {
            std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(p).unwrap().permissions())
        };
        let clean = || {
            let _ = std::fs::remove_file(d.path().join("new"));
            let _ = std::fs::remove_file(d.path().join("fifo"));
            std::fs::set_permissions(&f, std::os::unix::fs::PermissionsExt::from_mode(0o644))
                .unwrap();
        };
        let progs = suid_modes_program().unwrap();
        for bit in [libc::S_ISUID, libc::S_ISGID] {
            clean();
            assert_eq!(
                in_child(&progs, attempts(bit)),
                0b1111,
                "each mode call with {bit:o} must be EPERM"
            );
            assert_eq!(mode(&f) & 0o6000, 0, "the bit reached the file");
            assert!(!d.path().join("new").exists() && !d.path().join("fifo").exists());
            // Control: without the filter the same calls set the bit.
            clean();
            assert_eq!(in_child(&[], attempts(bit)), 0);
            assert_ne!(mode(&f) & bit, 0, "control: fchmod set no bit");
            assert_ne!(mode(&d.path().join("new")) & bit, 0);
        }
        // Control: plain modes pass under the filter.
        clean();
        assert_eq!(in_child(&progs, attempts(0)), 0);
        assert_eq!(mode(&f) & 0o7777, 0o755);
        assert!(d.path().join("new").exists() && d.path().join("fifo").exists());
    }
}
