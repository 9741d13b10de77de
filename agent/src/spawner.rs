//! The spawner: a small process the agent forks once, which starts every
//! exec with a vfork-style clone (no copy of any address space, nothing to
//! tear down at exec) and CLONE_PARENT, so workloads are still the agent's
//! children and its reaper collects them as before.
//!
//! Why a separate process rather than a vfork from the agent: a workload
//! must have OOM score 1000, and a process that is not dumpable cannot open
//! its own /proc/self/oom_score_adj. Dumpability belongs to the address
//! space, so a child sharing the agent's would have to make the agent
//! itself dumpable (traceable by sandbox root) for that open. The spawner
//! raises its own score once, when it starts, and every clone inherits it;
//! it is not dumpable afterwards, and neither is anything sharing its
//! memory until the exec.
//!
//! Requests are one stream message (length, then the fields) with the
//! three stdio fds attached (SCM_RIGHTS); the answer is the pid, or the
//! errno of whichever step failed before or at execve.

use std::ffi::CString;
use std::io::{self, IoSlice, IoSliceMut, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

use nix::sys::socket::{
    recvmsg, sendmsg, socketpair, AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags,
    SockFlag, SockType,
};

use crate::confine::{ChildSetup, Confine};

/// What one exec needs in the new process; strings are the caller's,
/// checked for NUL before they get here.
pub struct Request<'a> {
    pub program: &'a str,
    pub argv: &'a [String],
    pub env: &'a [String],
    pub cwd: &'a str,
    pub uid: u32,
    pub gid: u32,
    pub tty: bool,
    /// stdin, stdout, stderr of the new process.
    pub stdio: [&'a OwnedFd; 3],
}

/// The agent's end.
pub struct Spawner {
    sock: UnixStream,
    pidfd: Option<OwnedFd>,
}

/// How long the agent waits for one request. A workload may stop the
/// spawner (it has the workloads' uid, and root keeps CAP_KILL) or the
/// child before its exec; the agent must not wait for it forever. Far
/// above any real exec, even of a large binary on a slow disk.
const REPLY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

impl Drop for Spawner {
    /// A spawner dropped is out of step or gone: killed through its pidfd
    /// (never a pid the reaper may have freed for a workload), it is then
    /// reaped like any child. Without a pidfd, closing the socket ends it
    /// unless it is stopped.
    fn drop(&mut self) {
        if let Some(p) = &self.pidfd {
            // SAFETY: pidfd_send_signal on a pidfd we own.
            unsafe {
                libc::syscall(
                    libc::SYS_pidfd_send_signal,
                    p.as_raw_fd(),
                    libc::SIGKILL,
                    std::ptr::null::<libc::siginfo_t>(),
                    0,
                )
            };
        }
    }
}

/// Over this, the request cannot be for a real exec (the kernel's own
/// limit on argv+env is far below): refused before it is sent.
const MAX_REQUEST: usize = 64 << 20;

impl Spawner {
    /// Forks the spawner. Call with no workload running (at agent start)
    /// where possible: the child is briefly dumpable to raise its OOM
    /// score (see above); a respawn after the spawner died has the same
    /// window the per-exec fork used to have, on a copy of the agent.
    pub fn start(confine: &Confine) -> io::Result<Spawner> {
        let (ours, theirs) = socketpair(
            AddressFamily::Unix,
            SockType::Stream,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .map_err(io::Error::from)?;
        let setup = confine.child_setup();
        // SAFETY: the child only makes system calls and allocates (glibc's
        // fork leaves malloc usable in the child) before serving.
        match unsafe { libc::fork() } {
            -1 => Err(io::Error::last_os_error()),
            0 => {
                drop(ours);
                let code = serve(theirs, &setup);
                // SAFETY: leave without running the agent's destructors.
                unsafe { libc::_exit(code) }
            }
            pid => {
                let sock = UnixStream::from(ours);
                sock.set_read_timeout(Some(REPLY_TIMEOUT))?;
                sock.set_write_timeout(Some(REPLY_TIMEOUT))?;
                // SAFETY: pidfd_open of our child, not reaped yet (the
                // reaper runs on this thread, later).
                let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) } as RawFd;
                // SAFETY: a new fd we own, when there is one.
                let pidfd = (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd) });
                Ok(Spawner { sock, pidfd })
            }
        }
    }

    /// Starts a process; blocks until it has exec'd or failed, like a
    /// fork-and-exec. `Err` with `delivered == false` means the spawner is
    /// gone and the request was not sent (safe to retry elsewhere).
    pub fn spawn(&mut self, req: &Request) -> Result<i32, SpawnError> {
        let body = encode(req);
        if body.len() > MAX_REQUEST {
            return Err(SpawnError::Exec(io::Error::from_raw_os_error(libc::E2BIG)));
        }
        let len = (body.len() as u32).to_le_bytes();
        let fds = req.stdio.map(|f| f.as_raw_fd());
        let cmsg = [ControlMessage::ScmRights(&fds)];
        let iov = [IoSlice::new(&len), IoSlice::new(&body)];
        let sent = sendmsg::<()>(
            self.sock.as_raw_fd(),
            &iov,
            &cmsg,
            MsgFlags::MSG_NOSIGNAL,
            None,
        )
        .map_err(|_| SpawnError::NotDelivered)?;
        let total = len.len() + body.len();
        if sent < total {
            let rest: Vec<u8> = len.iter().chain(body.iter()).skip(sent).copied().collect();
            self.sock.write_all(&rest).map_err(SpawnError::Lost)?;
        }
        // No receipt (the spawner died first, e.g. killed from inside the
        // sandbox an instant before): nothing started, safe to retry. A
        // timeout is not that: a stopped spawner may still go on.
        let mut got = [0u8; 1];
        match self.sock.read_exact(&mut got) {
            Ok(()) if got[0] == RECEIVED => {}
            Ok(()) => return Err(SpawnError::Lost(io::Error::other("spawner out of step"))),
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                return Err(SpawnError::NotDelivered)
            }
            Err(e) => return Err(SpawnError::Lost(e)),
        }
        let mut ans = [0u8; 8];
        self.sock.read_exact(&mut ans).map_err(SpawnError::Lost)?;
        let pid = i32::from_le_bytes(ans[..4].try_into().unwrap());
        let errno = i32::from_le_bytes(ans[4..].try_into().unwrap());
        if errno != 0 {
            return Err(SpawnError::Exec(io::Error::from_raw_os_error(errno)));
        }
        Ok(pid)
    }
}

