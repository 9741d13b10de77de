//! The forwarder as its own process (`lockbox-net`), the form the helper
//! starts per sandbox: it holds the sandbox's tap fd, runs in the host's
//! network namespace, and takes orders as JSON lines on a control socket.
//!
//! ```text
//! → {"gateway":"10.0.2.2","prefix_len":24,"policy":{"rules":[…]},       (first line)
//!    "secrets":[{"placeholder":"lockbox-secret-…","value":"…","hosts":[…]}],
//!    "upstream_roots_pem":"-----BEGIN CERTIFICATE-----…"}               (both optional)
//! ← {"ok":true}                  ({"ok":true,"ca_pem":"…"} with secrets)
//! → {"op":"set_policy","policy":{"rules":[…]}}
//! ← {"ok":true}
//! → {"op":"events"}
//! ← {"ok":true,"events":[…],"counters":{…}}
//! ```
//!
//! End of the control stream stops it. So does the death of its parent
//! (PDEATHSIG), so a killed helper never leaves one behind.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::sync::Arc;

use serde::Deserialize;
use serde_json::{json, Value};

use crate::forwarder::{Config, Forwarder, Handle, Limits, Published};
use crate::intercept::{roots_from_pem, system_roots, Interception};
use crate::policy::{HostAddrs, Policy};
use crate::secrets::{SecretSpec, Secrets};

/// A control line is at most this long: a policy of `MAX_RULES` rules fits.
pub const MAX_LINE: usize = 1 << 20;
/// The uid and gid the forwarder runs as when started as root: it needs no
/// privilege once the tap fd is open (host sockets are ordinary). Not
/// 65534: host daemons that run as nobody could signal a forwarder of that
/// uid. This one belongs to forwarders only (next to 99998, qemu's, and
/// 99999, which owns the sandboxes' user namespaces); the forwarders'
/// seccomp filter keeps them from signalling or tracing one another.
pub const FORWARDER_UID: u32 = 99997;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Start {
    gateway: std::net::Ipv4Addr,
    prefix_len: u8,
    /// Default: the first nameserver in the host's /etc/resolv.conf.
    #[serde(default)]
    upstream_dns: Option<SocketAddr>,
    /// Default: every address on the host's interfaces.
    #[serde(default)]
    host_addrs: Option<Vec<IpAddr>>,
    policy: Value,
    /// Placeholders and their real values (never echoed or logged).
    #[serde(default)]
    secrets: Vec<SecretSpec>,
    /// Extra roots for the secret hosts' certificates, besides the host's
    /// system bundle.
    #[serde(default)]
    upstream_roots_pem: Option<String>,
}

#[derive(Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
enum Op {
    SetPolicy { policy: Value },
    Events,
}

/// Runs the daemon: reads the start line, starts the forwarder on a
/// thread, then serves control lines until the stream ends.
pub fn serve(tap: OwnedFd, control: UnixStream) -> io::Result<()> {
    serve_confined(tap, control, || Ok(()))
}

/// `serve`, with `confine` (the embedding binary's system call filter)
/// run once privileges are dropped and before any frame or control line
/// is read: the process is single-threaded then, so every thread it
/// starts inherits what `confine` installs.
pub fn serve_confined(
    tap: OwnedFd,
    control: UnixStream,
    confine: impl FnOnce() -> io::Result<()>,
) -> io::Result<()> {
    serve_published(tap, control, Vec::new(), confine)
}

/// `serve_confined`, also relaying connections accepted on `published`
/// (listening sockets the caller bound: published ports) into the
/// sandbox.
pub fn serve_published(
    tap: OwnedFd,
    control: UnixStream,
    published: Vec<Published>,
    confine: impl FnOnce() -> io::Result<()>,
) -> io::Result<()> {
    serve_with(tap, None, control, published, confine)
}

/// `serve_published`, with the sandbox's TCP taken from `redirect` when
/// given: the listener in its network namespace that its redirect rule
/// sends every outgoing TCP connection to (forwarder/redirect.rs).
pub fn serve_with(
    tap: OwnedFd,
    redirect: Option<OwnedFd>,
    control: UnixStream,
    published: Vec<Published>,
    confine: impl FnOnce() -> io::Result<()>,
) -> io::Result<()> {
    die_with_parent()?;
    // Secret values and the CA key live in this process: no core dump,
    // and no ptrace by other processes of the same uid (nobody, or the
    // rootless user).
    // SAFETY: prctl with integer arguments.
    if unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut reader = BufReader::new(control.try_clone()?);
    let mut out = control;
    // The start line holds the secret values: read into a buffer of its
    // final size (no copies left behind by growth) and wiped once parsed.
    let line = zeroize::Zeroizing::new(
        read_line_into(&mut reader, Vec::with_capacity(MAX_LINE + 1))?
            .ok_or_else(|| bad("no start line"))?,
    );
    // serde's message may quote a value from the line, and the line
    // holds secrets: say only where it went wrong.
    let start: Start = serde_json::from_str(&line).map_err(|e| {
        bad(&format!(
            "bad start line ({:?} error at column {})",
            e.classify(),
            e.column()
        ))
    })?;
    drop(line);
    let policy = policy_from(&start.policy).map_err(|e| bad(&e))?;
    let interception = interception_from(start.secrets, start.upstream_roots_pem.as_deref())
        .map_err(|e| bad(&e))?;
    let config = Config {
        gateway: start.gateway,
        prefix_len: start.prefix_len,
        upstream_dns: match start.upstream_dns {
            Some(a) => a,
            None => host_resolver()?,
        },
        host_addrs: HostAddrs(match start.host_addrs {
            Some(a) => a,
            None => host_addresses()?,
        }),
        limits: Limits::default(),
    };
    drop_privileges()?;
    confine()?;
    let (fwd, handle) = Forwarder::new(tap, config, policy);
    let mut fwd = fwd.with_published(published);
    if let Some(l) = redirect {
        fwd = fwd.with_redirect(l);
    }
    let reply = match &interception {
        Some(ix) => {
            fwd = fwd.with_interception(ix.clone());
            json!({"ok": true, "ca_pem": ix.ca_pem()})
        }
        None => json!({"ok": true}),
    };
    let runner = std::thread::spawn(move || fwd.run());
    write_line(&mut out, &reply)?;
    let result = control_loop(&mut reader, &mut out, &handle);
    handle.stop();
    let _ = runner.join();
    result
}

