//! Capability sets, for the two processes that shed them: the native
//! agent keeps a few for sandbox root (confine.rs), qemu's jail keeps
//! none (vmm/jail.rs). The bounding set goes too, so no execve can
//! regain what was dropped.

use std::io;

const SECBIT_NOROOT: libc::c_ulong = 1 << 0;
const SECBIT_NOROOT_LOCKED: libc::c_ulong = 1 << 1;
const SECBIT_NO_SETUID_FIXUP: libc::c_ulong = 1 << 2;
const SECBIT_NO_SETUID_FIXUP_LOCKED: libc::c_ulong = 1 << 3;
const SECBIT_KEEP_CAPS_LOCKED: libc::c_ulong = 1 << 5;
const SECBIT_NO_CAP_AMBIENT_RAISE: libc::c_ulong = 1 << 6;
const SECBIT_NO_CAP_AMBIENT_RAISE_LOCKED: libc::c_ulong = 1 << 7;

fn cvt(r: libc::c_int) -> io::Result<()> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

#[repr(C)]
struct Header {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Default, Clone, Copy)]
struct Data {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

fn last_cap() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(63)
}

/// Bounding, ambient, inheritable, permitted and effective sets reduced
/// to `keep` (capability numbers).
pub fn limit_to(keep: &[u32]) -> io::Result<()> {
    let mask = keep.iter().fold(0u64, |m, c| m | (1u64 << c));
    // SAFETY: prctl/capset with integer arguments and local structs.
    unsafe {
        for cap in (0..=last_cap()).filter(|c| !keep.contains(c)) {
            let r = libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0);
            // EINVAL: a capability this kernel does not have.
            if r < 0 && io::Error::last_os_error().raw_os_error() != Some(libc::EINVAL) {
                return Err(io::Error::last_os_error());
            }
        }
        cvt(libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0,
            0,
            0,
        ))?;
        let mut hdr = Header {
            version: 0x2008_0522,
            pid: 0,
        };
        let data = [
            Data {
                effective: mask as u32,
                permitted: mask as u32,
                inheritable: 0,
            },
            Data {
                effective: (mask >> 32) as u32,
                permitted: (mask >> 32) as u32,
                inheritable: 0,
            },
        ];
        cvt(libc::syscall(libc::SYS_capset, &mut hdr, data.as_ptr()) as libc::c_int)?;
    }
    Ok(())
}

/// Every capability, for good: uid 0 of a user namespace would otherwise
/// get a full set back at execve, so the securebits that grant root
/// capabilities at exec (and their setuid fix-ups) are locked off first.
pub fn drop_all() -> io::Result<()> {
    // SAFETY: prctl with integer arguments.
    cvt(unsafe {
        libc::prctl(
            libc::PR_SET_SECUREBITS,
            SECBIT_NOROOT
                | SECBIT_NOROOT_LOCKED
                | SECBIT_NO_SETUID_FIXUP
                | SECBIT_NO_SETUID_FIXUP_LOCKED
                | SECBIT_KEEP_CAPS_LOCKED
                | SECBIT_NO_CAP_AMBIENT_RAISE
                | SECBIT_NO_CAP_AMBIENT_RAISE_LOCKED,
            0,
            0,
            0,
        )
    })?;
    limit_to(&[])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(key: &str) -> String {
        std::fs::read_to_string("/proc/self/status")
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix(key).map(|v| v.trim().to_string()))
            .unwrap_or_default()
    }

    /// In a child that holds every capability of a fresh user namespace
    /// (the control: CapEff all ones there), `limit_to` keeps exactly the
    /// named one, and `drop_all` leaves none, in any set.
    #[test]
    fn sets_shrink_to_what_is_kept() {
        for keep in [Some(vec![0u32, 5]), None] {
            // SAFETY: the child makes system calls and exits.
            let pid = unsafe { libc::fork() };
            if pid == 0 {
                // SAFETY: unshare with a flag.
                let full = unsafe { libc::unshare(libc::CLONE_NEWUSER) } == 0
                    && status("CapEff:") != "0000000000000000";
                let r = match &keep {
                    Some(k) => limit_to(k),
                    None => drop_all(),
                };
                let want = if keep.is_some() {
                    "0000000000000021"
                } else {
                    "0000000000000000"
                };
                let ok = full
                    && r.is_ok()
                    && ["CapEff:", "CapPrm:", "CapBnd:"]
                        .iter()
                        .all(|k| status(k) == want)
                    && status("CapAmb:") == "0000000000000000";
                // SAFETY: leave without destructors.
                unsafe { libc::_exit(if ok { 0 } else { 1 }) };
            }
            let mut st = 0;
            // SAFETY: our own child.
            unsafe { libc::waitpid(pid, &mut st, 0) };
            assert!(
                libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == 0,
                "keep {keep:?}: {st:#x}"
            );
        }
    }
}
