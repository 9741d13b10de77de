//! What a frame from the sandbox is, read before smoltcp sees it, and the
//! ICMP error that refuses a datagram.

use std::net::{IpAddr, SocketAddr};

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    EthernetAddress, EthernetFrame, EthernetProtocol, EthernetRepr, Icmpv4DstUnreachable,
    Icmpv4Packet, Icmpv4Repr, IpProtocol, Ipv4Packet, Ipv4Repr, TcpPacket, UdpPacket,
};

pub enum Kind {
    /// ARP and ICMP: smoltcp answers what is for the gateway, drops the rest.
    Stack,
    /// A TCP segment opening a connection (SYN without ACK).
    TcpSyn {
        src: SocketAddr,
        dst: SocketAddr,
    },
    /// Any other TCP segment: smoltcp matches it to a socket or resets it.
    Tcp,
    Udp {
        src: SocketAddr,
        dst: SocketAddr,
    },
    /// IPv6, fragments, other protocols, garbage: dropped.
    Drop,
}

pub fn classify(frame: &[u8]) -> Kind {
    let Ok(eth) = EthernetFrame::new_checked(frame) else {
        return Kind::Drop;
    };
    match eth.ethertype() {
        EthernetProtocol::Arp => return Kind::Stack,
        EthernetProtocol::Ipv4 => {}
        _ => return Kind::Drop,
    }
    let Ok(ip) = Ipv4Packet::new_checked(eth.payload()) else {
        return Kind::Drop;
    };
    if ip.more_frags() || ip.frag_offset() != 0 {
        return Kind::Drop;
    }
    let (s, d) = (IpAddr::V4(ip.src_addr()), IpAddr::V4(ip.dst_addr()));
    match ip.next_header() {
        IpProtocol::Icmp => Kind::Stack,
        IpProtocol::Tcp => match TcpPacket::new_checked(ip.payload()) {
            Ok(t) if t.syn() && !t.ack() => Kind::TcpSyn {
                src: SocketAddr::new(s, t.src_port()),
                dst: SocketAddr::new(d, t.dst_port()),
            },
            Ok(_) => Kind::Tcp,
            Err(_) => Kind::Drop,
        },
        IpProtocol::Udp => match UdpPacket::new_checked(ip.payload()) {
            Ok(u) => Kind::Udp {
                src: SocketAddr::new(s, u.src_port()),
                dst: SocketAddr::new(d, u.dst_port()),
            },
            Err(_) => Kind::Drop,
        },
        _ => Kind::Drop,
    }
}

/// "Port unreachable" for an IPv4 datagram, as if from its
/// destination: the sandbox's socket gets an error at once instead of
/// waiting for an answer that never comes.
pub fn icmp_unreachable(frame: &[u8], our_mac: EthernetAddress) -> Option<Vec<u8>> {
    let caps = ChecksumCapabilities::default();
    let eth = EthernetFrame::new_checked(frame).ok()?;
    let ip = Ipv4Packet::new_checked(eth.payload()).ok()?;
    let header = Ipv4Repr::parse(&ip, &caps).ok()?;
    let data = &ip.payload()[..ip.payload().len().min(8)];
    let icmp = Icmpv4Repr::DstUnreachable {
        reason: Icmpv4DstUnreachable::PortUnreachable,
        header,
        data,
    };
    let reply = Ipv4Repr {
        src_addr: header.dst_addr,
        dst_addr: header.src_addr,
        next_header: IpProtocol::Icmp,
        payload_len: icmp.buffer_len(),
        hop_limit: 64,
    };
    let eth_repr = EthernetRepr {
        src_addr: our_mac,
        dst_addr: eth.src_addr(),
        ethertype: EthernetProtocol::Ipv4,
    };
    let mut out = vec![0; eth_repr.buffer_len() + reply.buffer_len() + icmp.buffer_len()];
    let mut f = EthernetFrame::new_unchecked(&mut out[..]);
    eth_repr.emit(&mut f);
    let mut p = Ipv4Packet::new_unchecked(f.payload_mut());
    reply.emit(&mut p, &caps);
    icmp.emit(&mut Icmpv4Packet::new_unchecked(p.payload_mut()), &caps);
    Some(out)
}
