//! The forwarder's control socket, `<sandbox dir>/net.sock`: the helper
//! binds it (mode 0600, outside the sandbox's root) and relays each line
//! to the forwarder it started, so any engine process that can open the
//! sandbox (detached, reattached) can drive it. One request line, one
//! reply line, each bounded; one connection per request.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::events::{self, NetworkCounters, NetworkEvents};
use super::NetPlan;
use crate::error::{EngineError, Result};

pub const SOCKET: &str = "net.sock";
/// A request: a policy of lockbox-net's most rules fits (its own bound).
const MAX_REQUEST: usize = lockbox_net::daemon::MAX_LINE;
/// A reply: a full event queue with long names fits.
const MAX_REPLY: u64 = 16 << 20;
/// How long one request may take; the forwarder answers from memory.
const ASK_TIMEOUT: Duration = Duration::from_secs(10);
/// Between two polls of a waiting `network_events`.
const POLL_EVERY: Duration = Duration::from_millis(25);
pub const MAX_WAIT: Duration = Duration::from_secs(30);
const MAX_ROOTS_BYTES: u64 = 4 << 20;

/// Connects through `/proc/self/fd/<dirfd>/`: a long state path never
/// meets the 108-byte sun_path limit.
fn connect(dir: &Path) -> Result<UnixStream> {
    let d = std::fs::File::open(dir).map_err(|e| EngineError::io(dir.display(), e))?;
    let short = format!("/proc/self/fd/{}/{SOCKET}", d.as_raw_fd());
    UnixStream::connect(&short).map_err(|e| {
        EngineError::unavailable(format!(
            "the sandbox's network forwarder is not reachable: {e}"
        ))
    })
}

/// Counts what is written to it: the exact size of a serialized line.
struct Count(usize);

impl std::io::Write for Count {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0 += b.len();
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// `req` and a newline in one buffer allocated at its final size (a
/// growing one would leave copies of a start line's secret values in
/// freed memory), wiped when dropped.
fn request_line(req: &Value) -> Result<zeroize::Zeroizing<Vec<u8>>> {
    let bad = |e: serde_json::Error| EngineError::internal(format!("network request: {e}"));
    let mut n = Count(0);
    serde_json::to_writer(&mut n, req).map_err(bad)?;
    if n.0 > MAX_REQUEST {
        return Err(EngineError::invalid(format!(
            "network request of {} bytes; at most {MAX_REQUEST}",
            n.0
        )));
    }
    let mut line = zeroize::Zeroizing::new(Vec::with_capacity(n.0 + 1));
    serde_json::to_writer(&mut *line, req).map_err(bad)?;
    line.push(b'\n');
    Ok(line)
}

/// Wipes every string in `v` (a start line's secret values among them).
fn zeroize_strings(v: &mut Value) {
    match v {
        Value::String(s) => zeroize::Zeroize::zeroize(s),
        Value::Array(a) => a.iter_mut().for_each(zeroize_strings),
        Value::Object(o) => o.values_mut().for_each(zeroize_strings),
        _ => {}
    }
}

/// One request and its reply; an `{"ok":false}` reply is an error.
pub fn ask(dir: &Path, req: &Value) -> Result<Value> {
    let line = request_line(req)?;
    let mut s = connect(dir)?;
    let io = |e: std::io::Error| EngineError::io("network forwarder", e);
    s.set_read_timeout(Some(ASK_TIMEOUT)).map_err(io)?;
    s.set_write_timeout(Some(ASK_TIMEOUT)).map_err(io)?;
    s.write_all(&line).map_err(io)?;
    drop(line);
    let mut buf = Vec::new();
    BufReader::new(s)
        .take(MAX_REPLY)
        .read_until(b'\n', &mut buf)
        .map_err(io)?;
    if buf.last() != Some(&b'\n') {
        return Err(EngineError::unavailable(
            "the network forwarder closed without an answer (see helper.log)",
        ));
    }
    let v: Value = serde_json::from_slice(&buf).map_err(|e| {
        EngineError::internal(format!("bad answer from the network forwarder: {e}"))
    })?;
    if v.get("ok") != Some(&Value::Bool(true)) {
        let why = v
            .get("error")
            .and_then(Value::as_str)
            .unwrap_or("no reason");
        return Err(EngineError::internal(format!(
            "the network forwarder refused: {}",
            why.chars().take(512).collect::<String>()
        )));
    }
    Ok(v)
}

/// Host settings for the forwarder (docs/configuration.md).
pub struct HostNet {
    /// `LOCKBOX_NET_DNS`; None: the host's resolv.conf, read by the forwarder.
    pub dns: Option<SocketAddr>,
    /// `LOCKBOX_NET_ROOTS`: extra trust roots for the secret hosts.
    pub roots_pem: Option<String>,
}

impl HostNet {
    pub fn from_env() -> Result<HostNet> {
        let dns = match std::env::var("LOCKBOX_NET_DNS") {
            Err(_) => None,
            Ok(v) => Some(
                v.parse::<SocketAddr>()
                    .or_else(|_| v.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, 53)))
                    .map_err(|_| {
                        EngineError::invalid(format!(
                            "LOCKBOX_NET_DNS {v:?} is not ip:port (or an ip)"
                        ))
                    })?,
            ),
        };
        let roots_pem = match std::env::var_os("LOCKBOX_NET_ROOTS") {
            None => None,
            Some(p) => {
                let p = Path::new(&p);
                if !p.is_absolute() {
                    return Err(EngineError::invalid(
                        "LOCKBOX_NET_ROOTS must be an absolute path",
                    ));
                }
                let f = std::fs::File::open(p).map_err(|e| {
                    EngineError::io(format!("LOCKBOX_NET_ROOTS {}", p.display()), e)
                })?;
                let mut text = String::new();
                f.take(MAX_ROOTS_BYTES + 1)
                    .read_to_string(&mut text)
                    .map_err(|e| EngineError::io("LOCKBOX_NET_ROOTS", e))?;
                if text.len() as u64 > MAX_ROOTS_BYTES {
                    return Err(EngineError::invalid(format!(
                        "LOCKBOX_NET_ROOTS is larger than {MAX_ROOTS_BYTES} bytes"
                    )));
                }
                Some(text)
            }
        };
        Ok(HostNet { dns, roots_pem })
    }
}

