//! The sandbox's resolver. It answers every query itself: names no rule
//! allows get NXDOMAIN here and never leave the host (so a denied zone
//! cannot carry data out as long random subdomains); allowed names are
//! asked upstream as a fresh query (only the question, nothing else the
//! sandbox wrote), and the answer comes back filtered: addresses in
//! non-public or host ranges are dropped unless a CIDR rule names them
//! (DNS rebinding), and every address that stays is recorded in the
//! sandbox's name table, which is what later lets a connection to it
//! through.
//!
//! No I/O here: the forwarder moves the bytes.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{DNSClass, RData, Record, RecordType};

use crate::events::{Denial, DenialKind, Events};
use crate::names::NameTable;
use crate::policy::{HostAddrs, Policy, Protocol};

/// An upstream that has not answered by then never will, as far as the
/// sandbox is concerned (it retries on its own).
pub const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(5);
/// What Lockbox advertises upstream and accepts back (the DNS flag day
/// size, which avoids fragmentation).
const UDP_PAYLOAD: u16 = 1232;
/// Plain DNS over UDP without EDNS.
const CLASSIC_UDP: usize = 512;

/// What the caller needs to decide: the policy of the moment, the host's
/// own addresses and where denials go.
pub struct Ctx<'a> {
    pub policy: &'a Policy,
    pub host: &'a HostAddrs,
    pub events: &'a Events,
}

pub enum QueryOutcome {
    /// Send these bytes back to the sandbox.
    Reply(Vec<u8>),
    /// Send these bytes to the upstream resolver.
    Forward(Vec<u8>),
    /// Not a query worth an answer (garbage, a response).
    Ignore,
}

pub struct DnsFilter {
    pending: HashMap<u16, Pending>,
    max_pending: usize,
    table: NameTable,
}

struct Pending {
    client: SocketAddr,
    guest_id: u16,
    recursion_desired: bool,
    guest_edns: bool,
    query: Query,
    name: String,
    sent: Instant,
}

impl DnsFilter {
    pub fn new(max_pending: usize, max_names: usize) -> DnsFilter {
        DnsFilter {
            pending: HashMap::new(),
            max_pending: max_pending.max(1),
            table: NameTable::new(max_names),
        }
    }

    pub fn table(&self) -> &NameTable {
        &self.table
    }

    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// A query from the sandbox, sent from `client`.
    pub fn on_query(
        &mut self,
        pkt: &[u8],
        client: SocketAddr,
        ctx: &Ctx<'_>,
        now: Instant,
    ) -> QueryOutcome {
        let Ok(msg) = Message::from_vec(pkt) else {
            return match pkt.get(..2) {
                Some(id) => reply_code(u16::from_be_bytes([id[0], id[1]]), ResponseCode::FormErr),
                None => QueryOutcome::Ignore,
            };
        };
        if msg.message_type() != MessageType::Query {
            return QueryOutcome::Ignore;
        }
        let [q] = msg.queries() else {
            return reply_code(msg.id(), ResponseCode::FormErr);
        };
        if msg.op_code() != OpCode::Query || q.query_class() != DNSClass::IN {
            return reply_code(msg.id(), ResponseCode::Refused);
        }
        let name = match plain_name(q) {
            Some(n) => n,
            None => {
                let mut d = Denial::now(DenialKind::Dns, "name outside a-z 0-9 - _".into());
                d.name = Some(q.name().to_ascii());
                ctx.events.deny(d);
                return self.answer_locally(&msg, q, ResponseCode::NXDomain);
            }
        };
        let verdict = ctx.policy.may_resolve(&name);
        if !verdict.allowed {
            let mut d = Denial::now(DenialKind::Dns, ctx.policy.describe(verdict.rule));
            d.name = Some(name);
            d.protocol = Some(Protocol::Udp);
            d.port = Some(53);
            ctx.events.deny(d);
            return self.answer_locally(&msg, q, ResponseCode::NXDomain);
        }
        self.expire(now);
        if self.pending.len() >= self.max_pending {
            let mut d = Denial::now(DenialKind::Limit, "pending DNS queries".into());
            d.name = Some(name);
            ctx.events.deny(d);
            return reply_code(msg.id(), ResponseCode::ServFail);
        }
        let id = loop {
            let id = random_u16();
            if !self.pending.contains_key(&id) {
                break id;
            }
        };
        let mut up = Message::new();
        up.set_id(id)
            .set_message_type(MessageType::Query)
            .set_op_code(OpCode::Query)
            .set_recursion_desired(true)
            .add_query(q.clone());
        let mut edns = Edns::new();
        edns.set_max_payload(UDP_PAYLOAD);
        up.set_edns(edns);
        let Ok(bytes) = up.to_vec() else {
            return reply_code(msg.id(), ResponseCode::ServFail);
        };
        self.pending.insert(
            id,
            Pending {
                client,
                guest_id: msg.id(),
                recursion_desired: msg.recursion_desired(),
                guest_edns: msg.extensions().is_some(),
                query: q.clone(),
                name,
                sent: now,
            },
        );
        QueryOutcome::Forward(bytes)
    }