/// The spawner's receipt of a request, sent before it starts anything.
const RECEIVED: u8 = 0xA5;

pub enum SpawnError {
    /// The spawner is gone and never acknowledged the request: nothing was
    /// started.
    NotDelivered,
    /// The spawner went away mid-request: whether a process started is
    /// unknown (if one did, the reaper collects it).
    Lost(io::Error),
    /// The new process failed before or at execve.
    Exec(io::Error),
}

fn put_str(b: &mut Vec<u8>, s: &str) {
    b.extend_from_slice(s.as_bytes());
    b.push(0);
}

fn encode(r: &Request) -> Vec<u8> {
    let mut b = Vec::with_capacity(
        64 + r.program.len()
            + r.cwd.len()
            + r.argv
                .iter()
                .chain(r.env)
                .map(|s| s.len() + 1)
                .sum::<usize>(),
    );
    for n in [
        r.uid,
        r.gid,
        r.tty as u32,
        r.argv.len() as u32,
        r.env.len() as u32,
    ] {
        b.extend_from_slice(&n.to_le_bytes());
    }
    put_str(&mut b, r.program);
    put_str(&mut b, r.cwd);
    for s in r.argv.iter().chain(r.env) {
        put_str(&mut b, s);
    }
    b
}

/// A decoded request: everything the child needs, built before the clone
/// so the child allocates nothing.
struct Decoded {
    uid: u32,
    gid: u32,
    tty: bool,
    program: CString,
    cwd: CString,
    argv: Vec<CString>,
    env: Vec<CString>,
}

