//! Denial events and counters as the C ABI shows them (contract C1), and
//! the per-sandbox buffer that keeps events a metrics read drained from
//! the forwarder until `network_events` hands them out.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Events kept per sandbox between reads; the oldest go first (counted).
pub const BUFFER_CAP: usize = 1024;
/// Most events one `network_events` call returns.
pub const MAX_BATCH: usize = 1024;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkEvent {
    /// connect, dns, dns_answer, sni, limit or secret.
    pub kind: String,
    pub time_unix_ns: u64,
    pub protocol: Option<String>,
    pub ip: Option<String>,
    pub port: Option<u16>,
    pub name: Option<String>,
    /// The refusing rule's JSON, "default deny", or the bound reached.
    pub rule: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkEvents {
    pub events: Vec<NetworkEvent>,
    /// Lost to a bounded queue since the previous call.
    pub dropped: u64,
}

/// `Metrics().network`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkCounters {
    pub connections_allowed: u64,
    pub connections_denied: u64,
    pub dns_answered: u64,
    pub dns_denied: u64,
    pub dns_answers_refused: u64,
    pub events_dropped: u64,
    #[serde(default)]
    pub secrets_substituted: u64,
}

#[derive(Default)]
struct Buffer {
    events: VecDeque<NetworkEvent>,
    dropped: u64,
    /// The forwarder's cumulative `events_dropped` when last seen.
    seen_dropped: u64,
    /// Dropped by this buffer since it was made (the forwarder's count
    /// does not know them).
    own_dropped: u64,
}

/// Keyed by sandbox directory: every handle on one sandbox in this
/// process shares one buffer (a metrics read must not lose events).
static BUFFERS: Mutex<Option<HashMap<PathBuf, Buffer>>> = Mutex::new(None);

/// Adds what one control `events` reply carried; returns its counters,
/// with `events_dropped` counting this buffer's drops too: every event
/// the forwarder reported is either handed out or counted there.
pub fn absorb(dir: &Path, reply: &Value) -> NetworkCounters {
    let mut counters: NetworkCounters = reply
        .get("counters")
        .and_then(|c| serde_json::from_value(c.clone()).ok())
        .unwrap_or_default();
    let events = reply.get("events").and_then(Value::as_array);
    let mut g = BUFFERS.lock().unwrap_or_else(|e| e.into_inner());
    let map = g.get_or_insert_with(HashMap::new);
    if !map.contains_key(dir) {
        // Sandboxes removed since: their buffers go with them.
        map.retain(|d, _| d.join("config.json").exists());
    }
    let b = map.entry(dir.to_path_buf()).or_default();
    b.dropped += counters.events_dropped.saturating_sub(b.seen_dropped);
    b.seen_dropped = b.seen_dropped.max(counters.events_dropped);
    for e in events.into_iter().flatten() {
        if b.events.len() == BUFFER_CAP {
            b.events.pop_front();
            b.dropped += 1;
            b.own_dropped += 1;
        }
        b.events.push_back(from_forwarder(e));
    }
    counters.events_dropped += b.own_dropped;
    counters
}

/// Takes at most `max` buffered events (oldest first) and the drop count.
pub fn take(dir: &Path, max: usize) -> NetworkEvents {
    let mut g = BUFFERS.lock().unwrap_or_else(|e| e.into_inner());
    let Some(b) = g.as_mut().and_then(|m| m.get_mut(dir)) else {
        return NetworkEvents::default();
    };
    let n = max.min(b.events.len());
    NetworkEvents {
        events: b.events.drain(..n).collect(),
        dropped: std::mem::take(&mut b.dropped),
    }
}

pub fn pending(dir: &Path) -> bool {
    let g = BUFFERS.lock().unwrap_or_else(|e| e.into_inner());
    g.as_ref()
        .and_then(|m| m.get(dir))
        .is_some_and(|b| !b.events.is_empty() || b.dropped > 0)
}

/// One of lockbox-net's denials (events.rs `Denial`) in the ABI's shape.
/// The forwarder is outside the sandbox, but what it reports holds names
/// the sandbox chose: each string is bounded here too.
fn from_forwarder(e: &Value) -> NetworkEvent {
    let s = |k: &str, max: usize| {
        e.get(k)
            .and_then(Value::as_str)
            .map(|v| v.chars().take(max).collect::<String>())
    };
    NetworkEvent {
        kind: s("kind", 32).unwrap_or_default(),
        time_unix_ns: e
            .get("time_unix_ns")
            .and_then(Value::as_u64)
            .unwrap_or_default(),
        protocol: s("protocol", 8),
        ip: s("ip", 64),
        port: e
            .get("port")
            .and_then(Value::as_u64)
            .and_then(|p| u16::try_from(p).ok()),
        name: s("name", 4096),
        rule: s("rule", 4096).unwrap_or_default(),
    }
}
