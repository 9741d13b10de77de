//! The forwarder's filter in a forked child: what the forwarder does still
//! works, each forbidden call kills the child with SIGSYS, and the same
//! calls without the filter do not (the control: the test can tell).

use super::*;

/// One forked child: no_new_privs, the filter if `filtered`, then `call`;
/// its wait status. The programs are compiled before the fork, so the
/// child only makes system calls.
fn in_child(filtered: bool, call: Call) -> libc::c_int {
    let progs = programs().unwrap();
    // SAFETY: the child makes system calls only and leaves with _exit.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        // SAFETY: prctl with integer arguments; _exit ends the child.
        unsafe {
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                libc::_exit(90);
            }
            if filtered && install(&progs).is_err() {
                libc::_exit(91);
            }
            libc::_exit(call())
        }
    }
    let mut status = 0;
    // SAFETY: our own child.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    status
}

fn killed_by_sigsys(status: libc::c_int) -> bool {
    libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGSYS
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// What the forwarder does: a UDP and a TCP socket (non-blocking by
/// ioctl), epoll, eventfd, randomness, memory; an open is EACCES, clone3
/// ENOSYS. 0 when all went as expected, else the step that did not.
fn forwarder_work() -> i32 {
    // SAFETY: plain system calls on fds this function owns.
    unsafe {
        let u = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        let t = libc::socket(libc::AF_INET6, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if u < 0 || t < 0 {
            return 1;
        }
        let mut on: libc::c_int = 1;
        if libc::ioctl(u, libc::FIONBIO, &mut on) != 0 {
            return 2;
        }
        let ep = libc::epoll_create1(libc::EPOLL_CLOEXEC);
        let ev = libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK);
        if ep < 0 || ev < 0 {
            return 3;
        }
        let mut b = [0u8; 32];
        if libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) != 32 {
            return 4;
        }
        let m = libc::mmap(
            std::ptr::null_mut(),
            1 << 20,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        if m == libc::MAP_FAILED || libc::munmap(m, 1 << 20) != 0 {
            return 5;
        }
        if libc::open(c"/etc/hostname".as_ptr(), libc::O_RDONLY) != -1 || errno() != libc::EACCES {
            return 6;
        }
        if libc::syscall(libc::SYS_clone3, std::ptr::null::<u8>(), 0usize) != -1
            || errno() != libc::ENOSYS
        {
            return 7;
        }
        for fd in [u, t, ep, ev] {
            libc::close(fd);
        }
    }
    0
}

#[test]
fn the_forwarder_s_own_calls_pass_the_filter() {
    let s = in_child(true, forwarder_work);
    assert!(
        libc::WIFEXITED(s) && libc::WEXITSTATUS(s) == 0,
        "status {s:#x}"
    );
}

/// A call a child makes; its return is the child's exit code.
type Call = fn() -> i32;

/// Each forbidden call, as the forwarder would make it if compromised.
const FORBIDDEN: &[(&str, Call)] = &[
    ("execve", || {
        let argv = [c"/bin/true".as_ptr(), std::ptr::null()];
        // SAFETY: valid NUL-terminated argv and envp.
        unsafe { libc::execve(argv[0], argv.as_ptr(), [std::ptr::null()].as_ptr()) };
        0
    }),
    ("ptrace", || {
        // SAFETY: integer arguments.
        unsafe { libc::ptrace(libc::PTRACE_TRACEME, 0, 0, 0) };
        0
    }),
    ("mount", || {
        // SAFETY: valid strings; refused or failing either way.
        unsafe {
            libc::mount(
                c"none".as_ptr(),
                c"/mnt".as_ptr(),
                c"tmpfs".as_ptr(),
                0,
                std::ptr::null(),
            )
        };
        0
    }),
    ("socket(AF_PACKET)", || {
        // SAFETY: integer arguments.
        unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
        0
    }),
    ("socket(AF_UNIX)", || {
        // SAFETY: integer arguments.
        unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0) };
        0
    }),
    ("socket(AF_NETLINK)", || {
        // SAFETY: integer arguments.
        unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_RAW, 0) };
        0
    }),
    ("kill", || {
        // SAFETY: signal 0 only asks; refused before it is asked.
        unsafe { libc::kill(1, 0) };
        0
    }),
    ("fork", || {
        // SAFETY: a raw fork; a child that got through exits at once.
        if unsafe { libc::syscall(libc::SYS_fork) } == 0 {
            unsafe { libc::_exit(0) };
        }
        0
    }),
    ("mmap(PROT_EXEC)", || {
        // SAFETY: an anonymous mapping, never used.
        unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                4096,
                libc::PROT_READ | libc::PROT_EXEC,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        0
    }),
];

#[test]
fn every_forbidden_call_kills_the_forwarder() {
    for (name, call) in FORBIDDEN {
        let s = in_child(true, *call);
        assert!(
            killed_by_sigsys(s),
            "{name} under the filter: status {s:#x}"
        );
        // Control: the same call without the filter is not what kills it.
        let s = in_child(false, *call);
        assert!(!killed_by_sigsys(s), "{name} without it: status {s:#x}");
    }
}
