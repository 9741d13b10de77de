//! The syscall filter every sandboxed process runs under. Default allow,
//! with EPERM for what a workload has no business doing and that widens
//! the kernel's attack surface: module loading, kexec, bpf, perf, keyrings,
//! userfaultfd, file handles, mounts, new user namespaces, io_uring, and
//! setting setuid/setgid bits (volumes are idmapped, so such a file would
//! be a setuid file of a host user).

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

pub fn program() -> Result<Vec<BpfProgram>> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
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
    let creat = libc::O_CREAT as u64;
    rules.insert(libc::SYS_chmod, suid_mode_rules(1, None)?);
    rules.insert(libc::SYS_fchmod, suid_mode_rules(1, None)?);
    rules.insert(libc::SYS_fchmodat, suid_mode_rules(2, None)?);
    rules.insert(452 /* fchmodat2 */, suid_mode_rules(2, None)?);
    rules.insert(libc::SYS_creat, suid_mode_rules(1, None)?);
    rules.insert(
        libc::SYS_open,
        suid_mode_rules(2, Some(cond(1, Op::MaskedEq(creat), creat)?))?,
    );
    rules.insert(
        libc::SYS_openat,
        suid_mode_rules(3, Some(cond(2, Op::MaskedEq(creat), creat)?))?,
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
    Ok(vec![deny.try_into()?, clone3.try_into()?])
}
