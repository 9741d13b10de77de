//! A microVM's network: the forwarder of a native sandbox, started by
//! this helper on one end of a Unix datagram socketpair whose other end
//! qemu gets as fd `NET_FD` (its `-netdev dgram`, behind the guest's
//! virtio-net device). No tap, bridge or host interface: the guest's
//! frames reach nothing on the host but the forwarder, which decides them
//! as it does a native sandbox's (lockbox_net::forwarder::vm_link).
//!
//! What qemu gains is that one fd, connected to the forwarder and to
//! nothing else: its jail (namespaces, seccomp, Landlock without TCP
//! bind/connect) is unchanged, and its network namespace stays empty.
//! The forwarder runs as for a native sandbox: its own uid, seccomp
//! filter and cgroup (netd.rs), in the host's network namespace.

use std::fs::File;
use std::os::fd::OwnedFd;
use std::path::Path;

use serde::Deserialize;

use crate::cgroup::Cgroup;
use crate::netd::Netd;
use crate::report::Report;

/// The link's fd number in qemu (the engine's `-netdev ...,local.str=5`,
/// engine/src/backend/microvm/net.rs).
pub const NET_FD: i32 = 5;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetSpec {
    /// Host path of the forwarder's control socket this process binds
    /// (`net.sock` in the sandbox's directory, 0600).
    pub socket: String,
    /// Published ports: bound on the host's 127.0.0.1 by this process
    /// (`run`, before anything else can take them) and relayed into the
    /// guest by the forwarder (netd/ingress.rs).
    #[serde(default)]
    pub ports: Vec<lockbox_protocol::PortSpec>,
}

/// The running forwarder and qemu's end of the link (placed at `NET_FD`
/// in the jail, closed here once qemu has it).
pub struct VmNet {
    pub netd: Netd,
    pub qemu_end: Option<OwnedFd>,
}

pub fn start(
    spec: &NetSpec,
    published: Vec<crate::netd::ingress::Bound>,
    exe: &File,
    cgroup: &Cgroup,
    report: &mut Report,
) -> Result<VmNet, String> {
    let listener = super::bind_private(&spec.socket)?;
    let (ours, qemu_end) =
        lockbox_net::forwarder::vm_link::pair().map_err(|e| format!("the VM's link: {e}"))?;
    let netd = crate::netd::spawn(
        ours,
        None,
        exe,
        listener,
        Path::new(&spec.socket),
        published,
        &cgroup.paths,
        report,
    )
    .map_err(|e| format!("{e:#}"))?;
    if !spec.ports.is_empty() {
        report.ok("ports");
    }
    report.not(
        "network_fast_tcp",
        "microvm: every connection goes through the forwarder's user-mode stack (the kernel redirect is native-only)",
    );
    Ok(VmNet {
        netd,
        qemu_end: Some(qemu_end),
    })
}