/// The start line (contract C2). Fields the forwarder did not know before
/// secrets existed are sent only with secrets. The line holds secret
/// values: it lives in memory and on the socket only.
fn start_line(plan: &NetPlan, host: &HostNet) -> Value {
    let mut v = json!({
        "gateway": super::GATEWAY,
        "prefix_len": super::PREFIX_LEN,
        "policy": plan.policy,
    });
    if let Some(d) = host.dns {
        v["upstream_dns"] = json!(d.to_string());
    }
    if !plan.secrets.is_empty() {
        v["secrets"] = plan
            .secrets
            .iter()
            .map(|s| {
                json!({"placeholder": s.placeholder, "value": s.value, "hosts": s.hosts, "headers": s.headers})
            })
            .collect();
        if let Some(r) = &host.roots_pem {
            v["upstream_roots_pem"] = json!(r);
        }
    }
    v
}

/// Starts the forwarder's policy; returns the per-sandbox CA certificate
/// (PEM) when there are secrets.
pub async fn start(dir: &Path, plan: &NetPlan) -> Result<Option<String>> {
    let host = HostNet::from_env()?;
    let mut line = start_line(plan, &host);
    let dir = dir.to_path_buf();
    let reply = blocking(move || {
        let r = ask(&dir, &line);
        zeroize_strings(&mut line);
        r
    })
    .await?;
    let ca = reply
        .get("ca_pem")
        .and_then(Value::as_str)
        .map(str::to_string);
    if !plan.secrets.is_empty() && ca.is_none() {
        return Err(EngineError::unsupported(
            "the network forwarder made no CA for the secrets (this lockbox-net has no TLS interception)",
        ));
    }
    Ok(ca)
}

pub async fn set_policy(dir: &Path, policy: &Value) -> Result<()> {
    let req = json!({"op": "set_policy", "policy": policy});
    let dir = dir.to_path_buf();
    blocking(move || ask(&dir, &req)).await.map(|_| ())
}

/// Drains the forwarder's queue into this process's buffer; the counters.
pub fn poll(dir: &Path) -> Result<NetworkCounters> {
    let reply = ask(dir, &json!({"op": "events"}))?;
    Ok(events::absorb(dir, &reply))
}

/// At most `max` events, waiting up to `wait` for the first one. Dropping
/// the future (a canceled call) stops the wait at the next poll.
pub async fn events(dir: &Path, wait: Duration, max: usize) -> Result<NetworkEvents> {
    let deadline = Instant::now() + wait.min(MAX_WAIT);
    let max = max.clamp(1, events::MAX_BATCH);
    loop {
        let d = dir.to_path_buf();
        blocking(move || poll(&d)).await?;
        if events::pending(dir) || Instant::now() >= deadline {
            return Ok(events::take(dir, max));
        }
        tokio::time::sleep(POLL_EVERY.min(deadline.saturating_duration_since(Instant::now())))
            .await;
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| EngineError::internal(format!("network request task: {e}")))?
}