    /// An answer from upstream; returns where it goes and its bytes.
    pub fn on_answer(
        &mut self,
        pkt: &[u8],
        ctx: &Ctx<'_>,
        now: Instant,
    ) -> Option<(SocketAddr, Vec<u8>)> {
        let msg = Message::from_vec(pkt).ok()?;
        if msg.message_type() != MessageType::Response {
            return None;
        }
        // The answer must be for the question asked under that id, or it
        // is someone else's (or a spoofed) packet.
        let p = self.pending.get(&msg.id())?;
        if msg.queries() != [p.query.clone()] {
            return None;
        }
        let p = self.pending.remove(&msg.id())?;
        ctx.events.count(|c| c.dns_answered += 1);
        let mut kept = Vec::new();
        for r in msg.answers() {
            match r.data() {
                RData::A(a) => self.keep_address(IpAddr::V4(a.0), r, &p, ctx, now, &mut kept),
                RData::AAAA(a) => self.keep_address(IpAddr::V6(a.0), r, &p, ctx, now, &mut kept),
                _ if r.record_type() == RecordType::CNAME
                    || r.record_type() == p.query.query_type() =>
                {
                    kept.push(r.clone())
                }
                _ => {}
            }
        }
        let mut out = response(p.guest_id, p.recursion_desired, &p.query);
        out.set_response_code(msg.response_code());
        let limit = if p.guest_edns {
            usize::from(UDP_PAYLOAD)
        } else {
            CLASSIC_UDP
        };
        if p.guest_edns {
            let mut edns = Edns::new();
            edns.set_max_payload(UDP_PAYLOAD);
            out.set_edns(edns);
        }
        // Fit the answer in what the sandbox can take: drop records from
        // the end and set TC, as a server would.
        loop {
            out.insert_answers(kept.clone());
            let bytes = out.to_vec().ok()?;
            if bytes.len() <= limit || kept.is_empty() {
                return Some((p.client, bytes));
            }
            kept.pop();
            out.set_truncated(true);
        }
    }

    fn keep_address(
        &mut self,
        ip: IpAddr,
        r: &Record,
        p: &Pending,
        ctx: &Ctx<'_>,
        now: Instant,
        kept: &mut Vec<Record>,
    ) {
        if ctx.policy.answer_address_ok(ip, ctx.host) {
            self.table
                .insert(ip, &p.name, Duration::from_secs(r.ttl().into()), now);
            kept.push(r.clone());
        } else {
            let mut d = Denial::now(
                DenialKind::DnsAnswer,
                "answer in a non-public or host range".into(),
            );
            d.name = Some(p.name.clone());
            d.ip = Some(ip);
            ctx.events.deny(d);
        }
    }

