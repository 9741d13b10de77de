//! Landlock on qemu (contract C4), applied by the jail after pivot_root,
//! right before the execve of qemu. The jail's mounts already decide what
//! qemu can see; Landlock decides what it may do with it, so a mount
//! that is writable for a reason (a disk image, a volume) cannot be used
//! for anything else, and a bug in how the jail is assembled does not
//! widen qemu's reach:
//! - execute: only qemu's binary and its ELF loader;
//! - read: /usr and the other system trees, /proc, the read-only binds
//!   (kernel, initramfs, layers, config disk);
//! - write: only the binds the engine marked writable (a file: read,
//!   write, truncate; a directory, as volumes are: create and remove
//!   beneath it too, never devices or execution);
//! - devices: only those the jail passes in, with ioctl (/dev/kvm);
//! - no TCP bind or connect, no signals or abstract sockets outside.
//!
//! Best effort: a kernel without Landlock runs qemu without it, and the
//! helper reports `vmm_landlock` as not enforced; a kernel with Landlock
//! must enforce the ruleset or qemu does not start.

use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use landlock::{
    Access, AccessFs, AccessNet, BitFlags, PathBeneath, PathFd, Ruleset, RulesetAttr,
    RulesetCreatedAttr, RulesetStatus, Scope, ABI,
};

const LANDLOCK: ABI = ABI::V6;

/// One path (as qemu sees it) and what qemu may do beneath it.
pub struct Rule {
    pub path: PathBuf,
    pub access: BitFlags<AccessFs>,
}

/// The kernel's Landlock ABI version, 0 without Landlock.
pub fn kernel_abi() -> i64 {
    const LANDLOCK_CREATE_RULESET_VERSION: libc::c_uint = 1;
    // SAFETY: the version query takes no ruleset and writes nothing.
    let v = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<u8>(),
            0usize,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    };
    v.max(0)
}

/// What a mount of the jail grants. `dst` is relative to the jail's root.
pub fn mount_rule(dst: &Path, is_dir: bool, writable: bool) -> Rule {
    let read = AccessFs::ReadFile | AccessFs::ReadDir;
    let access = if dst.starts_with("dev") {
        AccessFs::ReadFile | AccessFs::WriteFile | AccessFs::IoctlDev
    } else if !writable {
        read
    } else if is_dir {
        AccessFs::from_all(LANDLOCK)
            & !(AccessFs::Execute | AccessFs::MakeChar | AccessFs::MakeBlock | AccessFs::IoctlDev)
    } else {
        read | AccessFs::WriteFile | AccessFs::Truncate
    };
    Rule {
        path: Path::new("/").join(dst),
        access,
    }
}

/// What every jail adds to its mounts' rules: /proc to read, and the
/// two files qemu's execve opens for execution.
pub fn base_rules(qemu: &Path, interp: Option<&Path>) -> Vec<Rule> {
    let mut r = vec![Rule {
        path: "/proc".into(),
        access: AccessFs::ReadFile | AccessFs::ReadDir,
    }];
    for exe in std::iter::once(qemu).chain(interp) {
        r.push(Rule {
            path: exe.to_path_buf(),
            access: AccessFs::Execute | AccessFs::ReadFile,
        });
    }
    r
}

/// The rules for a jail's mounts (`dst` relative to the jail's root,
/// whether a directory, whether writable) and qemu's binary.
pub fn jail_rules<'a>(
    qemu: &Path,
    mounts: impl Iterator<Item = (&'a Path, bool, bool)>,
) -> io::Result<Vec<Rule>> {
    let interp = elf_interp(qemu)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: ELF loader: {e}", qemu.display())))?;
    let mut rules = base_rules(qemu, interp.as_deref());
    rules.extend(mounts.map(|(dst, is_dir, writable)| mount_rule(dst, is_dir, writable)));
    Ok(rules)
}

/// `restrict`, where anything short of the kernel enforcing the
/// ruleset is an error: called only where the kernel has Landlock.
pub fn enforce(rules: &[Rule]) -> io::Result<()> {
    match restrict(rules)? {
        RulesetStatus::FullyEnforced | RulesetStatus::PartiallyEnforced => Ok(()),
        RulesetStatus::NotEnforced => Err(io::Error::other(
            "landlock: the kernel reports Landlock but did not enforce the ruleset",
        )),
    }
}

/// Restricts the calling process (and what it execs) to `rules`. A rule
/// on a file keeps only the rights that apply to files; a path that
/// cannot be opened is an error (the jail made every one of them).
pub fn restrict(rules: &[Rule]) -> io::Result<RulesetStatus> {
    let e = |what: &str, x: &dyn std::fmt::Display| io::Error::other(format!("{what}: {x}"));
    let mut created = Ruleset::default()
        .handle_access(AccessFs::from_all(LANDLOCK))
        .and_then(|r| r.handle_access(AccessNet::from_all(LANDLOCK)))
        .and_then(|r| r.scope(Scope::from_all(LANDLOCK)))
        .and_then(|r| r.create())
        .map_err(|x| e("landlock ruleset", &x))?;
    for rule in rules {
        let fd = PathFd::new(&rule.path).map_err(|x| e(&rule.path.display().to_string(), &x))?;
        let is_dir = std::fs::metadata(&rule.path)
            .map(|m| m.is_dir())
            .unwrap_or(false);
        let access = if is_dir {
            rule.access
        } else {
            rule.access & AccessFs::from_file(LANDLOCK)
        };
        created = created
            .add_rule(PathBeneath::new(fd, access))
            .map_err(|x| e(&rule.path.display().to_string(), &x))?;
    }
    let st = created
        .restrict_self()
        .map_err(|x| e("landlock restrict_self", &x))?;
    Ok(st.ruleset)
}

