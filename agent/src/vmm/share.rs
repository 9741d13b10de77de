//! virtiofsd for each volume of a VM sandbox (docs/microvm.md, "Volumes").
//!
//! The daemon reads and writes a directory whose content the sandbox
//! controls at every moment, so it runs in a jail of its own, as qemu
//! does: its own user namespace mapping guest ids 0..65535 to host
//! 100000.. (the native sandbox's ids; a volume owned by an ordinary host
//! user maps that user to guest root, as native's idmapped volumes do),
//! mount, pid, ipc, uts, net and cgroup namespaces, the VMM's cgroup, a
//! read-only tmpfs root with only /usr (the daemon and its libraries),
//! /dev/null, a fresh /proc and the volume at /share (a detached clone of
//! it, nosuid/nodev/noexec, read-only when the volume is, made by the
//! helper refusing any link on its path), no_new_privs, an empty
//! environment. virtiofsd then adds its own sandbox on top
//! (`-o sandbox=namespace`: pivot_root into /share, so the volume is its
//! whole filesystem and an absolute symlink planted in it resolves inside
//! it), its own seccomp allow-list and a capability set cut to file
//! ownership and permission (no mknod, no setfcap).
//!
//! The vhost-user socket: the helper binds it in the sandbox's directory
//! (0600), connects to it and unlinks it before either process runs; the
//! daemon gets the listener (which holds that one pending connection) as
//! fd 3, qemu the connected end at the fd number the engine chose.

use std::ffi::CString;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::root::{
    self, ctx, cvt, die_with, report_and_exit, tree, Tree, MOUNT_ATTR_NODEV, MOUNT_ATTR_NOEXEC,
    MOUNT_ATTR_NOSUID, MOUNT_ATTR_RDONLY,
};
use crate::cgroup::Cgroup;
use crate::supervisor::{HOST_ID_BASE, ID_RANGE, NS_OWNER_ID};
use crate::sys;

/// One volume, as the engine asks for it (engine/src/backend/microvm/volumes.rs).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShareSpec {
    /// The volume's host directory (resolved by the engine without links).
    pub src: String,
    pub read_only: bool,
    /// The fd number qemu's `-chardev socket,fd=` names.
    pub qemu_fd: i32,
    /// The daemon's host path; must be under /usr (the jail shows only that).
    pub virtiofsd: String,
}

/// virtiofsd keeps an O_PATH fd per inode the guest looked up: this
/// bounds them (a guest past it gets EMFILE on lookups, the host nothing).
const NOFILE: u64 = 16384;
/// qemu's fds below this are its own (agent port, QMP); the shares' are
/// below MAX_QEMU_FD so that they can pass through copies above it.
const MIN_QEMU_FD: i32 = 10;
const MAX_QEMU_FD: i32 = 64;

fn owner(fd: &OwnedFd) -> io::Result<(u32, u32)> {
    // SAFETY: fstat into a zeroed struct on a valid fd.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((st.st_uid, st.st_gid))
}

/// The daemon's id map for a volume whose root is owned by `owner`: guest
/// id N is host HOST_ID_BASE + N, except that a volume owned by an
/// ordinary host user (not root, not a sandbox id) is that user's to
/// guest root, as native's idmapped volume mounts make it.
pub fn id_map(owner: u32) -> String {
    let range = HOST_ID_BASE..HOST_ID_BASE + ID_RANGE;
    if owner == 0 || range.contains(&owner) {
        return format!("0 {HOST_ID_BASE} {ID_RANGE}\n");
    }
    format!("0 {owner} 1\n1 {} {}\n", HOST_ID_BASE + 1, ID_RANGE - 1)
}

/// A copy of `fd` numbered 10 or more (close-on-exec): out of the way of
/// the fixed numbers the daemon's fds are moved to.
fn high(fd: OwnedFd) -> io::Result<OwnedFd> {
    // SAFETY: F_DUPFD_CLOEXEC of an fd we hold; the result is ours.
    let n = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 10) };
    cvt(n)?;
    // SAFETY: fresh fd.
    Ok(unsafe { OwnedFd::from_raw_fd(n) })
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut p = [0; 2];
    // SAFETY: pipe2 into a local array.
    cvt(unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC) })?;
    // SAFETY: fresh fds from pipe2.
    let (r, w) = unsafe { (OwnedFd::from_raw_fd(p[0]), OwnedFd::from_raw_fd(p[1])) };
    Ok((high(r)?, high(w)?))
}

