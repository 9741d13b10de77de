//! Address ranges no sandbox reaches unless a rule names them: they lead
//! to the host, its network, or the cloud's metadata service, never to the
//! public internet. The same list `NetworkOutbound` closes with pasta.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

/// This network, private (RFC 1918), shared address space (CGNAT),
/// loopback, link-local (and the metadata service at 169.254.169.254),
/// IETF protocol assignments, benchmarking, multicast, reserved and
/// broadcast.
const NON_PUBLIC_V4: &[(Ipv4Addr, u8)] = &[
    (Ipv4Addr::new(0, 0, 0, 0), 8),
    (Ipv4Addr::new(10, 0, 0, 0), 8),
    (Ipv4Addr::new(100, 64, 0, 0), 10),
    (Ipv4Addr::new(127, 0, 0, 0), 8),
    (Ipv4Addr::new(169, 254, 0, 0), 16),
    (Ipv4Addr::new(172, 16, 0, 0), 12),
    (Ipv4Addr::new(192, 0, 0, 0), 24),
    (Ipv4Addr::new(192, 168, 0, 0), 16),
    (Ipv4Addr::new(198, 18, 0, 0), 15),
    (Ipv4Addr::new(224, 0, 0, 0), 4),
    (Ipv4Addr::new(240, 0, 0, 0), 4),
];

/// Unspecified and loopback, NAT64 (embeds any IPv4 address), Teredo and
/// 6to4 (likewise), unique-local (fd00:ec2::254 is a metadata service),
/// link-local, site-local, multicast. IPv4-mapped addresses are compared
/// as IPv4 (`canonical`).
const NON_PUBLIC_V6: &[(Ipv6Addr, u8)] = &[
    (Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, 0), 127),
    (Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, 0, 0), 96),
    (Ipv6Addr::new(0x64, 0xff9b, 1, 0, 0, 0, 0, 0), 48),
    (Ipv6Addr::new(0x2001, 0, 0, 0, 0, 0, 0, 0), 32),
    (Ipv6Addr::new(0x2002, 0, 0, 0, 0, 0, 0, 0), 16),
    (Ipv6Addr::new(0xfc00, 0, 0, 0, 0, 0, 0, 0), 7),
    (Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0), 10),
    (Ipv6Addr::new(0xfec0, 0, 0, 0, 0, 0, 0, 0), 10),
    (Ipv6Addr::new(0xff00, 0, 0, 0, 0, 0, 0, 0), 8),
];

/// Every non-public range as CIDRs (for documentation and deny rules).
pub fn non_public() -> Vec<IpNet> {
    let v4 = NON_PUBLIC_V4
        .iter()
        .map(|&(a, p)| IpNet::V4(Ipv4Net::new(a, p).expect("valid prefix")));
    let v6 = NON_PUBLIC_V6
        .iter()
        .map(|&(a, p)| IpNet::V6(Ipv6Net::new(a, p).expect("valid prefix")));
    v4.chain(v6).collect()
}

/// An IPv4-mapped IPv6 address is the IPv4 address it maps: rules and
/// ranges must see one address, whichever way the sandbox spells it.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => ip,
        },
        v4 => v4,
    }
}

pub fn is_non_public(ip: IpAddr) -> bool {
    match canonical(ip) {
        IpAddr::V4(a) => NON_PUBLIC_V4.iter().any(|&(n, p)| in_v4(a, n, p)),
        IpAddr::V6(a) => NON_PUBLIC_V6.iter().any(|&(n, p)| in_v6(a, n, p)),
    }
}

fn in_v4(a: Ipv4Addr, net: Ipv4Addr, prefix: u8) -> bool {
    let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
    u32::from(a) & mask == u32::from(net) & mask
}

fn in_v6(a: Ipv6Addr, net: Ipv6Addr, prefix: u8) -> bool {
    let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
    u128::from(a) & mask == u128::from(net) & mask
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_and_predicate_agree() {
        for net in non_public() {
            assert!(is_non_public(net.network()), "{net}");
            assert!(is_non_public(net.broadcast()), "{net}");
        }
        assert!(!is_non_public("11.0.0.0".parse().unwrap()));
        assert!(!is_non_public("9.255.255.255".parse().unwrap()));
        assert!(!is_non_public("2600::1".parse().unwrap()));
        assert!(is_non_public("::ffff:169.254.169.254".parse().unwrap()));
    }
}
