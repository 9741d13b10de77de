//! `lockbox-net --tap-fd N --control-fd M`: the egress forwarder for one
//! sandbox (see lockbox_net::daemon). Started by the helper with the
//! sandbox's tap fd and one end of a socketpair.

use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

fn fd_arg(args: &[String], name: &str) -> Result<RawFd, String> {
    let i = args
        .iter()
        .position(|a| a == name)
        .ok_or(format!("missing {name}"))?;
    let v: RawFd = args
        .get(i + 1)
        .and_then(|v| v.parse().ok())
        .ok_or(format!("{name} needs a number"))?;
    // SAFETY: F_GETFD only asks whether the fd is open.
    if v < 3 || unsafe { libc::fcntl(v, libc::F_GETFD) } < 0 {
        return Err(format!("{name} {v} is not an open descriptor"));
    }
    Ok(v)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let fds = fd_arg(&args, "--tap-fd").and_then(|t| Ok((t, fd_arg(&args, "--control-fd")?)));
    let (tap, control) = match fds {
        Ok((t, c)) if t != c => (t, c),
        Ok(_) => fail("--tap-fd and --control-fd must differ"),
        Err(e) => fail(&e),
    };
    // SAFETY: both fds were checked open, differ, and are handed to this
    // process to own.
    let (tap, control) = unsafe { (OwnedFd::from_raw_fd(tap), UnixStream::from_raw_fd(control)) };
    if let Err(e) = lockbox_net::daemon::serve(tap, control) {
        fail(&e.to_string());
    }
}

fn fail(msg: &str) -> ! {
    eprintln!("lockbox-net: {msg}");
    std::process::exit(2);
}
