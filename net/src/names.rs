//! Which names a sandbox resolved to which addresses: a connection to an
//! address that no CIDR rule allows is allowed only through a name the
//! sandbox resolved to it here. Filled only from answers Lockbox's own
//! resolver gave this sandbox.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Programs cache answers past their TTL (browsers and runtimes hold them
/// for a minute or more), so an entry lives at least this long...
pub const MIN_HOLD: Duration = Duration::from_secs(300);
/// ...and never longer than this, whatever TTL the upstream claims.
pub const MAX_HOLD: Duration = Duration::from_secs(24 * 3600);

/// Names kept per address: enough for the names a CDN address serves a
/// program, and a bound on what one connection check walks.
pub const MAX_NAMES_PER_ADDRESS: usize = 16;

/// Bounded by entries (one per address and name): the sandbox chooses what
/// it resolves, so it chooses how much this would grow.
pub struct NameTable {
    by_ip: HashMap<IpAddr, Vec<Entry>>,
    len: usize,
    max: usize,
}

struct Entry {
    name: String,
    expires: Instant,
}

impl NameTable {
    pub fn new(max: usize) -> NameTable {
        NameTable {
            by_ip: HashMap::new(),
            len: 0,
            max: max.max(1),
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Records that `name` resolved to `ip` with `ttl`. When full, expired
    /// entries go first, then the one closest to expiring.
    pub fn insert(&mut self, ip: IpAddr, name: &str, ttl: Duration, now: Instant) {
        let expires = now + ttl.clamp(MIN_HOLD, MAX_HOLD);
        let list = self.by_ip.entry(ip).or_default();
        if let Some(e) = list.iter_mut().find(|e| e.name == name) {
            e.expires = e.expires.max(expires);
            return;
        }
        if list.len() >= MAX_NAMES_PER_ADDRESS {
            // Full for this address: the name closest to expiring makes room.
            if let Some(e) = list.iter_mut().min_by_key(|e| e.expires) {
                *e = Entry {
                    name: name.to_string(),
                    expires,
                };
            }
            return;
        }
        list.push(Entry {
            name: name.to_string(),
            expires,
        });
        self.len += 1;
        if self.len > self.max {
            self.sweep(now);
        }
        while self.len > self.max {
            self.evict_soonest();
        }
    }

    /// The live names `ip` was resolved from.
    pub fn names(&self, ip: IpAddr, now: Instant) -> Vec<&str> {
        self.by_ip
            .get(&ip)
            .map(|l| {
                l.iter()
                    .filter(|e| e.expires > now)
                    .map(|e| e.name.as_str())
                    .collect()
            })
            .unwrap_or_default()
    }

    fn sweep(&mut self, now: Instant) {
        let mut removed = 0;
        self.by_ip.retain(|_, l| {
            let before = l.len();
            l.retain(|e| e.expires > now);
            removed += before - l.len();
            !l.is_empty()
        });
        self.len -= removed;
    }

    fn evict_soonest(&mut self) {
        let Some((ip, idx)) = self
            .by_ip
            .iter()
            .flat_map(|(ip, l)| l.iter().enumerate().map(move |(i, e)| (e.expires, *ip, i)))
            .min_by_key(|(exp, _, _)| *exp)
            .map(|(_, ip, i)| (ip, i))
        else {
            return;
        };
        let list = self.by_ip.get_mut(&ip).expect("just found");
        list.swap_remove(idx);
        if list.is_empty() {
            self.by_ip.remove(&ip);
        }
        self.len -= 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn entries_expire_within_the_hold_bounds() {
        let t0 = Instant::now();
        let mut t = NameTable::new(16);
        t.insert(ip("1.2.3.4"), "a.test", Duration::from_secs(1), t0);
        t.insert(
            ip("1.2.3.4"),
            "b.test",
            Duration::from_secs(10 * 24 * 3600),
            t0,
        );
        t.insert(ip("1.2.3.4"), "a.test", Duration::from_secs(1), t0);
        assert_eq!(t.len(), 2);
        assert_eq!(t.names(ip("1.2.3.4"), t0), vec!["a.test", "b.test"]);
        let later = t0 + MIN_HOLD + Duration::from_secs(1);
        assert_eq!(t.names(ip("1.2.3.4"), later), vec!["b.test"]);
        assert!(t.names(ip("1.2.3.4"), t0 + MAX_HOLD).is_empty());
        assert!(t.names(ip("1.2.3.5"), t0).is_empty());
    }

    #[test]
    fn names_per_address_are_bounded() {
        let t0 = Instant::now();
        let mut t = NameTable::new(1000);
        for i in 0..100u64 {
            let ttl = MIN_HOLD + Duration::from_secs(i);
            t.insert(ip("1.2.3.4"), &format!("n{i}.test"), ttl, t0);
        }
        let names = t.names(ip("1.2.3.4"), t0);
        assert_eq!(names.len(), MAX_NAMES_PER_ADDRESS);
        assert!(names.contains(&"n99.test"));
        assert_eq!(t.len(), MAX_NAMES_PER_ADDRESS);
    }

    #[test]
    fn size_is_bounded_and_the_soonest_to_expire_goes_first() {
        let t0 = Instant::now();
        let mut t = NameTable::new(100);
        t.insert(ip("9.9.9.9"), "keep.test", MAX_HOLD, t0);
        for i in 0..10_000u32 {
            let a = IpAddr::from(i.to_be_bytes());
            t.insert(a, &format!("n{i}.test"), Duration::ZERO, t0);
            assert!(t.len() <= 100);
        }
        assert_eq!(t.len(), 100);
        assert_eq!(t.names(ip("9.9.9.9"), t0), vec!["keep.test"]);
        let expired = t0 + MIN_HOLD + Duration::from_secs(1);
        t.insert(ip("8.8.8.8"), "new.test", MAX_HOLD, expired);
        assert_eq!(t.len(), 2, "expired entries are swept when full");
    }
}
