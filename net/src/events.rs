//! Denials the Go program can read, and counters for `Metrics()`.
//!
//! The queue is bounded and drops the oldest event when full, counting
//! what it dropped: the sandbox decides how many denials it causes, so it
//! must not decide how much host memory they take.

use std::collections::VecDeque;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::SystemTime;

use serde::Serialize;

use crate::policy::Protocol;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DenialKind {
    /// A TCP connection or UDP datagram to a destination no rule allows.
    Connect,
    /// A DNS query for a name no rule allows (answered NXDOMAIN locally).
    Dns,
    /// A DNS answer address in a non-public or host range (rebinding).
    DnsAnswer,
    /// A TLS ClientHello whose server name no rule allows.
    Sni,
    /// A per-sandbox bound was reached (connections, pending queries).
    Limit,
    /// A secret placeholder going where it is not substituted (a host its
    /// secret is not bound to, or plaintext), or an intercepted connection
    /// reset (the real host failed verification, a refused request head).
    Secret,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Denial {
    pub kind: DenialKind,
    /// Seconds and nanoseconds since the Unix epoch.
    pub time_unix_ns: u128,
    pub protocol: Option<Protocol>,
    pub ip: Option<IpAddr>,
    pub port: Option<u16>,
    /// The name asked for, sent as SNI, or the names the address came from.
    pub name: Option<String>,
    /// The rule that refused, as JSON, or "default deny" / the bound.
    pub rule: String,
}

impl Denial {
    pub fn now(kind: DenialKind, rule: String) -> Denial {
        let time_unix_ns = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        Denial {
            kind,
            time_unix_ns,
            protocol: None,
            ip: None,
            port: None,
            name: None,
            rule,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Counters {
    pub connections_allowed: u64,
    pub connections_denied: u64,
    pub dns_answered: u64,
    pub dns_denied: u64,
    pub dns_answers_refused: u64,
    pub events_dropped: u64,
    /// Placeholders replaced by their real value in requests to their hosts.
    pub secrets_substituted: u64,
}

pub struct Events {
    inner: Mutex<Inner>,
}

struct Inner {
    queue: VecDeque<Denial>,
    cap: usize,
    counters: Counters,
}

impl Events {
    pub fn new(cap: usize) -> Events {
        Events {
            inner: Mutex::new(Inner {
                queue: VecDeque::new(),
                cap: cap.max(1),
                counters: Counters::default(),
            }),
        }
    }

    pub fn deny(&self, d: Denial) {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        match d.kind {
            DenialKind::Connect | DenialKind::Sni | DenialKind::Limit => {
                g.counters.connections_denied += 1
            }
            DenialKind::Dns => g.counters.dns_denied += 1,
            DenialKind::DnsAnswer => g.counters.dns_answers_refused += 1,
            // Reported, not a refused connection: the bytes went on.
            DenialKind::Secret => {}
        }
        if g.queue.len() == g.cap {
            g.queue.pop_front();
            g.counters.events_dropped += 1;
        }
        g.queue.push_back(d);
    }

    pub fn count(&self, f: impl FnOnce(&mut Counters)) {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut g.counters);
    }

    /// Takes every queued denial, oldest first.
    pub fn drain(&self) -> Vec<Denial> {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        g.queue.drain(..).collect()
    }

    pub fn counters(&self) -> Counters {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .counters
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_queue_drops_the_oldest_and_counts_it() {
        let ev = Events::new(3);
        for i in 0..5 {
            ev.deny(Denial::now(DenialKind::Dns, format!("r{i}")));
        }
        let got: Vec<_> = ev.drain().into_iter().map(|d| d.rule).collect();
        assert_eq!(got, ["r2", "r3", "r4"]);
        let c = ev.counters();
        assert_eq!((c.dns_denied, c.events_dropped), (5, 2));
        assert!(ev.drain().is_empty());
    }
}
