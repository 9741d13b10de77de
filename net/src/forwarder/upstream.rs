//! Every TCP connection the forwarder opens toward a destination, from
//! either path (a SYN on the tap, a connection on the redirect listener),
//! is opened here, so that one sandbox cannot take the host's ephemeral
//! ports (docs/network.md "Host ports"; attack review s5, S5-NET-4).
//!
//! A sandbox decides who closes first. When it does, the forwarder's host
//! socket is the active closer and keeps its local port in TIME_WAIT for
//! 60 s after the connection ended; once every port of the host's range is
//! held so toward one destination, no host process can connect there.
//! The kernel enters TIME_WAIT on the peer's FIN, while the forwarder still
//! holds the socket, so no close-time trick (a zero linger) undoes it, and
//! resetting earlier would cut a half-closed connection's answer. Two
//! bounds instead:
//!
//! - A port slice: upstream sockets take their local port only from the
//!   top part of the host's ephemeral range (IP_LOCAL_PORT_RANGE, Linux
//!   6.3+), so all forwarders together hold at most that part toward any
//!   destination and host processes keep the rest. The kernel enforces it:
//!   a connect with the slice in use toward that destination fails with
//!   EADDRNOTAVAIL, which becomes a reset and a "host ports" event.
//! - A connection rate per sandbox (a token bucket): a port stays held at
//!   most 60 s after its connection ends, and the connections that end in
//!   a 60 s window either started in it or were open at its start, so one
//!   sandbox holds at most `burst + 60 × rate + max_tcp` ports in TIME_WAIT
//!   (its share of the slice, and of the host's TIME_WAIT table, whatever
//!   the number of destinations). A connection over the rate is a reset
//!   and a "connection-rate" event.

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::{TcpSocket, TcpStream};

use crate::events::{Denial, DenialKind, Events};
use crate::policy::Protocol;

/// linux/in.h; libc 0.2 does not name it.
const IP_LOCAL_PORT_RANGE: libc::c_int = 51;
/// The kernel's own default range, for a host whose range cannot be read.
const KERNEL_DEFAULT_RANGE: (u16, u16) = (32768, 60999);

/// Local ports upstream sockets may take, first to last (inclusive).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortSlice {
    pub first: u16,
    pub last: u16,
}

impl PortSlice {
    /// The top `1/parts` of the ephemeral range of the calling thread's
    /// network namespace. Read when the forwarder's limits are made: the
    /// forwarder's system call filter refuses `open` once it serves.
    pub fn top_of_host(parts: u16) -> PortSlice {
        let (lo, hi) = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
            .ok()
            .and_then(|t| {
                let mut it = t.split_whitespace().map(|v| v.parse::<u16>().ok());
                Some((it.next()??, it.next()??))
            })
            .filter(|(lo, hi)| lo <= hi)
            .unwrap_or(KERNEL_DEFAULT_RANGE);
        PortSlice::top_of(lo, hi, parts)
    }

    /// The top `1/parts` of `lo..=hi` (at least one port).
    pub fn top_of(lo: u16, hi: u16, parts: u16) -> PortSlice {
        let size = (u32::from(hi - lo) + 1) / u32::from(parts.max(1));
        let first = u32::from(hi) + 1 - size.max(1);
        PortSlice {
            first: first as u16,
            last: hi,
        }
    }

    /// How many ports the slice holds.
    pub fn size(&self) -> usize {
        usize::from(self.last - self.first) + 1
    }
}

/// What one sandbox may take of the host's ports (defaults in
/// `Limits::default`).
#[derive(Debug, Clone)]
pub struct Bounds {
    /// None: the host's whole range (no slice).
    pub ports: Option<PortSlice>,
    /// New upstream connections a second, sustained.
    pub connections_per_sec: u32,
    /// New upstream connections at once above the sustained rate.
    pub connection_burst: u32,
}

/// One sandbox's upstream connections: its slice, its bucket, its events.
pub struct Upstream {
    ports: Option<PortSlice>,
    bucket: Mutex<Bucket>,
    events: Arc<Events>,
    rate_rule: String,
    ports_rule: String,
}

impl Upstream {
    pub fn new(b: &Bounds, events: Arc<Events>) -> Upstream {
        let ports = match b.ports {
            Some(s) => format!("{}-{}", s.first, s.last),
            None => "the whole range".into(),
        };
        Upstream {
            ports: b.ports,
            bucket: Mutex::new(Bucket {
                rate: f64::from(b.connections_per_sec),
                burst: f64::from(b.connection_burst.max(1)),
                tokens: f64::from(b.connection_burst.max(1)),
                last: Instant::now(),
            }),
            events,
            rate_rule: format!(
                "connection-rate: more than {} new connections a second (burst {})",
                b.connections_per_sec, b.connection_burst
            ),
            ports_rule: format!(
                "host ports: the forwarders' share of the host's ephemeral ports ({ports}) is held toward this destination"
            ),
        }
    }

    fn admit(&self) -> bool {
        self.bucket
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take(Instant::now())
    }

