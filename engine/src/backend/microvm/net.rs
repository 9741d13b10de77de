//! A VM sandbox's network (docs/microvm.md, "Network"): the same
//! forwarder and policy as a native sandbox's, fed by the guest's
//! virtio-net device instead of a tap. qemu gets one end of a Unix
//! datagram socketpair as `QEMU_FD` (`-netdev dgram,local.type=fd`);
//! `lockbox-helper vmm` holds the other and starts the forwarder on it
//! (agent/src/vmm/net.rs) with `net.sock` as its control socket, so the
//! engine's start line, SetNetworkPolicy, events and counters go through
//! network::control exactly as for a native sandbox.

use lockbox_protocol::NetworkMode;
use serde_json::{json, Value};

use super::unsupported;
use crate::error::Result;
use crate::plan::Plan;

/// The link's fd in qemu (3 is the agent port, 4 QMP, 40.. the volumes):
/// the helper places it there (agent/src/vmm/jail.rs, `NET_FD`).
pub const QEMU_FD: i32 = 5;
/// The guest's MAC (locally administered, beside the forwarder's
/// 02:4c:42:00:00:01); one VM per link, so it need not be unique.
const GUEST_MAC: &str = "02:4c:42:00:00:64";
/// The forwarder's MTU, told to the guest's driver (`host_mtu`): large
/// frames, as on a native sandbox's tap.
const MTU: usize = lockbox_net::forwarder::MTU;

/// What a VM's network cannot do yet, refused before anything is made.
pub fn check(plan: &Plan, restore: bool) -> Result<()> {
    if restore && plan.net.is_some() {
        return Err(unsupported(
            "a network (a policy or outbound) on a VM restored from a checkpoint (the guest's interface was not in the checkpointed VM)",
        ));
    }
    // network::plan gives a VM's plain outbound the public-internet
    // preset; without a plan there is nothing to serve the device.
    if plan.network.mode == NetworkMode::Outbound && plan.net.is_none() {
        return Err(unsupported("NetworkOutbound without the forwarder's plan"));
    }
    Ok(())
}

/// Whether the VM gets a network device: it has a policy.
pub fn wanted(plan: &Plan) -> bool {
    plan.net.is_some()
}

/// qemu's device and backend for the link.
pub fn qemu_args() -> Vec<String> {
    vec![
        "-netdev".into(),
        format!("dgram,id=net0,local.type=fd,local.str={QEMU_FD}"),
        "-device".into(),
        format!("virtio-net-device,netdev=net0,mac={GUEST_MAC},host_mtu={MTU}"),
    ]
}

/// vmm.json's `net`: where the helper binds the forwarder's control
/// socket (the engine's network::control connects there), and the
/// published ports it binds on the host's 127.0.0.1 for the forwarder to
/// relay into the guest, as for a native sandbox with a policy.
pub fn vmm(dir: &std::path::Path, plan: &Plan) -> Value {
    json!({
        "socket": dir.join(crate::network::control::SOCKET).to_string_lossy(),
        "ports": plan.network.ports,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_outbound_is_the_public_internet_preset_for_a_vm_only() {
        let cfg = |j: &str| -> crate::config::SandboxConfig { serde_json::from_str(j).unwrap() };
        let vm = crate::network::plan(&cfg(r#"{"network":"outbound","isolation":"microvm"}"#))
            .unwrap()
            .expect("a VM's outbound has a forwarder plan");
        let p = crate::network::parse_policy(&vm.policy).unwrap();
        let host = lockbox_net::policy::HostAddrs(vec!["192.0.2.2".parse().unwrap()]);
        let ok = |ip: &str| {
            let t = lockbox_net::policy::Target {
                ip: ip.parse().unwrap(),
                names: &[],
                port: 443,
                protocol: lockbox_net::policy::Protocol::Tcp,
            };
            p.decide(&t, &host).allowed
        };
        assert!(ok("198.51.100.7") && ok("1.1.1.1"));
        assert!(!ok("192.0.2.2") && !ok("10.0.0.1") && !ok("127.0.0.1"));
        assert!(vm.secrets.is_empty());
        // Native keeps pasta: no forwarder plan.
        let native = crate::network::plan(&cfg(r#"{"network":"outbound"}"#)).unwrap();
        assert!(native.is_none());
    }

    #[test]
    fn the_link_is_the_fd_the_helper_places() {
        let a = qemu_args().join(" ");
        assert!(a.contains("local.type=fd,local.str=5"), "{a}");
        assert!(a.contains("host_mtu=65520"), "{a}");
    }
}
