//! The sandbox's loopback carries every byte of the fast TCP path a
//! second time (the sandbox's connection to the redirect listener), and
//! on loopback the cost is per packet, not per byte: TCP, netfilter's
//! NAT and conntrack, the wake-up of the reader, each once per segment.
//! A segment is at most 64 KiB (the IPv4 length field) unless the device
//! allows larger ones (IPv4 BIG TCP, Linux 6.3+), which the kernel then
//! hands to the receiver whole. Raising loopback's limit in the sandbox's
//! namespace cuts the packets of a download by about 40 % and the CPU per
//! GiB of the path by 6-22 % in the runs measured (docs/network.md "The
//! fast TCP path"). It is set once, by whoever makes the listener (privileged in
//! that namespace, before the sandbox runs); the sandbox cannot change it
//! (no CAP_NET_ADMIN) and gains nothing from it but fewer packets of its
//! own loopback traffic. A kernel without the attribute keeps 64 KiB
//! segments: the path works as before.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// The segment size asked for: 256 KiB measured best here (128 KiB
/// gained nothing, 512 KiB no more than this).
pub const SEGMENT: u32 = 256 * 1024;

/// linux/if_link.h (not in the libc crate).
const IFLA_GSO_IPV4_MAX_SIZE: u16 = 63;
const IFLA_GRO_IPV4_MAX_SIZE: u16 = 64;

/// Sets loopback's IPv4 segment limit (sending and aggregated receiving)
/// in the calling thread's network namespace to `size`.
pub fn set_segment(size: u32) -> io::Result<()> {
    let index = loopback_index()?;
    let mut msg = Vec::with_capacity(64);
    header(&mut msg, libc::RTM_NEWLINK, libc::NLM_F_ACK as u16);
    ifinfo(&mut msg, index);
    attr_u32(&mut msg, IFLA_GSO_IPV4_MAX_SIZE, size);
    attr_u32(&mut msg, IFLA_GRO_IPV4_MAX_SIZE, size);
    let answer = exchange(&mut msg)?;
    match error_of(&answer) {
        Some(0) => Ok(()),
        Some(e) => Err(io::Error::from_raw_os_error(-e)),
        None => Err(io::Error::other("no netlink acknowledgement")),
    }
}

/// Loopback's IPv4 segment limit in the calling thread's namespace, as
/// the kernel reports it (None on a kernel without the attribute).
pub fn segment() -> io::Result<Option<u32>> {
    let index = loopback_index()?;
    let mut msg = Vec::with_capacity(32);
    header(&mut msg, libc::RTM_GETLINK, 0);
    ifinfo(&mut msg, index);
    let answer = exchange(&mut msg)?;
    if let Some(e) = error_of(&answer) {
        return Err(io::Error::from_raw_os_error(-e));
    }
    // nlmsghdr (16) + ifinfomsg (16), then the attributes.
    let mut at = 32;
    while at + 4 <= answer.len() {
        let len = u16::from_ne_bytes([answer[at], answer[at + 1]]) as usize;
        let kind = u16::from_ne_bytes([answer[at + 2], answer[at + 3]]);
        if len < 4 || at + len > answer.len() {
            break;
        }
        if kind == IFLA_GSO_IPV4_MAX_SIZE && len >= 8 {
            let v = &answer[at + 4..at + 8];
            return Ok(Some(u32::from_ne_bytes([v[0], v[1], v[2], v[3]])));
        }
        at += (len + 3) & !3;
    }
    Ok(None)
}

fn loopback_index() -> io::Result<i32> {
    // SAFETY: a NUL-terminated name.
    match unsafe { libc::if_nametoindex(c"lo".as_ptr()) } {
        0 => Err(io::Error::last_os_error()),
        i => Ok(i as i32),
    }
}

fn header(msg: &mut Vec<u8>, kind: u16, flags: u16) {
    msg.extend_from_slice(&0u32.to_ne_bytes()); // length, set by `exchange`
    msg.extend_from_slice(&kind.to_ne_bytes());
    msg.extend_from_slice(&(libc::NLM_F_REQUEST as u16 | flags).to_ne_bytes());
    msg.extend_from_slice(&1u32.to_ne_bytes()); // sequence
    msg.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel's
}

fn ifinfo(msg: &mut Vec<u8>, index: i32) {
    msg.extend_from_slice(&[libc::AF_UNSPEC as u8, 0]);
    msg.extend_from_slice(&0u16.to_ne_bytes()); // type
    msg.extend_from_slice(&index.to_ne_bytes());
    msg.extend_from_slice(&0u32.to_ne_bytes()); // flags
    msg.extend_from_slice(&0u32.to_ne_bytes()); // change mask
}

fn attr_u32(msg: &mut Vec<u8>, kind: u16, v: u32) {
    msg.extend_from_slice(&8u16.to_ne_bytes());
    msg.extend_from_slice(&kind.to_ne_bytes());
    msg.extend_from_slice(&v.to_ne_bytes());
}

/// The errno of an NLMSG_ERROR answer (0 for an acknowledgement).
fn error_of(answer: &[u8]) -> Option<i32> {
    let kind = u16::from_ne_bytes([*answer.get(4)?, *answer.get(5)?]);
    if kind != libc::NLMSG_ERROR as u16 {
        return None;
    }
    let e = answer.get(16..20)?;
    Some(i32::from_ne_bytes([e[0], e[1], e[2], e[3]]))
}

/// Sends one request on a fresh route socket and returns the first
/// answer.
fn exchange(msg: &mut [u8]) -> io::Result<Vec<u8>> {
    let len = msg.len() as u32;
    msg[..4].copy_from_slice(&len.to_ne_bytes());
    // SAFETY: plain socket call; the fd is owned right away.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fresh fd.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sending from a buffer valid for its length (to the kernel:
    // an unconnected netlink socket's default destination).
    if unsafe { libc::send(fd.as_raw_fd(), msg.as_ptr().cast(), msg.len(), 0) } < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut answer = vec![0u8; 8192];
    // SAFETY: receiving into a buffer valid for its length.
    let n = unsafe { libc::recv(fd.as_raw_fd(), answer.as_mut_ptr().cast(), answer.len(), 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    answer.truncate(n as usize);
    Ok(answer)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// In a namespace of its own (needs root, as the net tests do).
    fn in_new_netns<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        std::thread::spawn(move || {
            // SAFETY: this thread alone moves to a new network namespace.
            assert_eq!(unsafe { libc::unshare(libc::CLONE_NEWNET) }, 0, "unshare");
            f()
        })
        .join()
        .unwrap()
    }

    #[test]
    fn the_listener_raises_loopbacks_segment_limit_in_its_namespace() {
        let (before, after) = in_new_netns(|| {
            let before = segment().expect("read");
            let _l = crate::forwarder::redirect_listener().expect("listener");
            (before, segment().expect("read"))
        });
        // A kernel without the attribute (before 6.3) keeps 64 KiB
        // segments and still gets its listener.
        if before.is_none() {
            assert_eq!(after, None);
            return;
        }
        // Control: a namespace nobody changed has the 64 KiB default, so
        // the reading can tell the two apart.
        assert_eq!(before, Some(65536));
        assert_eq!(after, Some(SEGMENT));
    }
}
