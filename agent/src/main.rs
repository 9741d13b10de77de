//! lockbox-helper: `lockbox-helper run <launch.json>` sets up one native
//! sandbox and serves the agent protocol inside it. See README.md for the
//! setup order and what is isolated.

mod caps;
mod cgroup;
mod confine;
mod guest;
mod init;
mod netd;
mod nft;
mod pasta;
mod report;
mod seccomp;
mod setup;
mod spawner;
mod supervisor;
mod sys;
mod users;
mod vmm;

use std::path::Path;

/// Closes every inherited fd above stderr: whatever the engine's process
/// leaked without CLOEXEC must never reach the sandbox.
fn close_inherited_fds() {
    // SAFETY: close_range on fds we do not use; nothing is open yet.
    unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) };
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if guest::is_init(args.first().map(String::as_str)) {
        std::process::exit(guest::main());
    }
    match args.get(1).map(String::as_str) {
        Some("run") if args.len() == 3 => {
            close_inherited_fds();
            std::process::exit(supervisor::run(Path::new(&args[2])));
        }
        Some("vmm") if args.len() == 3 => {
            close_inherited_fds();
            std::process::exit(vmm::run(Path::new(&args[2])));
        }
        // The egress forwarder of one sandbox, started by its helper
        // (netd.rs) with the fds it needs open.
        Some(netd::MODE) => std::process::exit(netd::forwarder_main(&args)),
        Some("--version") => println!("lockbox-helper {}", env!("CARGO_PKG_VERSION")),
        _ => {
            eprintln!("usage: lockbox-helper run <launch.json> | vmm <vmm.json>");
            std::process::exit(2);
        }
    }
}