    fn answer_locally(&self, msg: &Message, q: &Query, code: ResponseCode) -> QueryOutcome {
        let mut out = response(msg.id(), msg.recursion_desired(), q);
        out.set_response_code(code);
        match out.to_vec() {
            Ok(b) => QueryOutcome::Reply(b),
            Err(_) => QueryOutcome::Ignore,
        }
    }

    /// Forgets queries upstream never answered.
    pub fn expire(&mut self, now: Instant) {
        self.pending
            .retain(|_, p| now.duration_since(p.sent) < UPSTREAM_TIMEOUT);
    }
}

fn response(id: u16, rd: bool, q: &Query) -> Message {
    let mut out = Message::new();
    out.set_id(id)
        .set_message_type(MessageType::Response)
        .set_op_code(OpCode::Query)
        .set_recursion_desired(rd)
        .set_recursion_available(true)
        .add_query(q.clone());
    out
}

fn reply_code(id: u16, code: ResponseCode) -> QueryOutcome {
    match Message::error_msg(id, OpCode::Query, code).to_vec() {
        Ok(b) => QueryOutcome::Reply(b),
        Err(_) => QueryOutcome::Ignore,
    }
}

/// The query name in lower case without the trailing dot, if every label
/// is plain (a-z, 0-9, '-', '_'). A label holding a dot or any other byte
/// would make text matching ambiguous, so such names are refused.
fn plain_name(q: &Query) -> Option<String> {
    let mut out = String::new();
    for label in q.name().iter() {
        if label.is_empty()
            || !label
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_')
        {
            return None;
        }
        if !out.is_empty() {
            out.push('.');
        }
        out.push_str(&String::from_utf8_lossy(label).to_ascii_lowercase());
    }
    (!out.is_empty()).then_some(out)
}