/// A listening socket only this uid may connect to (no window in which
/// the file is more open than 0600).
fn bind_private(path: &Path) -> io::Result<UnixListener> {
    // SAFETY: umask is process-wide; the helper is single-threaded here.
    let old = unsafe { libc::umask(0o177) };
    let l = UnixListener::bind(path);
    // SAFETY: restores the previous mask.
    unsafe { libc::umask(old) };
    l
}

/// Starts one confined virtiofsd per share; returns qemu's ends of the
/// vhost-user sockets with the fd numbers qemu expects them at. The
/// daemons join `cgroup`, so the helper's teardown (`cgroup.kill`) ends
/// them with qemu.
pub fn start_all(
    shares: &[ShareSpec],
    sandbox_dir: &Path,
    cgroup: &Cgroup,
) -> Result<Vec<(OwnedFd, RawFd)>, String> {
    if shares.is_empty() {
        return Ok(Vec::new());
    }
    // SAFETY: geteuid.
    if unsafe { libc::geteuid() } != 0 {
        return Err("volumes need the helper to run as root (a range of host ids)".into());
    }
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    for (i, s) in shares.iter().enumerate() {
        if !(MIN_QEMU_FD..MAX_QEMU_FD).contains(&s.qemu_fd) || !seen.insert(s.qemu_fd) {
            return Err(format!("share {i}: bad qemu fd {}", s.qemu_fd));
        }
        if !s.virtiofsd.starts_with("/usr/") || s.virtiofsd.contains("/../") {
            return Err(format!("virtiofsd {} is not under /usr", s.virtiofsd));
        }
        let fd =
            start_one(i, s, sandbox_dir, cgroup).map_err(|e| format!("volume {}: {e}", s.src))?;
        out.push((fd, s.qemu_fd));
    }
    Ok(out)
}

fn start_one(i: usize, s: &ShareSpec, dir: &Path, cgroup: &Cgroup) -> io::Result<OwnedFd> {
    let attrs = MOUNT_ATTR_NOSUID
        | MOUNT_ATTR_NODEV
        | MOUNT_ATTR_NOEXEC
        | if s.read_only { MOUNT_ATTR_RDONLY } else { 0 };
    let share = tree(Path::new(&s.src), "share", attrs)?;
    if !share.is_dir {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a directory",
        ));
    }
    // The ids of the root of the tree we hold, not of the path again.
    let (uid, gid) = owner(&share.fd)?;
    let (mut trees, links) = root::system()?;
    trees.push(share);

    let path = dir.join(format!("vfs-{i}.sock"));
    let _ = std::fs::remove_file(&path);
    let listener = bind_private(&path)?;
    let client = UnixStream::connect(&path);
    let _ = std::fs::remove_file(&path);
    let client = client?;

    let argv = daemon_args(&s.virtiofsd)?;
    let jail = Jail {
        trees,
        links,
        uid_map: id_map(uid),
        gid_map: id_map(gid),
        verbose: std::env::var_os("LOCKBOX_LOG").is_some(),
    };
    spawn(&jail, OwnedFd::from(listener), cgroup, &argv)?;
    Ok(OwnedFd::from(client))
}

fn daemon_args(daemon: &str) -> io::Result<Vec<CString>> {
    let level = if std::env::var_os("LOCKBOX_LOG").is_some() {
        "log_level=warn"
    } else {
        "log_level=err"
    };
    [
        daemon,
        "--fd=3",
        "-o",
        "source=/share",
        "-o",
        "sandbox=namespace",
        "-o",
        "cache=auto",
        "-o",
        "no_xattr",
        "-o",
        "no_posix_lock",
        "-o",
        "no_flock",
        "-o",
        "modcaps=-mknod:-setfcap",
        "-o",
        level,
        // The jail set the bound; raising it needs a capability the daemon
        // does not have in its namespace.
        "--rlimit-nofile=0",
        "--thread-pool-size=0",
    ]
    .iter()
    .map(|a| CString::new(*a).map_err(|_| io::Error::other("NUL in virtiofsd argument")))
    .collect()
}

struct Jail {
    trees: Vec<Tree>,
    links: Vec<(String, PathBuf)>,
    uid_map: String,
    gid_map: String,
    /// The daemon's stderr goes to the helper's log (LOCKBOX_LOG set);
    /// otherwise to /dev/null: the guest could make it write without end.
    verbose: bool,
}

