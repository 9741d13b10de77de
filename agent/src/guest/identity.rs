//! A restored VM's fresh identity (engine: backend/microvm/checkpoint.rs).
//! Copies of one checkpoint start with the same memory: the same hostname
//! and, worse, the same RNG state, so each copy's first random numbers
//! would be the others'. The engine sends `Reseed` after a restore; this
//! sets the hostname and mixes the host's random bytes into the RNG with
//! credit, then forces a reseed.
//!
//! Both need CAP_SYS_ADMIN, which the agent drops (`Confine::lock_agent`).
//! So PID 1 forks a keeper before it locks itself: a separate process
//! (its own memory, not dumpable: nothing in the guest without
//! CAP_SYS_PTRACE can reach into it) that keeps its capabilities and does
//! exactly these two things for messages on a socketpair whose other end
//! only the agent holds (close-on-exec: no workload inherits it).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::{Mutex, OnceLock};

/// `_IOW('R', 0x03, int[2])` and `_IO('R', 0x07)` (linux/random.h).
const RNDADDENTROPY: libc::c_ulong = 0x4008_5203;
const RNDRESEEDCRNG: libc::c_ulong = 0x5207;
/// A message: hostname (at most 64 bytes), NUL, entropy (at most 512).
const MAX_MSG: usize = 64 + 1 + 512;
const MAX_ENTROPY: usize = 512;
/// How long the agent waits for the keeper's answer.
const ANSWER_MS: i32 = 2000;

static KEEPER: OnceLock<OwnedFd> = OnceLock::new();
/// The sandbox's name after a restore (the agent's spec has the source's).
static NAME: Mutex<Option<String>> = Mutex::new(None);

/// The name a restored VM answers to, once `reseed` set it.
pub fn renamed() -> Option<String> {
    NAME.lock().ok().and_then(|n| n.clone())
}

/// Forks the keeper. Called by PID 1 while it is single-threaded and still
/// has its capabilities.
pub fn spawn_keeper() -> io::Result<()> {
    let mut sv = [0; 2];
    // SAFETY: socketpair into a local array.
    if unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
            0,
            sv.as_mut_ptr(),
        )
    } < 0
    {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fresh fds from socketpair.
    let (agent, keeper) = unsafe { (OwnedFd::from_raw_fd(sv[0]), OwnedFd::from_raw_fd(sv[1])) };
    // SAFETY: PID 1 is single-threaded here; the child only makes system
    // calls on its stack buffer and exits.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    if pid == 0 {
        drop(agent);
        keep(&keeper);
    }
    drop(keeper);
    let _ = KEEPER.set(agent);
    Ok(())
}

/// The keeper's loop: one message, one answer (0 ok, else an errno).
fn keep(sock: &OwnedFd) -> ! {
    // SAFETY: prctl with integers.
    unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
    let mut buf = [0u8; MAX_MSG];
    loop {
        // SAFETY: read into a local buffer.
        let n = unsafe { libc::read(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n == 0 {
            // SAFETY: leave without destructors (the agent is gone).
            unsafe { libc::_exit(0) };
        }
        if n < 0 {
            if io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            // SAFETY: as above.
            unsafe { libc::_exit(1) };
        }
        let code = apply(&buf[..n as usize]).err().unwrap_or(0);
        // SAFETY: write from a local.
        unsafe { libc::write(sock.as_raw_fd(), code.to_ne_bytes().as_ptr().cast(), 4) };
    }
}

fn errno() -> i32 {
    io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

fn apply(msg: &[u8]) -> Result<(), i32> {
    let nul = msg.iter().position(|&b| b == 0).ok_or(libc::EINVAL)?;
    let (host, entropy) = (&msg[..nul], &msg[nul + 1..]);
    if host.is_empty() || host.len() > 64 || entropy.len() > MAX_ENTROPY {
        return Err(libc::EINVAL);
    }
    // SAFETY: sethostname with a bounded local slice.
    if unsafe { libc::sethostname(host.as_ptr().cast(), host.len()) } < 0 {
        return Err(errno());
    }
    // struct rand_pool_info { int entropy_count; int buf_size; u32 buf[]; }
    let mut info = Vec::with_capacity(8 + entropy.len());
    info.extend_from_slice(&((entropy.len() * 8) as i32).to_ne_bytes());
    info.extend_from_slice(&(entropy.len() as i32).to_ne_bytes());
    info.extend_from_slice(entropy);
    // SAFETY: open and ioctls on /dev/urandom with a local buffer.
    unsafe {
        let fd = libc::open(c"/dev/urandom".as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
        if fd < 0 {
            return Err(errno());
        }
        let r = if libc::ioctl(fd, RNDADDENTROPY, info.as_ptr()) < 0
            || libc::ioctl(fd, RNDRESEEDCRNG) < 0
        {
            Err(errno())
        } else {
            Ok(())
        };
        libc::close(fd);
        r
    }
}

/// The agent's side: asks the keeper and waits (bounded) for its answer.
pub fn reseed(name: &str, hostname: &str, entropy: &[u8]) -> io::Result<()> {
    let sock = KEEPER.get().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::Unsupported,
            "reseed: only a microVM's init can set a fresh identity",
        )
    })?;
    if hostname.is_empty()
        || hostname.len() > 64
        || hostname.contains('\0')
        || entropy.len() > MAX_ENTROPY
    {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "reseed: hostname of 1..64 bytes without NUL, at most 512 bytes of entropy",
        ));
    }
    let mut msg = Vec::with_capacity(MAX_MSG);
    msg.extend_from_slice(hostname.as_bytes());
    msg.push(0);
    msg.extend_from_slice(entropy);
    // SAFETY: write from a local buffer; poll and read on our socket.
    unsafe {
        if libc::write(sock.as_raw_fd(), msg.as_ptr().cast(), msg.len()) < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut p = libc::pollfd {
            fd: sock.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        if libc::poll(&mut p, 1, ANSWER_MS) <= 0 {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "reseed: the identity keeper did not answer",
            ));
        }
        let mut code = [0u8; 4];
        if libc::read(sock.as_raw_fd(), code.as_mut_ptr().cast(), 4) != 4 {
            return Err(io::Error::other("reseed: the identity keeper is gone"));
        }
        match i32::from_ne_bytes(code) {
            0 => {}
            e => return Err(io::Error::from_raw_os_error(e)),
        }
    }
    if !name.is_empty() {
        if let Ok(mut n) = NAME.lock() {
            *n = Some(name.to_string());
        }
    }
    Ok(())
}
