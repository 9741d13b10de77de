//! A microVM's frame source: a Unix datagram socketpair between qemu
//! (`-netdev dgram,local.type=fd`, behind the guest's virtio-net device)
//! and the forwarder, in place of the tap a native sandbox has. One
//! datagram is one whole Ethernet frame each way, no header and no length
//! prefix (qemu 7.2's dgram backend `send`s a frame per datagram on a
//! connected socket and reads one per `recv`), so the forwarder reads and
//! writes it exactly as it does a tap (device.rs): the policy, DNS,
//! interception, events and limits behind it are the same code.
//!
//! Why a socketpair and not a host tap or bridge: the guest's frames
//! never meet a host network interface, routing table or firewall; the
//! only thing that parses them on the host is the forwarder. Why
//! datagrams and not qemu's stream backend: a stream needs framing the
//! forwarder would have to re-synchronise after a hostile length; a
//! datagram's boundary is the kernel's.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use super::device::MAX_FRAME;

/// Socket buffer asked for on each end: a few full frames in flight. The
/// kernel caps it at net.core.wmem_max without CAP_NET_ADMIN; a frame the
/// other side cannot take yet is dropped, as on a wire (TCP retransmits).
const BUFFER: libc::c_int = 4 << 20;

/// (the forwarder's end, qemu's end), both close-on-exec: each is handed
/// on deliberately.
pub fn pair() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: socketpair into a local array.
    let r = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fresh fds from socketpair, owned from here.
    let (a, b) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    for fd in [&a, &b] {
        for (force, plain) in [
            (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF),
            (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF),
        ] {
            // The forced size needs CAP_NET_ADMIN (a root helper); the
            // plain one is capped, which only costs throughput.
            if setsockopt_int(fd.as_raw_fd(), force, BUFFER).is_err() {
                let _ = setsockopt_int(fd.as_raw_fd(), plain, BUFFER);
            }
        }
    }
    Ok((a, b))
}

/// Whether `fd` is a Unix datagram socket (what the forwarder accepts as
/// a VM's frame fd besides a tap).
pub fn is_link(fd: RawFd) -> bool {
    let mut domain: libc::c_int = 0;
    let mut kind: libc::c_int = 0;
    getsockopt_int(fd, libc::SO_DOMAIN, &mut domain)
        && getsockopt_int(fd, libc::SO_TYPE, &mut kind)
        && domain == libc::AF_UNIX
        && kind == libc::SOCK_DGRAM
}

/// The largest frame either side may send: what a tap takes.
pub const MAX_LINK_FRAME: usize = MAX_FRAME;

fn setsockopt_int(fd: RawFd, opt: libc::c_int, v: libc::c_int) -> io::Result<()> {
    // SAFETY: setsockopt with an int of the given length.
    let r = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            opt,
            (&v as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn getsockopt_int(fd: RawFd, opt: libc::c_int, v: &mut libc::c_int) -> bool {
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt into an int of the given length.
    unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            opt,
            (v as *mut libc::c_int).cast(),
            &mut len,
        ) == 0
    }
}

#[cfg(test)]
mod tests {
    use super::super::device::{read_frame, set_nonblocking, write_frame};
    use super::*;

    #[test]
    fn frames_keep_their_boundaries_up_to_the_largest() {
        let (fwd, vm) = pair().unwrap();
        assert!(is_link(fwd.as_raw_fd()) && is_link(vm.as_raw_fd()));
        set_nonblocking(&fwd).unwrap();
        let big = vec![0xabu8; MAX_LINK_FRAME];
        // What qemu does on its end: one send per frame.
        for f in [&b"small"[..], &big[..], &b"x"[..]] {
            let n = unsafe { libc::send(vm.as_raw_fd(), f.as_ptr().cast(), f.len(), 0) };
            assert_eq!(n as usize, f.len());
        }
        let mut buf = vec![0u8; 65536];
        assert_eq!(read_frame(&fwd, &mut buf).unwrap(), Some(5));
        assert_eq!(read_frame(&fwd, &mut buf).unwrap(), Some(MAX_LINK_FRAME));
        assert!(buf[..MAX_LINK_FRAME].iter().all(|&b| b == 0xab));
        assert_eq!(read_frame(&fwd, &mut buf).unwrap(), Some(1));
        assert_eq!(read_frame(&fwd, &mut buf).unwrap(), None);
        write_frame(&fwd, b"reply");
        let mut r = [0u8; 16];
        let n = unsafe { libc::recv(vm.as_raw_fd(), r.as_mut_ptr().cast(), r.len(), 0) };
        assert_eq!(&r[..n as usize], b"reply");
    }

    #[test]
    fn a_tap_or_a_stream_is_not_a_link() {
        let (s, _t) = std::os::unix::net::UnixStream::pair().unwrap();
        assert!(!is_link(s.as_raw_fd()));
        let f = std::fs::File::open("/dev/null").unwrap();
        assert!(!is_link(f.as_raw_fd()));
    }
}