fn decode(b: &[u8]) -> Option<Decoded> {
    let n = |i: usize| {
        Some(u32::from_le_bytes(
            b.get(i * 4..i * 4 + 4)?.try_into().ok()?,
        ))
    };
    let (uid, gid, tty, argc, envc) = (n(0)?, n(1)?, n(2)? != 0, n(3)?, n(4)?);
    let mut strs = b[20..].split(|c| *c == 0).map(|s| CString::new(s).ok());
    let mut take = |k: u32| -> Option<Vec<CString>> { (0..k).map(|_| strs.next()?).collect() };
    let head = take(2)?;
    let argv = take(argc)?;
    let env = take(envc)?;
    let [program, cwd]: [CString; 2] = head.try_into().ok()?;
    Some(Decoded {
        uid,
        gid,
        tty,
        program,
        cwd,
        argv,
        env,
    })
}

/// Reads one request: the length and fds, then the body.
fn receive(sock: &mut UnixStream) -> io::Result<Option<(Vec<u8>, Vec<OwnedFd>)>> {
    let mut len = [0u8; 4];
    let mut space = nix::cmsg_space!([RawFd; 3]);
    let mut fds = Vec::new();
    let got = {
        let mut iov = [IoSliceMut::new(&mut len)];
        let m = recvmsg::<()>(
            sock.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )
        .map_err(io::Error::from)?;
        for c in m.cmsgs().map_err(io::Error::from)? {
            if let ControlMessageOwned::ScmRights(r) = c {
                // SAFETY: the kernel just installed these fds for us.
                fds.extend(r.into_iter().map(|f| unsafe { OwnedFd::from_raw_fd(f) }));
            }
        }
        m.bytes
    };
    if got == 0 {
        return Ok(None);
    }
    sock.read_exact(&mut len[got..])?;
    let n = u32::from_le_bytes(len) as usize;
    if n > MAX_REQUEST {
        return Err(io::Error::from_raw_os_error(libc::E2BIG));
    }
    let mut body = vec![0u8; n];
    sock.read_exact(&mut body)?;
    Ok(Some((body, fds)))
}

/// The spawner's life: set itself up once, then one clone per request.
fn serve(sock: OwnedFd, setup: &ChildSetup) -> i32 {
    let keep = sock.as_raw_fd();
    // SAFETY: plain system calls on this process.
    unsafe {
        // Nothing of the agent's (listener, signalfd, connections) stays
        // open here.
        libc::syscall(libc::SYS_close_range, 3u32, (keep - 1) as u32, 0u32);
        libc::syscall(libc::SYS_close_range, (keep + 1) as u32, u32::MAX, 0u32);
        // Every disposition back to default (Rust ignores SIGPIPE; a
        // workload must not inherit that), nothing blocked: clones inherit
        // both, and the spawner dies with the agent's stop like any process.
        // Raw rt_sigaction: glibc refuses the two signals it keeps for
        // itself, which would otherwise stay as the agent has them.
        // Kernel layout: handler, flags, restorer, mask; all zero is
        // SIG_DFL.
        let dfl = [0u64; 4];
        for s in 1..=64 {
            if s != libc::SIGKILL && s != libc::SIGSTOP {
                libc::syscall(
                    libc::SYS_rt_sigaction,
                    s,
                    dfl.as_ptr(),
                    std::ptr::null_mut::<u64>(),
                    8usize,
                );
            }
        }
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
    }
    crate::confine::raise_oom_score();
    if crate::confine::install_exec_filter(setup).is_err() {
        return 1;
    }
    let mut sock = UnixStream::from(sock);
    // Mapped, not allocated: only the pages a child touches (a few KiB)
    // are ever resident, and this process lives as long as the sandbox.
    const STACK: usize = 64 << 10;
    // SAFETY: a fresh anonymous mapping, never unmapped.
    let base = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            STACK,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
            -1,
            0,
        )
    };
    if base == libc::MAP_FAILED {
        return 1;
    }
    // SAFETY: the mapping above, used only by this thread and its clones.
    let stack = unsafe { std::slice::from_raw_parts_mut(base.cast::<u8>(), STACK) };
    loop {
        let (body, fds) = match receive(&mut sock) {
            Ok(Some(r)) => r,
            Ok(None) => return 0,
            // Out of step with the agent (it checks the size before
            // sending): leaving makes its next request start a new one.
            Err(_) => return 1,
        };
        // Receipt, before anything can start: a spawner that dies before
        // this byte leaves the agent certain nothing ran, so it retries.
        if sock.write_all(&[RECEIVED]).is_err() {
            return 0;
        }
        let (pid, errno) = match (decode(&body), <[OwnedFd; 3]>::try_from(fds)) {
            (Some(d), Ok(fds)) => clone_exec(&d, &fds, setup, stack),
            _ => (0, libc::EINVAL),
        };
        if reply(&mut sock, pid, errno).is_err() {
            return 0;
        }
    }
}