    /// A connection the policy allowed that a bound refused: reported and
    /// counted as a denial.
    fn refuse(&self, dst: SocketAddr, rule: &str) {
        let mut d = Denial::now(DenialKind::Limit, rule.to_string());
        d.protocol = Some(Protocol::Tcp);
        d.ip = Some(dst.ip());
        d.port = Some(dst.port());
        self.events.deny(d);
    }
}

struct Bucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl Bucket {
    fn take(&mut self, now: Instant) -> bool {
        let earned = now.saturating_duration_since(self.last).as_secs_f64() * self.rate;
        self.tokens = (self.tokens + earned).min(self.burst);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return true;
        }
        false
    }
}

/// Connects to `dst` for the sandbox within `timeout`, or refuses: the
/// caller resets the sandbox's side on any error, as when the destination
/// itself refused.
pub async fn connect(up: &Upstream, dst: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    if !up.admit() {
        up.refuse(dst, &up.rate_rule);
        return Err(io::ErrorKind::WouldBlock.into());
    }
    // Counted here, not by the callers: a connection the rate refuses is
    // never counted allowed first and taken back, which a reader of the
    // counters could see in between.
    up.events.count(|c| c.connections_allowed += 1);
    let sock = match dst {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    if let Some(s) = up.ports {
        // Before 6.3 the kernel does not know the option (ENOPROTOOPT):
        // the rate bound still holds there, the slice does not.
        let _ = set_port_range(&sock, s);
    }
    match tokio::time::timeout(timeout, sock.connect(dst)).await {
        Ok(Err(e)) if e.raw_os_error() == Some(libc::EADDRNOTAVAIL) => {
            // Known only once counted: taken back.
            up.events.count(|c| {
                c.connections_allowed = c.connections_allowed.saturating_sub(1);
            });
            up.refuse(dst, &up.ports_rule);
            Err(e)
        }
        Ok(r) => r,
        Err(_) => Err(io::ErrorKind::TimedOut.into()),
    }
}

/// Tells socket `s` to take its local port from `p` when the kernel picks
/// one (connect's autobind, or bind to port 0); TCP or UDP.
pub(super) fn set_port_range(s: &impl AsRawFd, p: PortSlice) -> io::Result<()> {
    let v: u32 = u32::from(p.first) | (u32::from(p.last) << 16);
    // SAFETY: setsockopt with a u32 the kernel copies.
    let r = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_IP,
            IP_LOCAL_PORT_RANGE,
            (&v as *const u32).cast(),
            std::mem::size_of::<u32>() as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_slice_is_the_top_of_the_range() {
        let s = PortSlice::top_of(32768, 60999, 4);
        assert_eq!((s.first, s.last), (53942, 60999));
        assert_eq!(s.size(), 7058);
        assert_eq!(PortSlice::top_of(40000, 40999, 4).size(), 250);
        let one = PortSlice::top_of(5000, 5000, 4);
        assert_eq!((one.first, one.last), (5000, 5000));
    }

    #[test]
    fn the_bucket_allows_its_burst_then_its_rate() {
        let t0 = Instant::now();
        let mut b = Bucket {
            rate: 10.0,
            burst: 5.0,
            tokens: 5.0,
            last: t0,
        };
        assert_eq!((0..8).filter(|_| b.take(t0)).count(), 5);
        // 1 s later: ten more earned, but no more than the burst kept.
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!((0..8).filter(|_| b.take(t1)).count(), 5);
        let t2 = t1 + Duration::from_millis(300);
        assert_eq!((0..8).filter(|_| b.take(t2)).count(), 3);
    }

    /// The local ports of 32 connections to `dst` made through an
    /// `Upstream` with `ports`.
    fn ports_taken(dst: SocketAddr, ports: Option<PortSlice>) -> Vec<u16> {
        let up = Upstream::new(
            &Bounds {
                ports,
                connections_per_sec: 1000,
                connection_burst: 1000,
            },
            Arc::new(Events::new(16)),
        );
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let mut v = Vec::new();
            for _ in 0..32 {
                let s = connect(&up, dst, Duration::from_secs(5)).await.unwrap();
                v.push(s.local_addr().unwrap().port());
            }
            v
        })
    }

    #[test]
    fn upstream_sockets_take_ports_from_the_slice_only() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let dst = l.local_addr().unwrap();
        let host = PortSlice::top_of_host(1);
        let top = PortSlice::top_of(host.first, host.last, 64);
        let in_top = |p: &u16| (top.first..=top.last).contains(p);
        let ports = ports_taken(dst, Some(top));
        assert!(ports.iter().all(in_top), "{ports:?} outside {top:?}");
        // The control: the bottom 64th of the range instead. The kernel
        // picks a connection's port from an offset that is a hash of the
        // addresses, so plain sockets could land in the top slice by
        // chance; these cannot, and the check above would see them.
        let bottom = PortSlice {
            first: host.first,
            last: host.first + (top.last - top.first),
        };
        let ports = ports_taken(dst, Some(bottom));
        assert!(!ports.iter().any(in_top), "control: {ports:?} in {top:?}");
        assert!(ports
            .iter()
            .all(|p| (bottom.first..=bottom.last).contains(p)));
    }
}
