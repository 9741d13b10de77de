//! Outbound networking through pasta (Debian's passt package): a user-mode
//! TCP/IP stack that joins the sandbox's network namespace, gives it a tap
//! interface with a private address, and relays connections through
//! ordinary host sockets. The gateway is not mapped to the host
//! (`--no-map-gw`), so the host's 127.0.0.1 services stay unreachable.
//! Published ports are pasta's `-t 127.0.0.1/HOST:GUEST` forwards.

use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};
use lockbox_protocol::PortSpec;

/// The sandbox's side of the user-mode network.
pub const GUEST_ADDR: &str = "10.0.2.100";
pub const GATEWAY: &str = "10.0.2.2";
/// pasta answers DNS here by forwarding to the host's resolver.
pub const DNS: &str = "10.0.2.3";

fn binary() -> String {
    std::env::var("LOCKBOX_PASTA").unwrap_or_else(|_| "pasta".into())
}

/// Starts pasta for the namespaces of `pid`. Returns once the interface is
/// configured (pasta daemonizes then); pasta quits by itself when `pid`
/// ends. Its pid is written to `pid_file` for cleanup.
pub fn start(pid: libc::pid_t, ports: &[PortSpec], rootless: bool, pid_file: &Path) -> Result<()> {
    let mut cmd = Command::new(binary());
    cmd.args(["--config-net", "--no-map-gw", "--quiet", "-4"])
        .args(["-a", GUEST_ADDR, "-n", "24", "-g", GATEWAY])
        .args(["--dns-forward", DNS])
        .args(["-u", "none", "-T", "none", "-U", "none"])
        .arg("-P")
        .arg(pid_file);
    if !rootless {
        // pasta drops root to nobody by default, and nobody may not join a
        // user namespace owned by root.
        cmd.args(["--runas", "0"]);
    }
    if ports.is_empty() {
        cmd.args(["-t", "none"]);
    }
    for p in ports {
        cmd.arg("-t")
            .arg(format!("127.0.0.1/{}:{}", p.host, p.guest));
    }
    cmd.arg(pid.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    let st = cmd
        .status()
        .with_context(|| format!("run {} (install Debian's passt package)", binary()))?;
    if !st.success() {
        bail!("pasta failed ({st}); see helper.log");
    }
    Ok(())
}

/// Stops pasta if it is still there (normally it has quit with the sandbox).
pub fn stop(pid_file: &Path) {
    if let Ok(s) = std::fs::read_to_string(pid_file) {
        if let Ok(pid) = s.trim().parse::<i32>() {
            if pid > 1 {
                // SAFETY: plain kill of the pid pasta wrote for us.
                unsafe { libc::kill(pid, libc::SIGTERM) };
            }
        }
        let _ = std::fs::remove_file(pid_file);
    }
}
