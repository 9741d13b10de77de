//! The guest's network, when the engine gave the VM one (config
//! `network`): the virtio-net interface gets the numbers a native
//! sandbox's tap gets (netd.rs: 10.0.2.100/24, MTU 65520, default route
//! via the forwarder at 10.0.2.2, IPv6 off) before any workload runs. The
//! engine then writes resolv.conf (the forwarder's DNS) and, with
//! secrets, the per-sandbox CA through the agent, as for a native sandbox
//! (engine/src/network/mod.rs `install`).
//!
//! The workload runs without CAP_NET_ADMIN (the agent drops it), so it
//! cannot change any of this; if it could, it would still reach only the
//! forwarder: the interface is the guest's only way out, and the
//! forwarder answers every frame itself.

use std::io;
use std::path::Path;
use std::time::{Duration, Instant};

/// virtio_net registers the interface while its module loads; this only
/// covers a slow probe.
const WAIT: Duration = Duration::from_secs(10);

pub fn configure() -> io::Result<()> {
    let name = std::str::from_utf8(crate::netd::IFNAME).unwrap_or("eth0");
    let sys = Path::new("/sys/class/net").join(name);
    let deadline = Instant::now() + WAIT;
    while !sys.exists() {
        if Instant::now() >= deadline {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("no network interface {name} after {WAIT:?} (virtio_net)"),
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    // The forwarder drops every non-IPv4 frame: with IPv6 off the guest
    // does not try it.
    for f in ["all", "default", name] {
        let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{f}/disable_ipv6"), "1");
    }
    let _ = crate::setup::net::loopback_up();
    crate::netd::configure()
        .map_err(|(step, e)| io::Error::new(e.kind(), format!("{name}: {step}: {e}")))
}
