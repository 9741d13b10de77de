//! Attack review s6 (ATTACKER2): what a microVM's guest kernel can send
//! the forwarder, whole Ethernet frames of its choosing, here written
//! raw on the lab's tap (the forwarder reads a VM's link the same way,
//! vm_link.rs): spoofed sources, the host's loopback and addresses, the
//! gateway's other ports, IPv6, fragments, SYN with odd flags. None may
//! start an upstream connection; the control (a crafted SYN to the
//! allowed destination) does. Needs root.

mod lab;

use std::net::Ipv4Addr;
use std::thread;
use std::time::{Duration, Instant};

use lab::Lab;
use lockbox_net::policy::Policy;
use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    EthernetAddress, EthernetFrame, EthernetProtocol, EthernetRepr, IpAddress, IpProtocol,
    Ipv4Packet, Ipv4Repr, TcpControl, TcpPacket, TcpRepr, TcpSeqNumber,
};

const GATEWAY_MAC: EthernetAddress = EthernetAddress([0x02, 0x4c, 0x42, 0x00, 0x00, 0x01]);
const ALLOW: &str = r#"{"rules":[{"action":"allow","cidr":"198.51.100.10/32","ports":["80"]}]}"#;

fn syn(src: Ipv4Addr, dst: Ipv4Addr, dport: u16, sport: u16, frag: bool, ack: bool) -> Vec<u8> {
    let tcp = TcpRepr {
        src_port: sport,
        dst_port: dport,
        control: TcpControl::Syn,
        seq_number: TcpSeqNumber(1000),
        ack_number: ack.then_some(TcpSeqNumber(5)),
        window_len: 65535,
        window_scale: Some(14),
        max_seg_size: Some(65000),
        sack_permitted: false,
        sack_ranges: [None; 3],
        timestamp: None,
        payload: &[],
    };
    let ip = Ipv4Repr {
        src_addr: src,
        dst_addr: dst,
        next_header: IpProtocol::Tcp,
        payload_len: tcp.buffer_len(),
        hop_limit: 64,
    };
    let eth = EthernetRepr {
        src_addr: EthernetAddress([0x02, 0, 0, 0, 0, 0x66]),
        dst_addr: GATEWAY_MAC,
        ethertype: EthernetProtocol::Ipv4,
    };
    let caps = ChecksumCapabilities::default();
    let mut out = vec![0; eth.buffer_len() + ip.buffer_len() + tcp.buffer_len()];
    let mut f = EthernetFrame::new_unchecked(&mut out[..]);
    eth.emit(&mut f);
    let mut p = Ipv4Packet::new_unchecked(f.payload_mut());
    ip.emit(&mut p, &caps);
    if frag {
        p.set_more_frags(true);
        p.fill_checksum();
    }
    let (s, d) = (IpAddress::Ipv4(src), IpAddress::Ipv4(dst));
    tcp.emit(
        &mut TcpPacket::new_unchecked(p.payload_mut()),
        &s,
        &d,
        &caps,
    );
    out
}

/// The same SYN as an IPv6-typed frame (ethertype only): dropped.
fn as_ipv6(mut f: Vec<u8>) -> Vec<u8> {
    f[12] = 0x86;
    f[13] = 0xdd;
    f
}

fn send_raw(frames: Vec<Vec<u8>>) {
    // SAFETY: plain socket calls on a fresh fd, closed at the end.
    unsafe {
        let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0);
        assert!(fd >= 0, "AF_PACKET: {}", std::io::Error::last_os_error());
        let idx = libc::if_nametoindex(c"tap0".as_ptr());
        assert!(idx > 0);
        let mut sll: libc::sockaddr_ll = std::mem::zeroed();
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_ifindex = idx as i32;
        sll.sll_halen = 6;
        for f in frames {
            let n = libc::sendto(
                fd,
                f.as_ptr().cast(),
                f.len(),
                0,
                (&sll as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            );
            assert_eq!(n as usize, f.len(), "{}", std::io::Error::last_os_error());
            thread::sleep(Duration::from_millis(5));
        }
        libc::close(fd);
    }
}

fn allowed_after(lab: &Lab, frames: Vec<Vec<u8>>, want: u64) -> u64 {
    lab.inside(move || send_raw(frames));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let c = lab.handle.counters().connections_allowed;
        if c >= want || Instant::now() > deadline {
            // A little longer for anything late.
            thread::sleep(Duration::from_millis(500));
            return lab.handle.counters().connections_allowed;
        }
        thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn crafted_frames_start_no_upstream_connection_but_the_allowed_one() {
    let lab = Lab::tap_only(Policy::from_json(ALLOW).unwrap());
    let me = Ipv4Addr::new(10, 0, 2, 100);
    let allowed = Ipv4Addr::new(198, 51, 100, 10);
    let mut bad = Vec::new();
    for (src, dst, port) in [
        (me, Ipv4Addr::LOCALHOST, 80),
        (Ipv4Addr::LOCALHOST, Ipv4Addr::LOCALHOST, 80),
        (me, Ipv4Addr::new(127, 0, 0, 53), 53),
        (me, Ipv4Addr::UNSPECIFIED, 80),
        (me, Ipv4Addr::new(198, 51, 100, 1), 80),
        (me, Ipv4Addr::new(10, 77, 0, 1), 80),
        (me, Ipv4Addr::new(10, 0, 2, 2), 22),
        (me, Ipv4Addr::new(10, 0, 2, 2), 53),
        (me, Ipv4Addr::BROADCAST, 80),
        (me, Ipv4Addr::new(10, 0, 2, 255), 80),
        (me, Ipv4Addr::new(224, 0, 0, 1), 80),
        (me, allowed, 81),
        (allowed, allowed, 81),
    ] {
        bad.push(syn(src, dst, port, 40000, false, false));
    }
    // The allowed destination, but as a fragment, as IPv6, as SYN+ACK.
    bad.push(syn(me, allowed, 80, 40001, true, false));
    bad.push(as_ipv6(syn(me, allowed, 80, 40002, false, false)));
    bad.push(syn(me, allowed, 80, 40003, false, true));
    // The control last: frames are decided in order, so once it has
    // started its connection every frame before it was decided.
    bad.push(syn(me, allowed, 80, 40010, false, false));
    let n = allowed_after(&lab, bad, 1);
    assert_eq!(
        n, 1,
        "only the control connects; a crafted frame started an upstream connection"
    );

    // A spoofed source changes nothing: the decision is the destination's.
    let n = allowed_after(
        &lab,
        vec![syn(
            Ipv4Addr::new(192, 0, 2, 7),
            allowed,
            80,
            40011,
            false,
            false,
        )],
        2,
    );
    assert_eq!(
        n, 2,
        "control: a crafted SYN from a spoofed source connects"
    );
}