/// Query ids must be unpredictable: whoever can guess one can answer for
/// the upstream.
fn random_u16() -> u16 {
    let mut b = [0u8; 2];
    // SAFETY: the buffer is valid for its length.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    assert_eq!(n, 2, "getrandom");
    u16::from_ne_bytes(b)
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};
    use std::str::FromStr;

    use hickory_proto::rr::rdata::{A, AAAA, CNAME, TXT};
    use hickory_proto::rr::Name;

    use super::*;

    const CLIENT: &str = "10.0.2.15:40000";

    fn query(id: u16, name: &str, t: RecordType) -> Vec<u8> {
        let mut m = Message::new();
        m.set_id(id)
            .set_message_type(MessageType::Query)
            .set_recursion_desired(true)
            .add_query(Query::query(Name::from_str(name).unwrap(), t));
        m.to_vec().unwrap()
    }

    /// What an upstream server would answer to `up`.
    fn upstream_answer(up: &[u8], code: ResponseCode, records: Vec<RData>) -> Vec<u8> {
        let q = Message::from_vec(up).unwrap();
        let mut m = Message::new();
        m.set_id(q.id())
            .set_message_type(MessageType::Response)
            .set_response_code(code)
            .add_query(q.queries()[0].clone());
        for rd in records {
            m.add_answer(Record::from_rdata(q.queries()[0].name().clone(), 30, rd));
        }
        m.to_vec().unwrap()
    }

    struct World {
        policy: Policy,
        host: HostAddrs,
        events: Events,
    }

    impl World {
        fn new(json: &str) -> World {
            World {
                policy: Policy::from_json(json).unwrap(),
                host: HostAddrs(vec!["198.51.100.1".parse().unwrap()]),
                events: Events::new(64),
            }
        }
        fn ctx(&self) -> Ctx<'_> {
            Ctx {
                policy: &self.policy,
                host: &self.host,
                events: &self.events,
            }
        }
    }

    const POLICY: &str = r#"{"rules":[{"action":"allow","domain":"api.test"},{"action":"allow","domain":"*.pkg.test","ports":["443"]},{"action":"allow","cidr":"10.77.0.0/24"}]}"#;

    #[test]
    fn denied_names_get_nxdomain_without_an_upstream_query() {
        let w = World::new(POLICY);
        let mut f = DnsFilter::new(8, 64);
        let now = Instant::now();
        for name in [
            "evil.test.",
            "pkg.test.",
            "aGVsbG8gd29ybGQ.x7f3.exfil.test.",
            "api.test.evil.test.",
        ] {
            let QueryOutcome::Reply(r) = f.on_query(
                &query(7, name, RecordType::A),
                CLIENT.parse().unwrap(),
                &w.ctx(),
                now,
            ) else {
                panic!("{name} must be answered locally");
            };
            let r = Message::from_vec(&r).unwrap();
            assert_eq!((r.id(), r.response_code()), (7, ResponseCode::NXDomain));
            assert!(r.queries()[0].name().to_ascii().eq_ignore_ascii_case(name));
        }
        assert_eq!(f.pending(), 0);
        let ev = w.events.drain();
        assert_eq!(ev.len(), 4);
        assert!(ev.iter().all(|d| d.kind == DenialKind::Dns));
        assert_eq!(
            ev[2].name.as_deref(),
            Some("agvsbg8gd29ybgq.x7f3.exfil.test")
        );
        assert_eq!(ev[0].rule, "default deny");
    }

    #[test]
    fn names_with_odd_labels_are_refused() {
        let w = World::new(POLICY);
        let mut f = DnsFilter::new(8, 64);
        // One label "x.api" under "test": as text it would read x.api.test.
        let name = Name::from_labels(vec![&b"x.api"[..], &b"test"[..]]).unwrap();
        let mut m = Message::new();
        m.set_id(9)
            .set_message_type(MessageType::Query)
            .add_query(Query::query(name, RecordType::A));
        let out = f.on_query(
            &m.to_vec().unwrap(),
            CLIENT.parse().unwrap(),
            &w.ctx(),
            Instant::now(),
        );
        let QueryOutcome::Reply(r) = out else {
            panic!()
        };
        assert_eq!(
            Message::from_vec(&r).unwrap().response_code(),
            ResponseCode::NXDomain
        );
    }

    #[test]
    fn allowed_names_go_upstream_as_a_fresh_query_and_fill_the_table() {
        let w = World::new(POLICY);
        let mut f = DnsFilter::new(8, 64);
        let now = Instant::now();
        let client: SocketAddr = CLIENT.parse().unwrap();
        let QueryOutcome::Forward(up) = f.on_query(
            &query(1234, "Files.PKG.test.", RecordType::A),
            client,
            &w.ctx(),
            now,
        ) else {
            panic!("an allowed name goes upstream");
        };
        let upm = Message::from_vec(&up).unwrap();
        assert_eq!(upm.queries().len(), 1);
        assert_eq!(upm.additionals().len(), 0);
        let answer = upstream_answer(
            &up,
            ResponseCode::NoError,
            vec![
                RData::CNAME(CNAME(Name::from_str("cdn.elsewhere.").unwrap())),
                RData::A(A(Ipv4Addr::new(203, 0, 113, 5))),
                RData::A(A(Ipv4Addr::new(127, 0, 0, 1))),
                RData::A(A(Ipv4Addr::new(169, 254, 169, 254))),
                RData::A(A(Ipv4Addr::new(198, 51, 100, 1))),
                RData::A(A(Ipv4Addr::new(10, 77, 0, 9))),
                RData::AAAA(AAAA(Ipv6Addr::LOCALHOST)),
                RData::TXT(TXT::new(vec!["smuggled".into()])),
            ],
        );
        // A response under another id, or for another question, is not it.
        let mut wrong = Message::from_vec(&answer).unwrap();
        wrong.set_id(upm.id().wrapping_add(1));
        assert!(f
            .on_answer(&wrong.to_vec().unwrap(), &w.ctx(), now)
            .is_none());
        let other = upstream_answer(
            &query(upm.id(), "api.test.", RecordType::A),
            ResponseCode::NoError,
            vec![],
        );
        assert!(f.on_answer(&other, &w.ctx(), now).is_none());

        let (to, bytes) = f.on_answer(&answer, &w.ctx(), now).unwrap();
        assert_eq!(to, client);
        let m = Message::from_vec(&bytes).unwrap();
        assert_eq!(m.id(), 1234);
        let addrs: Vec<IpAddr> = m
            .answers()
            .iter()
            .filter_map(|r| match r.data() {
                RData::A(a) => Some(IpAddr::V4(a.0)),
                RData::AAAA(a) => Some(IpAddr::V6(a.0)),
                _ => None,
            })
            .collect();
        assert_eq!(
            addrs,
            [
                "203.0.113.5".parse::<IpAddr>().unwrap(),
                "10.77.0.9".parse().unwrap()
            ]
        );
        assert!(m
            .answers()
            .iter()
            .any(|r| r.record_type() == RecordType::CNAME));
        assert!(!m
            .answers()
            .iter()
            .any(|r| r.record_type() == RecordType::TXT));
        assert_eq!(
            f.table().names("203.0.113.5".parse().unwrap(), now),
            ["files.pkg.test"]
        );
        assert!(f
            .table()
            .names("127.0.0.1".parse().unwrap(), now)
            .is_empty());
        let refused = w.events.drain();
        assert_eq!(refused.len(), 4, "{refused:?}");
        assert!(refused.iter().all(|d| d.kind == DenialKind::DnsAnswer));
        // Answered once: a replay finds nothing pending.
        assert!(f.on_answer(&answer, &w.ctx(), now).is_none());
    }

    #[test]
    fn pending_queries_are_bounded_and_expire() {
        let w = World::new(POLICY);
        let mut f = DnsFilter::new(4, 64);
        let now = Instant::now();
        let c: SocketAddr = CLIENT.parse().unwrap();
        for i in 0..4 {
            assert!(matches!(
                f.on_query(&query(i, "api.test.", RecordType::A), c, &w.ctx(), now),
                QueryOutcome::Forward(_)
            ));
        }
        let QueryOutcome::Reply(r) =
            f.on_query(&query(9, "api.test.", RecordType::A), c, &w.ctx(), now)
        else {
            panic!("over the bound is answered SERVFAIL")
        };
        assert_eq!(
            Message::from_vec(&r).unwrap().response_code(),
            ResponseCode::ServFail
        );
        let later = now + UPSTREAM_TIMEOUT;
        assert!(matches!(
            f.on_query(&query(10, "api.test.", RecordType::A), c, &w.ctx(), later),
            QueryOutcome::Forward(_)
        ));
        assert_eq!(f.pending(), 1);
    }

    #[test]
    fn garbage_is_formerr_or_ignored() {
        let w = World::new(POLICY);
        let mut f = DnsFilter::new(4, 64);
        let c: SocketAddr = CLIENT.parse().unwrap();
        assert!(matches!(
            f.on_query(&[1], c, &w.ctx(), Instant::now()),
            QueryOutcome::Ignore
        ));
        let QueryOutcome::Reply(r) =
            f.on_query(&[0, 5, 0xff, 0xff, 0xff], c, &w.ctx(), Instant::now())
        else {
            panic!()
        };
        assert_eq!(Message::from_vec(&r).unwrap().id(), 5);
    }

    #[test]
    fn public_internet_resolves_any_name_but_still_filters_answers() {
        let w = World::new(r#"{"rules":[{"action":"allow","preset":"public-internet"}]}"#);
        let mut f = DnsFilter::new(4, 64);
        let now = Instant::now();
        let c: SocketAddr = CLIENT.parse().unwrap();
        let QueryOutcome::Forward(up) =
            f.on_query(&query(3, "any.example.", RecordType::A), c, &w.ctx(), now)
        else {
            panic!()
        };
        let a = upstream_answer(
            &up,
            ResponseCode::NoError,
            vec![RData::A(A(Ipv4Addr::new(10, 0, 0, 1)))],
        );
        let (_, bytes) = f.on_answer(&a, &w.ctx(), now).unwrap();
        assert!(Message::from_vec(&bytes).unwrap().answers().is_empty());
    }
}
