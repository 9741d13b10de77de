//! Guest mode: lockbox-helper as PID 1 of a microVM (the initramfs's
//! `/init`). It makes the few mounts a kernel leaves to init, loads the
//! kernel modules the guest's devices need, finds the virtio-serial port
//! named `lockbox.agent` and serves the ordinary agent protocol on it: the
//! host end of that port is a Unix socket owned by the VMM, so the engine
//! talks to a VM exactly as to a native sandbox.
//!
//! The guest kernel is the isolation boundary here; the agent still
//! confines itself (`Confine::lock_agent`) so a workload that breaks the
//! agent meets the same walls as in a native sandbox.

mod bridge;
mod clock;
mod config;
mod devices;
mod identity;
mod limits;
mod modules;
mod mounts;
mod net;
mod port;
mod rootfs;
mod volumes;

use std::time::Duration;

use lockbox_protocol::LaunchSpec;

pub use identity::{renamed, reseed};

/// The virtio-serial port's name, set by the VMM (`virtserialport,name=`).
pub const PORT_NAME: &str = "lockbox.agent";
const MODULES_DIR: &str = "/lib/lockbox/modules";
/// How long the port may take to appear after virtio_console loads.
const PORT_WAIT: Duration = Duration::from_secs(20);

/// Whether this process is a microVM's init: PID 1 started as `/init`. A
/// native sandbox's agent is PID 1 of a pid namespace too, but is always
/// started as `lockbox-helper run`.
pub fn is_init(argv0: Option<&str>) -> bool {
    std::process::id() == 1 && argv0 == Some("/init")
}

/// Runs the guest; returning from PID 1 panics the kernel, which with
/// `panic=-1` and the VMM's `-no-reboot` ends the VM.
pub fn main() -> i32 {
    match start() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("lockbox guest: {e:#}");
            1
        }
    }
}

fn start() -> anyhow::Result<i32> {
    use anyhow::Context;
    mounts::early().context("mounts")?;
    std_fds();
    modules::load_all(std::path::Path::new(MODULES_DIR)).context("modules")?;
    eprintln!("lockbox guest: modules loaded");
    let cfg = config::read().context("config disk")?;
    let mut report = crate::report::Report::default();
    let (spec, user) = match &cfg {
        // The engine's sandbox: its image as the root, its limits.
        Some(cfg) => {
            if let Some(ms) = cfg.clock_unix_ms {
                clock::set(ms).context("set the clock")?;
            }
            rootfs::enter(cfg).context("root filesystem")?;
            volumes::mount_all(&cfg.mounts, &mut report).context("volumes")?;
            if cfg.network {
                net::configure().context("network interface")?;
            }
            rootfs::set_hostname(&cfg.spec.hostname);
            limits::apply(&cfg.spec.limits, &mut report);
            let user = crate::users::resolve(&cfg.spec.user)
                .map_err(|e| anyhow::anyhow!("user {:?}: {}", cfg.spec.user, e.message))?;
            (cfg.spec.clone(), user)
        }
        // A bare boot (no config disk): the initramfs is the root.
        None => (
            LaunchSpec {
                name: hostname(),
                workdir: "/".into(),
                user: "0".into(),
                ..Default::default()
            },
            crate::users::User {
                uid: 0,
                gid: 0,
                home: Some("/root".into()),
            },
        ),
    };
    let port = port::open(PORT_NAME, PORT_WAIT).context("agent port")?;
    eprintln!("lockbox guest: serving on port {PORT_NAME}");
    let (listener, addr) = bridge::listener().context("agent listener")?;
    devices::replace(spec.limits.memory_mib).context("/dev")?;
    // Last of init's writes to /proc/sys and /sys (limits, network).
    mounts::lock_kernel().context("lock the kernel's knobs")?;
    // Before the lock: the keeper keeps the capabilities the agent drops.
    if cfg.is_some() {
        identity::spawn_keeper().context("identity keeper")?;
    }
    let confine = crate::confine::Confine::lock_agent(&spec, user, &mut report)?;
    // After lock_agent: seccomp, capabilities and no_new_privs are per
    // thread, and a thread inherits them only from its creator.
    bridge::spawn(port, addr).context("bridge")?;
    Ok(crate::init::run(spec, listener, confine, 0))
}

/// Without a console the kernel starts init with fds 0-2 closed; the first
/// files opened would take them, and a message meant for stderr would go
/// into the agent's port. /dev/null fills the gaps.
fn std_fds() {
    for fd in 0..3 {
        // SAFETY: fcntl probes an fd; open returns a new one.
        unsafe {
            if libc::fcntl(fd, libc::F_GETFD) < 0 {
                let n = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
                if n >= 0 && n != fd {
                    libc::dup2(n, fd);
                    libc::close(n);
                }
            }
        }
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}