fn reply(sock: &mut UnixStream, pid: i32, errno: i32) -> io::Result<()> {
    let mut a = [0u8; 8];
    a[..4].copy_from_slice(&pid.to_le_bytes());
    a[4..].copy_from_slice(&errno.to_le_bytes());
    sock.write_all(&a)
}

/// What the child reads: pointers into memory the spawner keeps alive
/// (it is suspended until the child execs or exits), and where it leaves
/// its errno.
struct ChildArgs<'a> {
    d: &'a Decoded,
    argv: Vec<*const libc::c_char>,
    envp: Vec<*const libc::c_char>,
    stdio: [RawFd; 3],
    setup: &'a ChildSetup,
    errno: i32,
}

fn clone_exec(d: &Decoded, fds: &[OwnedFd; 3], setup: &ChildSetup, stack: &mut [u8]) -> (i32, i32) {
    let ptrs = |v: &[CString]| {
        v.iter()
            .map(|s| s.as_ptr())
            .chain(std::iter::once(std::ptr::null()))
            .collect::<Vec<_>>()
    };
    let mut args = ChildArgs {
        d,
        argv: ptrs(&d.argv),
        envp: ptrs(&d.env),
        stdio: fds.each_ref().map(|f| f.as_raw_fd()),
        setup,
        errno: 0,
    };
    // SAFETY: CLONE_VFORK suspends us until the child has exec'd or
    // exited, so `args` and the stack outlive every use by the child; the
    // stack grows down from its (16-byte aligned) end.
    let pid = unsafe {
        let top = stack.as_mut_ptr().add(stack.len()) as usize & !15;
        libc::clone(
            child,
            top as *mut libc::c_void,
            libc::CLONE_VM | libc::CLONE_VFORK | libc::CLONE_PARENT | libc::SIGCHLD,
            (&mut args as *mut ChildArgs).cast(),
        )
    };
    if pid < 0 {
        return (
            0,
            io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EAGAIN),
        );
    }
    // A failed child has exited; the agent's reaper collects it.
    (pid, args.errno)
}

/// Runs in the new process, on the spawner's memory: system calls only.
extern "C" fn child(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the spawner's ChildArgs, alive until we exec/exit.
    let a = unsafe { &mut *(arg as *mut ChildArgs) };
    let r = (|| -> Result<(), i32> {
        for (target, &fd) in a.stdio.iter().enumerate() {
            let target = target as RawFd;
            // SAFETY: fd juggling in our own (unshared) fd table.
            let r = unsafe {
                if fd == target {
                    libc::fcntl(fd, libc::F_SETFD, 0)
                } else {
                    libc::dup2(fd, target)
                }
            };
            if r < 0 {
                return Err(errno());
            }
        }
        // SAFETY: as above; only 0-2 survive into the workload.
        unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) };
        crate::confine::apply_in_child(a.setup, a.d.uid, a.d.gid, a.d.tty, a.d.cwd.as_ptr())?;
        // SAFETY: NUL-terminated arrays of pointers into live CStrings.
        unsafe { libc::execve(a.d.program.as_ptr(), a.argv.as_ptr(), a.envp.as_ptr()) };
        Err(errno())
    })();
    a.errno = r.err().unwrap_or(libc::EINVAL);
    // SAFETY: leave without touching the shared memory's libc state.
    unsafe { libc::_exit(127) }
}

fn errno() -> i32 {
    io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EINVAL)
}