/// The ELF loader (PT_INTERP) of an x86_64/aarch64 ELF64 executable:
/// execve opens it for execution too. None for a static binary.
pub fn elf_interp(exe: &Path) -> io::Result<Option<PathBuf>> {
    const PT_INTERP: u32 = 3;
    let mut f = std::fs::File::open(exe)?;
    let mut h = [0u8; 64];
    f.read_exact(&mut h)?;
    if &h[..4] != b"\x7fELF" || h[4] != 2 || h[5] != 1 {
        return Err(io::Error::other("not a little-endian ELF64 file"));
    }
    let u16_at = |b: &[u8], o: usize| u16::from_le_bytes([b[o], b[o + 1]]) as u64;
    let u64_at = |b: &[u8], o: usize| u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"));
    let (phoff, phentsize, phnum) = (u64_at(&h, 0x20), u16_at(&h, 0x36), u16_at(&h, 0x38));
    if phentsize < 56 || phnum > 256 {
        return Err(io::Error::other("implausible program headers"));
    }
    for i in 0..phnum {
        let mut ph = [0u8; 56];
        f.seek(SeekFrom::Start(phoff + i * phentsize))?;
        f.read_exact(&mut ph)?;
        if u32::from_le_bytes(ph[..4].try_into().expect("4 bytes")) != PT_INTERP {
            continue;
        }
        let (off, size) = (u64_at(&ph, 8), u64_at(&ph, 32));
        if size == 0 || size > 4096 {
            return Err(io::Error::other("implausible PT_INTERP"));
        }
        let mut s = vec![0u8; size as usize];
        f.seek(SeekFrom::Start(off))?;
        f.read_exact(&mut s)?;
        let s = s.split(|b| *b == 0).next().unwrap_or_default();
        return Ok(Some(PathBuf::from(String::from_utf8_lossy(s).into_owned())));
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_loader_of_a_dynamic_binary() {
        let interp = elf_interp(Path::new("/bin/sh"))
            .unwrap()
            .expect("/bin/sh is dynamic");
        assert!(interp.to_string_lossy().contains("ld-"), "{interp:?}");
        assert!(interp.exists());
    }

    /// The ruleset as the jail builds it, on a real kernel: a writable
    /// bind takes writes, a read-only one and everything else refuse them,
    /// and only the named executable runs. Skipped (said so) without
    /// Landlock.
    #[test]
    fn ruleset_confines_a_child() {
        if kernel_abi() < 1 {
            eprintln!("SKIP: this kernel has no Landlock");
            return;
        }
        let t = std::env::temp_dir().join(format!("lockbox-ll-{}", std::process::id()));
        let (rw, ro, other) = (t.join("rw"), t.join("ro"), t.join("other"));
        for d in [&rw, &ro, &other] {
            std::fs::create_dir_all(d).unwrap();
        }
        std::fs::write(ro.join("f"), "x").unwrap();
        let sh = Path::new("/bin/sh").canonicalize().unwrap();
        let interp = elf_interp(&sh).unwrap();
        let mut rules = base_rules(&sh, interp.as_deref());
        rules.push(mount_rule(rw.strip_prefix("/").unwrap(), true, true));
        rules.push(mount_rule(ro.strip_prefix("/").unwrap(), true, false));
        for sys in ["usr", "lib", "lib64", "etc"] {
            if Path::new("/").join(sys).exists() {
                rules.push(mount_rule(Path::new(sys), true, false));
            }
        }
        // SAFETY: the child makes system calls and exits.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            let st = restrict(&rules);
            let ok = |r: io::Result<()>| r.is_ok();
            let bits = [
                !matches!(st, Ok(RulesetStatus::FullyEnforced)),
                !ok(std::fs::write(rw.join("new"), "y")),
                ok(std::fs::write(ro.join("new"), "y")),
                ok(std::fs::write(other.join("new"), "y")),
                std::fs::read(ro.join("f")).is_err(),
                // /usr/bin/env is readable but not executable.
                std::process::Command::new("/usr/bin/env").status().is_ok(),
                !std::process::Command::new(&sh)
                    .args(["-c", "exit 0"])
                    .status()
                    .is_ok_and(|s| s.success()),
            ];
            let code = bits
                .iter()
                .enumerate()
                .fold(0, |c, (i, b)| c | (i32::from(*b) << i));
            // SAFETY: leave without destructors.
            unsafe { libc::_exit(code) };
        }
        let mut st = 0;
        // SAFETY: our own child.
        unsafe { libc::waitpid(pid, &mut st, 0) };
        let _ = std::fs::remove_dir_all(&t);
        assert!(libc::WIFEXITED(st));
        assert_eq!(
            libc::WEXITSTATUS(st),
            0,
            "bitmask of failed expectations: {:#b}",
            libc::WEXITSTATUS(st)
        );
    }
}