/// Forks the daemon's outer process: it joins the cgroup, clones the
/// daemon into its namespaces (owned by NS_OWNER_ID, never host root),
/// writes its id maps, then drops to NS_OWNER_ID and waits for it. A
/// failure before the daemon's execve comes back through a close-on-exec
/// pipe.
fn spawn(jail: &Jail, listener: OwnedFd, cgroup: &Cgroup, argv: &[CString]) -> io::Result<()> {
    let listener = high(listener)?;
    let (rd, wr) = pipe()?;
    let (go_rd, go_wr) = pipe()?;
    let helper = std::process::id() as libc::pid_t;
    // SAFETY: the helper is single-threaded here; the child only makes
    // system calls and exits.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    if pid == 0 {
        drop(rd);
        let e = outer(jail, &listener, cgroup, helper, argv, &wr, &go_rd, go_wr);
        report_and_exit(&wr, &e);
    }
    drop(wr);
    drop(go_rd);
    drop(go_wr);
    let mut msg = String::new();
    let _ = (&std::fs::File::from(rd))
        .take(4096)
        .read_to_string(&mut msg);
    if !msg.is_empty() {
        // SAFETY: our own child.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
            libc::waitpid(pid, std::ptr::null_mut(), 0);
        }
        return Err(io::Error::other(format!("virtiofsd jail: {msg}")));
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn outer(
    jail: &Jail,
    listener: &OwnedFd,
    cgroup: &Cgroup,
    helper: libc::pid_t,
    argv: &[CString],
    wr: &OwnedFd,
    go_rd: &OwnedFd,
    go_wr: OwnedFd,
) -> io::Error {
    let r = (|| -> io::Result<()> {
        die_with(Some(helper))?;
        // SAFETY: getpid.
        ctx("join cgroup", cgroup.attach(unsafe { libc::getpid() }))?;
        // SAFETY: setrlimit with local values (as host root: raising the
        // hard limit needs CAP_SYS_RESOURCE of the host's namespace).
        unsafe {
            let n = libc::rlimit {
                rlim_cur: NOFILE,
                rlim_max: NOFILE,
            };
            cvt(libc::setrlimit(libc::RLIMIT_NOFILE, &n))?;
            let zero = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            libc::setrlimit(libc::RLIMIT_CORE, &zero);
        }
        const KEEP: u32 = u32::MAX;
        // The new user namespace's owner is our effective id at the clone.
        // SAFETY: credential calls on this single-threaded process; real
        // and saved ids stay 0, so switching back is allowed.
        unsafe {
            cvt(libc::setresgid(KEEP, NS_OWNER_ID, KEEP))?;
            cvt(libc::setresuid(KEEP, NS_OWNER_ID, KEEP))?;
        }
        let ns = libc::CLONE_NEWUSER
            | libc::CLONE_NEWNS
            | libc::CLONE_NEWPID
            | libc::CLONE_NEWIPC
            | libc::CLONE_NEWUTS
            | libc::CLONE_NEWNET
            | libc::CLONE_NEWCGROUP;
        let pid = ctx("clone", sys::clone_fork(ns))?;
        if pid == 0 {
            drop(go_wr);
            let e = inner(jail, listener, argv, go_rd);
            report_and_exit(wr, &e);
        }
        // SAFETY: back to root for the id maps (saved uid is 0).
        unsafe {
            cvt(libc::setresuid(KEEP, 0, KEEP))?;
            cvt(libc::setresgid(KEEP, 0, KEEP))?;
        }
        let maps = (|| {
            std::fs::write(format!("/proc/{pid}/uid_map"), &jail.uid_map)?;
            std::fs::write(format!("/proc/{pid}/gid_map"), &jail.gid_map)
        })();
        if let Err(e) = maps {
            // SAFETY: our own child.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            return Err(io::Error::new(e.kind(), format!("id maps: {e}")));
        }
        // SAFETY: one byte to our child, then our copies of the pipes go.
        unsafe {
            libc::write(go_wr.as_raw_fd(), b"g".as_ptr().cast(), 1);
            libc::close(wr.as_raw_fd());
        }
        drop(go_wr);
        // Nothing left to do as root: wait as the namespace owner.
        // SAFETY: credential calls; no way back afterwards.
        unsafe {
            cvt(libc::setgroups(0, std::ptr::null()))?;
            cvt(libc::setresgid(NS_OWNER_ID, NS_OWNER_ID, NS_OWNER_ID))?;
            cvt(libc::setresuid(NS_OWNER_ID, NS_OWNER_ID, NS_OWNER_ID))?;
        }
        die_with(Some(helper))?;
        let mut st = 0;
        // SAFETY: waits for our own child, then leaves without destructors.
        unsafe {
            libc::waitpid(pid, &mut st, 0);
            libc::_exit(if libc::WIFEXITED(st) {
                libc::WEXITSTATUS(st)
            } else {
                128 + libc::WTERMSIG(st)
            })
        }
    })();
    r.err()
        .unwrap_or_else(|| io::Error::other("share jail: unreachable"))
}

