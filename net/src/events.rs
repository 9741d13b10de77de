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

/// The most a queued denial's name or rule takes once JSON-escaped. The
/// sandbox chooses much of that text (a TLS server name, a request's
/// Host), and a full queue must fit in one control reply (16 MiB at the
/// helper's relay; a longer one ended the host's control of the
/// forwarder: attack review s5, S5-NET-1): 1024 events of two such texts
/// and their fixed fields stay under 9 MiB.
pub const MAX_TEXT: usize = 4096;

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

    pub fn deny(&self, mut d: Denial) {
        if let Some(n) = d.name.as_mut() {
            clip(n);
        }
        clip(&mut d.rule);
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

/// Cuts `s` so that its JSON form holds at most `MAX_TEXT` bytes between
/// the quotes, marking the cut with "...".
fn clip(s: &mut String) {
    let escaped = |c: char| match c {
        '"' | '\\' | '\n' | '\r' | '\t' | '\u{8}' | '\u{c}' => 2,
        c if (c as u32) < 0x20 => 6,
        c => c.len_utf8(),
    };
    if s.chars().map(escaped).sum::<usize>() <= MAX_TEXT {
        return;
    }
    let mut used = 0;
    for (i, c) in s.char_indices() {
        used += escaped(c);
        if used > MAX_TEXT - 3 {
            s.truncate(i);
            s.push_str("...");
            return;
        }
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

    /// S5-NET-1: whatever text the sandbox puts into denials, a full queue
    /// serializes to less than one control reply (16 MiB); unclipped, the
    /// same queue is larger (the control).
    #[test]
    fn a_full_queue_fits_one_control_reply() {
        const REPLY: usize = 16 << 20;
        let worst = |i: usize| {
            let mut d = Denial::now(DenialKind::Sni, "\u{1}\"".repeat(8000) + &i.to_string());
            d.protocol = Some(Protocol::Tcp);
            d.ip = Some("255.255.255.255".parse().unwrap());
            d.port = Some(65535);
            d.name = Some("a".repeat(16328));
            d
        };
        let ev = Events::new(1024);
        let raw: Vec<Denial> = (0..1024).map(worst).collect();
        for d in raw.clone() {
            ev.deny(d);
        }
        let queued = ev.drain();
        assert_eq!(queued.len(), 1024);
        let size = serde_json::to_string(&queued).unwrap().len();
        assert!(size < 9 << 20, "{size} bytes");
        assert!(serde_json::to_string(&raw).unwrap().len() > REPLY);
        // Clipped on a character boundary, marked, and short text kept.
        let d = &queued[0];
        assert!(d.rule.ends_with("...") && d.name.as_ref().unwrap().ends_with("..."));
        assert!(serde_json::to_string(&d.rule).unwrap().len() <= MAX_TEXT + 2);
        let mut s = "é".repeat(3000);
        clip(&mut s);
        assert!(s.len() <= MAX_TEXT && s.ends_with("..."));
        let mut short = "default deny".to_string();
        clip(&mut short);
        assert_eq!(short, "default deny");
    }
}
