//! Attack review s6 (ATTACKER2): the forwarder's relayed UDP flows take
//! host ephemeral ports outside the forwarders' slice (S5-NET-4's bound
//! covers TCP only). Each UDP flow is a host socket bound to port 0 in the
//! host's whole range, up to `max_udp` (256) per sandbox, held as long as
//! the sandbox keeps it busy (idle close after 60 s). Sandboxes together
//! therefore take the host's whole UDP range (28232 ports by default: 111
//! sandboxes with a UDP-allowing policy), after which a host process's
//! `bind(0)` / unconnected sendto for UDP (its resolver) fails.
//!
//! The "host" is the lab's outside namespace with a 400-port range, as in
//! host_ports.rs. Needs root. Fixed: udp.rs takes the flow's port from
//! the slice (`Limits::upstream.ports`).

mod lab;

use std::net::{Ipv4Addr, UdpSocket};
use std::thread;
use std::time::{Duration, Instant};

use lab::{config, in_ns, Topology};
use lockbox_net::events::DenialKind;
use lockbox_net::forwarder::{Forwarder, Handle, Limits, PortSlice};
use lockbox_net::policy::Policy;

const RANGE: (u16, u16) = (40000, 40399);
const ALLOW: &str = r#"{"rules":[{"action":"allow","cidr":"198.51.100.10/32","protocol":"udp"}]}"#;

struct Rig {
    net: Topology,
    handle: Handle,
    forwarder: Option<thread::JoinHandle<()>>,
}

impl Rig {
    fn new(tune: impl FnOnce(&mut Limits)) -> Rig {
        let (net, tap) = Topology::new();
        let out = net.outside.clone();
        let mut limits = in_ns(&out, move || {
            std::fs::write(
                "/proc/sys/net/ipv4/ip_local_port_range",
                format!("{} {}", RANGE.0, RANGE.1),
            )
            .unwrap();
            Limits::default()
        });
        tune(&mut limits);
        let (fwd, handle) = Forwarder::new(tap, config(limits), Policy::from_json(ALLOW).unwrap());
        let forwarder = Some(thread::spawn(move || {
            in_ns(&out, move || fwd.run().expect("forwarder"))
        }));
        Rig {
            net,
            handle,
            forwarder,
        }
    }

    /// The sandbox sends one datagram to each of `n` ports of the test
    /// host: one flow each on the forwarder.
    fn open_flows(&self, n: u16) -> Vec<u16> {
        self.net.inside(move || {
            let s = UdpSocket::bind("0.0.0.0:0").unwrap();
            for i in 0..n {
                let _ = s.send_to(b"x", (Ipv4Addr::new(198, 51, 100, 10), 2000 + i));
                // The forwarder reads 256 frames a round; no need to race it.
                if i % 32 == 31 {
                    thread::sleep(Duration::from_millis(20));
                }
            }
        });
        // Wait until the forwarder has decided every datagram (a refusal
        // over the slice counts as denied), or nothing has moved for 3 s
        // (a datagram the sandbox's kernel dropped before ARP resolved).
        let deadline = Instant::now() + Duration::from_secs(120);
        let (mut last, mut still) = (0, 0);
        loop {
            thread::sleep(Duration::from_millis(300));
            let c = self.handle.counters();
            let decided = c.connections_allowed + c.connections_denied;
            if decided >= u64::from(n) || Instant::now() > deadline {
                break;
            }
            still = if decided == last { still + 1 } else { 0 };
            if still >= 10 {
                break;
            }
            last = decided;
        }
        in_ns(&self.net.outside, udp_ports_to_host)
    }

    fn host_udp_bind(&self) -> std::io::Result<u16> {
        in_ns(&self.net.outside, || {
            UdpSocket::bind("0.0.0.0:0").map(|s| s.local_addr().unwrap().port())
        })
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        self.handle.stop();
        if let Some(t) = self.forwarder.take() {
            let _ = t.join();
        }
    }
}

/// Local ports of the outside namespace's UDP sockets connected to the
/// test host (the forwarder's flows).
fn udp_ports_to_host() -> Vec<u16> {
    let host = u32::from_ne_bytes(Ipv4Addr::new(198, 51, 100, 10).octets());
    let t = std::fs::read_to_string("/proc/thread-self/net/udp").unwrap();
    t.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let (local, remote) = (f.get(1)?, f.get(2)?);
            let rip = u32::from_str_radix(remote.split_once(':')?.0, 16).ok()?;
            (rip == host).then(|| u16::from_str_radix(local.split_once(':')?.1, 16).ok())?
        })
        .collect()
}

#[test]
fn udp_flows_take_host_ports_only_from_the_forwarders_slice() {
    let slice = PortSlice::top_of(RANGE.0, RANGE.1, 4);
    // Room for as many flows as the host has ports: what two sandboxes
    // hold together under the default 256 each.
    let rig = Rig::new(|l| l.max_udp = 400);
    let ports = rig.open_flows(400);
    assert!(ports.len() >= 90, "flows seen: {}", ports.len());
    let outside: Vec<_> = ports
        .iter()
        .filter(|p| !(slice.first..=slice.last).contains(p))
        .collect();
    assert!(
        outside.is_empty(),
        "{} of {} UDP flow ports outside the slice {slice:?}",
        outside.len(),
        ports.len()
    );
    let events = rig.handle.take_events();
    let refused = events
        .iter()
        .filter(|d| d.kind == DenialKind::Limit && d.rule.starts_with("host ports"))
        .count();
    assert!(
        refused > 0,
        "a flow over the slice is refused and reported: {} flows, {:?}, {:?}",
        ports.len(),
        rig.handle.counters(),
        events.iter().map(|d| &d.rule).collect::<Vec<_>>()
    );
    rig.host_udp_bind()
        .expect("a host process still binds a UDP port");
    drop(rig);

    // The control: without the slice the same flows take the host's
    // whole range and its own UDP bind fails (as every flow did before
    // the fix, slice or not).
    let rig = Rig::new(|l| {
        l.max_udp = 400;
        l.upstream.ports = None;
    });
    let ports = rig.open_flows(400);
    let r = rig.host_udp_bind();
    assert!(
        matches!(&r, Err(e) if e.kind() == std::io::ErrorKind::AddrInUse),
        "control: {} flows, host bind {r:?}",
        ports.len()
    );
}