fn control_loop(
    reader: &mut BufReader<UnixStream>,
    out: &mut UnixStream,
    h: &Handle,
) -> io::Result<()> {
    while let Some(line) = read_line(reader)? {
        let reply = match serde_json::from_str::<Op>(&line) {
            Err(e) => json!({"ok": false, "error": e.to_string()}),
            Ok(Op::SetPolicy { policy }) => match policy_from(&policy) {
                Ok(p) => {
                    h.set_policy(p);
                    json!({"ok": true})
                }
                Err(e) => json!({"ok": false, "error": e}),
            },
            Ok(Op::Events) => json!({
                "ok": true,
                "events": h.take_events(),
                "counters": h.counters(),
            }),
        };
        write_line(out, &reply)?;
    }
    Ok(())
}

/// One write per reply (`writeln!` on the socket made one per token).
fn write_line(out: &mut UnixStream, v: &Value) -> io::Result<()> {
    let mut line = v.to_string();
    line.push('\n');
    out.write_all(line.as_bytes())
}

/// None without secrets: nothing is intercepted then. The system roots
/// are read here, before privileges are dropped.
fn interception_from(
    specs: Vec<SecretSpec>,
    extra_roots: Option<&str>,
) -> Result<Option<Arc<Interception>>, String> {
    let secrets = Secrets::new(specs)?;
    if secrets.is_empty() {
        return Ok(None);
    }
    let mut roots = system_roots();
    if let Some(pem) = extra_roots {
        roots.extend(roots_from_pem(pem)?);
    }
    Interception::new(secrets, roots).map(|ix| Some(Arc::new(ix)))
}

fn policy_from(v: &Value) -> Result<Policy, String> {
    Policy::from_json(&v.to_string()).map_err(|e| e.to_string())
}

/// One line, without its newline; None at end of stream. A line over
/// `MAX_LINE` is an error: the other side is not the helper.
fn read_line(r: &mut BufReader<UnixStream>) -> io::Result<Option<String>> {
    read_line_into(r, Vec::new())
}

fn read_line_into(r: &mut BufReader<UnixStream>, mut buf: Vec<u8>) -> io::Result<Option<String>> {
    let n = r
        .by_ref()
        .take(MAX_LINE as u64 + 1)
        .read_until(b'\n', &mut buf)?;
    if n == 0 {
        return Ok(None);
    }
    if buf.last() != Some(&b'\n') {
        zeroize::Zeroize::zeroize(&mut buf);
        return Err(bad("control line too long or cut"));
    }
    buf.pop();
    String::from_utf8(buf).map(Some).map_err(|e| {
        zeroize::Zeroize::zeroize(&mut e.into_bytes());
        bad("control line is not UTF-8")
    })
}

fn bad(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.to_string())
}

fn die_with_parent() -> io::Result<()> {
    // SAFETY: prctl with integer arguments.
    let r = unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    // The parent may have died before the call above took effect.
    if std::os::unix::process::parent_id() == 1 {
        return Err(bad("parent already gone"));
    }
    Ok(())
}

/// no_new_privs always; as root, become nobody with no groups and no
/// capabilities (a uid change from 0 clears them all).
fn drop_privileges() -> io::Result<()> {
    // SAFETY: plain system calls with integer arguments.
    unsafe {
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
            return Err(io::Error::last_os_error());
        }
        if libc::geteuid() == 0
            && (libc::setgroups(0, std::ptr::null()) != 0
                || libc::setresgid(FORWARDER_UID, FORWARDER_UID, FORWARDER_UID) != 0
                || libc::setresuid(FORWARDER_UID, FORWARDER_UID, FORWARDER_UID) != 0)
        {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// The first nameserver of the host's resolv.conf (read before privileges
/// are dropped; the host's file, not the sandbox's).
fn host_resolver() -> io::Result<SocketAddr> {
    let text = std::fs::read_to_string("/etc/resolv.conf")?;
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .find_map(|a| a.trim().parse::<IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, 53))
        .ok_or_else(|| bad("no nameserver in /etc/resolv.conf"))
}

/// Every address on the host's interfaces (in this process's network
/// namespace, the one whose sockets the forwarder opens).
fn host_addresses() -> io::Result<Vec<IpAddr>> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head`; the list is walked read-only and
    // freed once.
    unsafe {
        if libc::getifaddrs(&mut head) != 0 {
            return Err(io::Error::last_os_error());
        }
        let mut out = Vec::new();
        let mut p = head;
        while !p.is_null() {
            let a = (*p).ifa_addr;
            if !a.is_null() {
                match i32::from((*a).sa_family) {
                    libc::AF_INET => {
                        let s = &*(a as *const libc::sockaddr_in);
                        out.push(IpAddr::from(u32::from_be(s.sin_addr.s_addr).to_be_bytes()));
                    }
                    libc::AF_INET6 => {
                        let s = &*(a as *const libc::sockaddr_in6);
                        out.push(IpAddr::from(s.sin6_addr.s6_addr));
                    }
                    _ => {}
                }
            }
            p = (*p).ifa_next;
        }
        libc::freeifaddrs(head);
        Ok(out)
    }
}