/// PID 1 of the daemon's namespaces: waits for its id maps, builds the
/// root and becomes virtiofsd.
fn inner(jail: &Jail, listener: &OwnedFd, argv: &[CString], go_rd: &OwnedFd) -> io::Error {
    let r = (|| -> io::Result<()> {
        let mut b = [0u8; 1];
        // SAFETY: read into a local byte.
        if unsafe { libc::read(go_rd.as_raw_fd(), b.as_mut_ptr().cast(), 1) } != 1 {
            return Err(io::Error::other(
                "the jail's parent went before the id maps",
            ));
        }
        // Root of the new namespace (host HOST_ID_BASE or the volume's
        // owner), with its capabilities over the mapped ids only.
        // SAFETY: credential calls on this single-threaded process.
        unsafe {
            ctx("setgroups", cvt(libc::setgroups(0, std::ptr::null())))?;
            ctx("setresgid", cvt(libc::setresgid(0, 0, 0)))?;
            ctx("setresuid", cvt(libc::setresuid(0, 0, 0)))?;
        }
        die_with(None)?;
        // virtiofsd reaches its files through /proc/self/fd, and mounts
        // its own proc (which needs one mounted here to be allowed).
        root::enter(&jail.trees, &jail.links, true, b"lockbox-vfs")?;
        // SAFETY: fd juggling on our own fds: the listener to 3 (without
        // close-on-exec), /dev/null on 0 and 1 (stdout is still the
        // engine's status pipe), and on 2 unless asked for logs.
        unsafe {
            cvt(libc::dup2(listener.as_raw_fd(), 3))?;
            let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC);
            cvt(null)?;
            cvt(libc::dup2(null, 0))?;
            cvt(libc::dup2(null, 1))?;
            if !jail.verbose {
                cvt(libc::dup2(null, 2))?;
            }
            libc::syscall(
                libc::SYS_close_range,
                4u32,
                u32::MAX,
                libc::CLOSE_RANGE_CLOEXEC,
            );
        }
        // SAFETY: prctl with integers.
        ctx(
            "no_new_privs",
            cvt(unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) }),
        )?;
        // The guest kernel is the sandbox's: a setuid or setgid mode it
        // asks for would land on a host file that any local user reaching
        // the volume could run as its owner. The host kernel refuses it.
        let modes = crate::seccomp::suid_modes_program()
            .map_err(|e| io::Error::other(format!("seccomp filter: {e:#}")))?;
        for p in &modes {
            ctx(
                "seccomp",
                seccompiler::apply_filter(p).map_err(|e| io::Error::other(e.to_string())),
            )?;
        }
        let mut ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
        ptrs.push(std::ptr::null());
        let env: [*const libc::c_char; 1] = [std::ptr::null()];
        // SAFETY: NULL-terminated arrays of valid C strings.
        unsafe { libc::execve(argv[0].as_ptr(), ptrs.as_ptr(), env.as_ptr()) };
        let e = io::Error::last_os_error();
        Err(io::Error::new(e.kind(), format!("execve virtiofsd: {e}")))
    })();
    r.err()
        .unwrap_or_else(|| io::Error::other("share jail: unreachable"))
}

/// In qemu's jail, after its own fds are in place and the rest marked
/// close-on-exec: each share's socket at its number, inherited by qemu.
/// Through copies above every target first, so that no move closes a
/// socket still to be moved.
pub fn place_fds(fds: &[(OwnedFd, RawFd)]) -> io::Result<()> {
    let mut tmp = Vec::new();
    for (fd, at) in fds {
        // SAFETY: F_DUPFD_CLOEXEC of an fd we hold.
        let n = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, MAX_QEMU_FD) };
        cvt(n)?;
        tmp.push((n, *at));
    }
    for (n, at) in tmp {
        // SAFETY: dup2 of our copy onto the number qemu expects; dup2
        // leaves the new fd without close-on-exec.
        cvt(unsafe { libc::dup2(n, at) })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_maps_follow_native_volumes() {
        assert_eq!(id_map(0), "0 100000 65536\n");
        assert_eq!(id_map(100_000), "0 100000 65536\n");
        assert_eq!(id_map(1000), "0 1000 1\n1 100001 65535\n");
    }
}
