//! The egress policy: rules by domain, address range and port, and the
//! one function that decides a destination against them.
//!
//! Default deny. A rule allows or denies a destination (an exact domain, a
//! wildcard suffix, a CIDR, or a preset), optionally only on some ports and
//! one protocol. Any matching deny wins over every allow, so the order of
//! rules never matters: a reviewer can read a policy as two sets.

use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::ranges;

/// Bounds on what a caller may hand in: a policy crosses the C ABI as JSON.
pub const MAX_RULES: usize = 1024;
pub const MAX_PORT_RANGES: usize = 64;
/// RFC 1035: 253 characters in text form, 63 per label.
pub const MAX_NAME: usize = 253;
const MAX_LABEL: usize = 63;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Allow,
    Deny,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
}

/// Named sets of destinations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Preset {
    /// Every address except the host's own and the non-public ranges
    /// (`ranges::NON_PUBLIC`): what plain `NetworkOutbound` gives.
    PublicInternet,
    /// Exactly the non-public ranges; meant for deny rules.
    NonPublic,
}

/// A destination a rule names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dest {
    /// A lower-case name without trailing dot.
    Domain(String),
    /// `*.suffix`: every name strictly below `suffix` (not `suffix` itself).
    WildcardSuffix(String),
    Cidr(IpNet),
    Preset(Preset),
}

/// Inclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub action: Action,
    pub dest: Dest,
    /// Empty: every port.
    pub ports: Vec<PortRange>,
    /// None: both.
    pub protocol: Option<Protocol>,
}

/// A validated policy. Build it with `Policy::from_json` or `Policy::new`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    rules: Vec<Rule>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PolicyError {
    #[error("policy JSON: {0}")]
    Json(String),
    #[error("rule {0}: {1}")]
    Rule(usize, String),
    #[error("a policy holds at most {MAX_RULES} rules")]
    TooManyRules,
}

/// What a connection or datagram is going to.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    pub ip: IpAddr,
    /// The names the sandbox resolved to `ip` (through Lockbox's resolver)
    /// or, for TLS, the name in the ClientHello.
    pub names: &'a [&'a str],
    pub port: u16,
    pub protocol: Protocol,
}

/// The outcome, with the rule that decided it (index into the policy), or
/// None when nothing matched and the default denied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    pub allowed: bool,
    pub rule: Option<usize>,
}

impl Verdict {
    const DEFAULT_DENY: Verdict = Verdict {
        allowed: false,
        rule: None,
    };
}

/// Addresses the host answers on; a sandbox reaches none of them unless a
/// CIDR rule names them.
#[derive(Debug, Clone, Default)]
pub struct HostAddrs(pub Vec<IpAddr>);

impl HostAddrs {
    fn contains(&self, ip: IpAddr) -> bool {
        self.0.contains(&ranges::canonical(ip))
    }
}

impl Policy {
    pub fn new(rules: Vec<Rule>) -> Result<Policy, PolicyError> {
        if rules.len() > MAX_RULES {
            return Err(PolicyError::TooManyRules);
        }
        for (i, r) in rules.iter().enumerate() {
            validate_rule(r).map_err(|e| PolicyError::Rule(i, e))?;
        }
        Ok(Policy { rules })
    }

    /// The preset behind plain `NetworkOutbound`.
    pub fn public_internet() -> Policy {
        Policy {
            rules: vec![Rule {
                action: Action::Allow,
                dest: Dest::Preset(Preset::PublicInternet),
                ports: vec![],
                protocol: None,
            }],
        }
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    pub fn from_json(text: &str) -> Result<Policy, PolicyError> {
        let spec: PolicySpec =
            serde_json::from_str(text).map_err(|e| PolicyError::Json(e.to_string()))?;
        if spec.rules.len() > MAX_RULES {
            return Err(PolicyError::TooManyRules);
        }
        let rules = spec
            .rules
            .into_iter()
            .enumerate()
            .map(|(i, r)| r.into_rule().map_err(|e| PolicyError::Rule(i, e)))
            .collect::<Result<Vec<_>, _>>()?;
        Policy::new(rules)
    }

    pub fn to_json(&self) -> String {
        let spec = PolicySpec {
            rules: self.rules.iter().map(RuleSpec::from_rule).collect(),
        };
        serde_json::to_string(&spec).expect("a policy always serialises")
    }

    /// Decides a connection or datagram. Deny wins: a deny rule that
    /// matches the address or any of the names refuses, whatever allows.
    pub fn decide(&self, t: &Target<'_>, host: &HostAddrs) -> Verdict {
        let ip = ranges::canonical(t.ip);
        let mut allow = None;
        for (i, r) in self.rules.iter().enumerate() {
            if !r.covers(t.port, t.protocol) {
                continue;
            }
            let hit = match &r.dest {
                // A /0 is "everywhere out there", not the host's own
                // loopback and services: the forwarder's sockets live in the
                // host's network namespace, so non-public and host addresses
                // need a rule that names their range.
                Dest::Cidr(net) if net.prefix_len() == 0 && r.action == Action::Allow => {
                    net.contains(&ip) && preset_contains(Preset::PublicInternet, ip, host)
                }
                Dest::Cidr(net) => net.contains(&ip),
                Dest::Preset(p) => preset_contains(*p, ip, host),
                // A name vouches for an address only where the server name
                // is checked (TLS over TCP). UDP has no such check (QUIC to a
                // shared CDN address would reach any site it hosts), so a
                // name allows UDP only when its rule says udp explicitly.
                Dest::Domain(_) | Dest::WildcardSuffix(_)
                    if r.action == Action::Allow
                        && t.protocol == Protocol::Udp
                        && r.protocol != Some(Protocol::Udp) =>
                {
                    false
                }
                Dest::Domain(_) | Dest::WildcardSuffix(_) => t.names.iter().any(|n| r.names(n)),
            };
            if !hit {
                continue;
            }
            match r.action {
                Action::Deny => {
                    return Verdict {
                        allowed: false,
                        rule: Some(i),
                    }
                }
                Action::Allow => allow = allow.or(Some(i)),
            }
        }
        match allow {
            Some(i) => Verdict {
                allowed: true,
                rule: Some(i),
            },
            None => Verdict::DEFAULT_DENY,
        }
    }

    /// May the sandbox resolve `name` at all? Only if some rule allows the
    /// name (on any port) or the policy allows every public address (then
    /// names carry no extra secret: the sandbox may talk to anyone). A deny
    /// rule for the name on every port refuses it. Everything else gets
    /// NXDOMAIN without leaving the host, which is what stops tunnelling
    /// through denied zones.
    pub fn may_resolve(&self, name: &str) -> Verdict {
        let mut allow = None;
        for (i, r) in self.rules.iter().enumerate() {
            let named = r.names(name);
            match r.action {
                Action::Deny if named && r.ports.is_empty() && r.protocol.is_none() => {
                    return Verdict {
                        allowed: false,
                        rule: Some(i),
                    }
                }
                Action::Allow if named || r.allows_any_public() => allow = allow.or(Some(i)),
                _ => {}
            }
        }
        match allow {
            Some(i) => Verdict {
                allowed: true,
                rule: Some(i),
            },
            None => Verdict::DEFAULT_DENY,
        }
    }

    /// May a DNS answer point the sandbox at `ip`? Non-public and host
    /// addresses only when a CIDR rule names them explicitly (a rebinding
    /// attack makes an allowed name resolve to an internal address).
    pub fn answer_address_ok(&self, ip: IpAddr, host: &HostAddrs) -> bool {
        let ip = ranges::canonical(ip);
        if !ranges::is_non_public(ip) && !host.contains(ip) {
            return true;
        }
        // A /0 means the public addresses (as in `decide`), so it does not
        // name these: with it every name resolves, and an answer of
        // 169.254.169.254 or the host's split-horizon 10.x would reach the
        // sandbox and the name table (attack review s5, S5-NET-5).
        self.rules.iter().any(|r| {
            r.action == Action::Allow
                && matches!(&r.dest, Dest::Cidr(n) if n.prefix_len() > 0 && n.contains(&ip))
        })
    }

    /// A description of rule `i` for events ("deny domain *.example.org").
    pub fn describe(&self, rule: Option<usize>) -> String {
        match rule.and_then(|i| self.rules.get(i)) {
            None => "default deny".into(),
            Some(r) => {
                let spec = RuleSpec::from_rule(r);
                serde_json::to_string(&spec).unwrap_or_default()
            }
        }
    }
}

impl Rule {
    fn covers(&self, port: u16, protocol: Protocol) -> bool {
        !matches!(self.protocol, Some(p) if p != protocol)
            && (self.ports.is_empty()
                || self
                    .ports
                    .iter()
                    .any(|r| (r.first..=r.last).contains(&port)))
    }

    fn names(&self, name: &str) -> bool {
        match &self.dest {
            Dest::Domain(d) => eq_name(d, name),
            Dest::WildcardSuffix(s) => below(name, s),
            _ => false,
        }
    }

    fn allows_any_public(&self) -> bool {
        match &self.dest {
            Dest::Preset(Preset::PublicInternet) => true,
            Dest::Cidr(n) => n.prefix_len() == 0,
            _ => false,
        }
    }
}

fn preset_contains(p: Preset, ip: IpAddr, host: &HostAddrs) -> bool {
    match p {
        Preset::PublicInternet => !ranges::is_non_public(ip) && !host.contains(ip),
        Preset::NonPublic => ranges::is_non_public(ip) || host.contains(ip),
    }
}

/// DNS names compare case-insensitively; a trailing dot is the root.
fn eq_name(rule: &str, name: &str) -> bool {
    name.trim_end_matches('.').eq_ignore_ascii_case(rule)
}

/// `name` is strictly below `suffix` at a label boundary.
pub(crate) fn below(name: &str, suffix: &str) -> bool {
    let name = name.trim_end_matches('.');
    if name.len() <= suffix.len() + 1 {
        return false;
    }
    let (head, tail) = name.split_at(name.len() - suffix.len());
    head.ends_with('.') && tail.eq_ignore_ascii_case(suffix)
}

fn validate_rule(r: &Rule) -> Result<(), String> {
    match &r.dest {
        Dest::Domain(d) | Dest::WildcardSuffix(d) => validate_name(d)?,
        Dest::Cidr(_) | Dest::Preset(_) => {}
    }
    if r.ports.len() > MAX_PORT_RANGES {
        return Err(format!("at most {MAX_PORT_RANGES} port ranges"));
    }
    for p in &r.ports {
        if p.first > p.last || p.first == 0 {
            return Err(format!("bad port range {}-{}", p.first, p.last));
        }
    }
    Ok(())
}

pub(crate) fn validate_name(d: &str) -> Result<(), String> {
    if d.is_empty() || d.len() > MAX_NAME {
        return Err(format!("domain must be 1..={MAX_NAME} characters"));
    }
    for label in d.split('.') {
        let ok = !label.is_empty()
            && label.len() <= MAX_LABEL
            && label
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
        if !ok {
            return Err(format!("bad domain {d:?} (lower-case labels of a-z 0-9 - _, no empty label; a wildcard is only a leading \"*.\")"));
        }
    }
    Ok(())
}

// The JSON form: {"rules":[{"action":"allow","domain":"*.example.org",
// "ports":["443","8000-8100"],"protocol":"tcp"}, {"action":"deny",
// "cidr":"10.0.0.0/8"}, {"action":"allow","preset":"public-internet"}]}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicySpec {
    rules: Vec<RuleSpec>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleSpec {
    action: Action,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    domain: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cidr: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    preset: Option<Preset>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    ports: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    protocol: Option<Protocol>,
}

impl RuleSpec {
    fn into_rule(self) -> Result<Rule, String> {
        let dest = match (self.domain, self.cidr, self.preset) {
            (Some(d), None, None) => {
                let d = d.trim_end_matches('.').to_ascii_lowercase();
                match d.strip_prefix("*.") {
                    Some(s) => Dest::WildcardSuffix(s.to_string()),
                    None => Dest::Domain(d),
                }
            }
            (None, Some(c), None) => Dest::Cidr(parse_cidr(&c)?),
            (None, None, Some(p)) => Dest::Preset(p),
            _ => return Err("exactly one of domain, cidr, preset".into()),
        };
        if self.ports.len() > MAX_PORT_RANGES {
            return Err(format!("at most {MAX_PORT_RANGES} port ranges"));
        }
        let ports = self
            .ports
            .iter()
            .map(|p| parse_ports(p))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Rule {
            action: self.action,
            dest,
            ports,
            protocol: self.protocol,
        })
    }

    fn from_rule(r: &Rule) -> RuleSpec {
        let (mut domain, mut cidr, mut preset) = (None, None, None);
        match &r.dest {
            Dest::Domain(d) => domain = Some(d.clone()),
            Dest::WildcardSuffix(s) => domain = Some(format!("*.{s}")),
            Dest::Cidr(n) => cidr = Some(n.to_string()),
            Dest::Preset(p) => preset = Some(*p),
        }
        RuleSpec {
            action: r.action,
            domain,
            cidr,
            preset,
            ports: r
                .ports
                .iter()
                .map(|p| {
                    if p.first == p.last {
                        p.first.to_string()
                    } else {
                        format!("{}-{}", p.first, p.last)
                    }
                })
                .collect(),
            protocol: r.protocol,
        }
    }
}

/// "10.0.0.0/8", "2001:db8::/32", or a bare address (a /32 or /128).
fn parse_cidr(s: &str) -> Result<IpNet, String> {
    if let Ok(n) = s.parse::<IpNet>() {
        return Ok(n.trunc());
    }
    s.parse::<IpAddr>()
        .map(IpNet::from)
        .map_err(|_| format!("bad cidr {s:?}"))
}

fn parse_ports(s: &str) -> Result<PortRange, String> {
    let bad = || format!("bad port range {s:?}");
    let (a, b) = s.split_once('-').unwrap_or((s, s));
    let first = a.trim().parse::<u16>().map_err(|_| bad())?;
    let last = b.trim().parse::<u16>().map_err(|_| bad())?;
    Ok(PortRange { first, last })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pol(json: &str) -> Policy {
        Policy::from_json(json).unwrap()
    }

    fn tcp<'a>(ip: &str, names: &'a [&'a str], port: u16) -> Target<'a> {
        Target {
            ip: ip.parse().unwrap(),
            names,
            port,
            protocol: Protocol::Tcp,
        }
    }

    fn allowed(p: &Policy, t: Target<'_>) -> bool {
        p.decide(&t, &HostAddrs::default()).allowed
    }

    #[test]
    fn a_name_allows_udp_only_when_its_rule_says_udp() {
        let udp = |names: &'static [&'static str]| Target {
            ip: "1.2.3.4".parse().unwrap(),
            names,
            port: 443,
            protocol: Protocol::Udp,
        };
        // Control: the same name and port over TCP (where SNI is checked).
        let any = pol(r#"{"rules":[{"action":"allow","domain":"pypi.org","ports":["443"]}]}"#);
        assert!(allowed(&any, tcp("1.2.3.4", &["pypi.org"], 443)));
        assert!(!allowed(&any, udp(&["pypi.org"])));
        let explicit = pol(
            r#"{"rules":[{"action":"allow","domain":"pypi.org","ports":["443"],"protocol":"udp"}]}"#,
        );
        assert!(allowed(&explicit, udp(&["pypi.org"])));
        // A deny by name still refuses UDP.
        let deny = pol(
            r#"{"rules":[{"action":"allow","cidr":"1.2.3.0/24"},{"action":"deny","domain":"pypi.org"}]}"#,
        );
        assert!(!allowed(&deny, udp(&["pypi.org"])));
        assert!(allowed(&deny, udp(&[])));
    }

    #[test]
    fn an_allow_of_everything_is_not_the_hosts_loopback() {
        let p = pol(
            r#"{"rules":[{"action":"allow","cidr":"0.0.0.0/0"},{"action":"allow","cidr":"::/0"}]}"#,
        );
        assert!(allowed(&p, tcp("93.184.216.34", &[], 80)));
        for inside in ["127.0.0.1", "10.1.2.3", "169.254.169.254", "::1", "fd00::1"] {
            assert!(!allowed(&p, tcp(inside, &[], 80)), "{inside}");
        }
        // Control: naming the range opens it.
        let named = pol(r#"{"rules":[{"action":"allow","cidr":"127.0.0.0/8"}]}"#);
        assert!(allowed(&named, tcp("127.0.0.1", &[], 80)));
    }

    /// S5-NET-5: the /0 allow kept DNS answers pointing inside (every name
    /// resolves with it, so any zone could answer 169.254.169.254).
    #[test]
    fn an_allow_of_everything_does_not_keep_inside_answers() {
        let host = HostAddrs(vec!["198.51.100.1".parse().unwrap()]);
        let p = pol(
            r#"{"rules":[{"action":"allow","cidr":"0.0.0.0/0"},{"action":"allow","cidr":"::/0"}]}"#,
        );
        for inside in [
            "127.0.0.1",
            "10.1.2.3",
            "169.254.169.254",
            "198.51.100.1",
            "::1",
            "fd00:ec2::254",
            "::ffff:10.1.2.3",
        ] {
            assert!(
                !p.answer_address_ok(inside.parse().unwrap(), &host),
                "{inside}"
            );
        }
        assert!(p.answer_address_ok("93.184.216.34".parse().unwrap(), &host));
        // Control: a rule naming the range keeps its answers.
        let named = pol(
            r#"{"rules":[{"action":"allow","cidr":"0.0.0.0/0"},{"action":"allow","cidr":"10.0.0.0/8"}]}"#,
        );
        assert!(named.answer_address_ok("10.1.2.3".parse().unwrap(), &host));
        assert!(!named.answer_address_ok("169.254.169.254".parse().unwrap(), &host));
    }

    #[test]
    fn default_is_deny() {
        let p = pol(r#"{"rules":[]}"#);
        assert!(!allowed(&p, tcp("93.184.216.34", &["example.org"], 443)));
        assert_eq!(p.may_resolve("example.org"), Verdict::DEFAULT_DENY);
    }

    #[test]
    fn exact_domain_matches_only_itself() {
        let p = pol(r#"{"rules":[{"action":"allow","domain":"Example.ORG."}]}"#);
        assert!(allowed(&p, tcp("1.2.3.4", &["example.org"], 443)));
        assert!(allowed(&p, tcp("1.2.3.4", &["EXAMPLE.org."], 443)));
        assert!(!allowed(&p, tcp("1.2.3.4", &["www.example.org"], 443)));
        assert!(!allowed(&p, tcp("1.2.3.4", &["badexample.org"], 443)));
        assert!(!allowed(&p, tcp("1.2.3.4", &[], 443)));
        assert!(p.may_resolve("example.org").allowed);
        assert!(!p.may_resolve("x.example.org").allowed);
    }

    #[test]
    fn wildcard_matches_strictly_below_at_a_label_boundary() {
        let p = pol(r#"{"rules":[{"action":"allow","domain":"*.pythonhosted.org"}]}"#);
        assert!(allowed(
            &p,
            tcp("1.2.3.4", &["files.pythonhosted.org"], 443)
        ));
        assert!(allowed(&p, tcp("1.2.3.4", &["a.b.pythonhosted.org"], 443)));
        assert!(!allowed(&p, tcp("1.2.3.4", &["pythonhosted.org"], 443)));
        assert!(!allowed(&p, tcp("1.2.3.4", &["evilpythonhosted.org"], 443)));
        assert!(!allowed(
            &p,
            tcp("1.2.3.4", &["pythonhosted.org.evil.com"], 443)
        ));
        assert!(!allowed(&p, tcp("1.2.3.4", &[".pythonhosted.org"], 443)));
    }

    #[test]
    fn cidr_v4_v6_and_bare_addresses() {
        let p = pol(r#"{"rules":[{"action":"allow","cidr":"198.51.100.0/24"},
                {"action":"allow","cidr":"2001:db8::/32"},
                {"action":"allow","cidr":"203.0.113.7"}]}"#);
        assert!(allowed(&p, tcp("198.51.100.200", &[], 80)));
        assert!(!allowed(&p, tcp("198.51.101.1", &[], 80)));
        assert!(allowed(&p, tcp("2001:db8:1::5", &[], 80)));
        assert!(!allowed(&p, tcp("2001:db9::5", &[], 80)));
        assert!(allowed(&p, tcp("203.0.113.7", &[], 80)));
        assert!(!allowed(&p, tcp("203.0.113.8", &[], 80)));
        // An IPv4-mapped IPv6 address is the IPv4 address.
        assert!(allowed(&p, tcp("::ffff:198.51.100.9", &[], 80)));
        // Host bits in a CIDR are ignored, not an error.
        let q = pol(r#"{"rules":[{"action":"allow","cidr":"198.51.100.77/24"}]}"#);
        assert!(allowed(&q, tcp("198.51.100.1", &[], 80)));
    }

    #[test]
    fn ports_ranges_and_protocols() {
        let p = pol(
            r#"{"rules":[{"action":"allow","domain":"api.test","ports":["443","8000-8100"],"protocol":"tcp"}]}"#,
        );
        let n = ["api.test"];
        assert!(allowed(&p, tcp("1.2.3.4", &n, 443)));
        assert!(allowed(&p, tcp("1.2.3.4", &n, 8000)));
        assert!(allowed(&p, tcp("1.2.3.4", &n, 8100)));
        assert!(!allowed(&p, tcp("1.2.3.4", &n, 8101)));
        assert!(!allowed(&p, tcp("1.2.3.4", &n, 80)));
        let udp = Target {
            protocol: Protocol::Udp,
            ..tcp("1.2.3.4", &n, 443)
        };
        assert!(!allowed(&p, udp));
        // A port-limited rule still lets the name resolve.
        assert!(p.may_resolve("api.test").allowed);
    }

    #[test]
    fn deny_wins_whatever_the_order() {
        for json in [
            r#"{"rules":[{"action":"allow","domain":"*.example.org"},{"action":"deny","domain":"bad.example.org"}]}"#,
            r#"{"rules":[{"action":"deny","domain":"bad.example.org"},{"action":"allow","domain":"*.example.org"}]}"#,
        ] {
            let p = pol(json);
            assert!(allowed(&p, tcp("1.2.3.4", &["good.example.org"], 443)));
            let v = p.decide(
                &tcp("1.2.3.4", &["bad.example.org"], 443),
                &HostAddrs::default(),
            );
            assert!(!v.allowed);
            assert!(p.describe(v.rule).contains("bad.example.org"));
            assert!(!p.may_resolve("bad.example.org").allowed);
            assert!(p.may_resolve("good.example.org").allowed);
        }
        // A deny by address beats an allow by name.
        let p = pol(
            r#"{"rules":[{"action":"allow","domain":"api.test"},{"action":"deny","cidr":"10.0.0.0/8"}]}"#,
        );
        assert!(!allowed(&p, tcp("10.1.1.1", &["api.test"], 443)));
        // A deny on one port leaves the others.
        let p = pol(
            r#"{"rules":[{"action":"allow","domain":"api.test"},{"action":"deny","domain":"api.test","ports":["25"]}]}"#,
        );
        assert!(allowed(&p, tcp("1.2.3.4", &["api.test"], 443)));
        assert!(!allowed(&p, tcp("1.2.3.4", &["api.test"], 25)));
        assert!(p.may_resolve("api.test").allowed);
    }

    #[test]
    fn public_internet_excludes_every_non_public_range_and_the_host() {
        let p = Policy::public_internet();
        let host = HostAddrs(vec!["203.0.113.10".parse().unwrap()]);
        let ok = |ip: &str| p.decide(&tcp(ip, &[], 443), &host).allowed;
        for ip in ["1.1.1.1", "93.184.216.34", "2606:4700::1111"] {
            assert!(ok(ip), "{ip} should be public");
        }
        for ip in [
            "203.0.113.10",
            "127.0.0.1",
            "10.0.0.1",
            "172.16.5.4",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "192.0.0.1",
            "198.18.0.1",
            "::1",
            "::",
            "fe80::1",
            "fc00::1",
            "fd00:ec2::254",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "64:ff9b::a00:1",
            "2002:a00:1::",
        ] {
            assert!(!ok(ip), "{ip} must not be public");
        }
        assert!(p.may_resolve("anything.example").allowed);
        // Explicitly allowing one internal address opens that one only.
        let mut rules = p.rules().to_vec();
        rules.push(Rule {
            action: Action::Allow,
            dest: Dest::Cidr("10.9.9.9/32".parse().unwrap()),
            ports: vec![],
            protocol: None,
        });
        let q = Policy::new(rules).unwrap();
        assert!(q.decide(&tcp("10.9.9.9", &[], 443), &host).allowed);
        assert!(!q.decide(&tcp("10.9.9.8", &[], 443), &host).allowed);
    }

    #[test]
    fn answers_pointing_inside_are_refused_unless_a_cidr_allows_them() {
        let p = pol(
            r#"{"rules":[{"action":"allow","domain":"api.test"},{"action":"allow","cidr":"10.77.0.0/24"}]}"#,
        );
        let host = HostAddrs(vec!["198.51.100.1".parse().unwrap()]);
        assert!(p.answer_address_ok("93.184.216.34".parse().unwrap(), &host));
        assert!(p.answer_address_ok("10.77.0.5".parse().unwrap(), &host));
        for ip in [
            "127.0.0.1",
            "10.0.0.1",
            "169.254.169.254",
            "::1",
            "198.51.100.1",
        ] {
            assert!(!p.answer_address_ok(ip.parse().unwrap(), &host), "{ip}");
        }
    }

    #[test]
    fn json_round_trips_and_rejects_bad_input() {
        let json = r#"{"rules":[{"action":"allow","domain":"*.example.org","ports":["443","8000-8100"],"protocol":"tcp"},{"action":"deny","cidr":"10.0.0.0/8"},{"action":"allow","preset":"public-internet"}]}"#;
        let p = pol(json);
        assert_eq!(p.to_json(), json);
        assert_eq!(Policy::from_json(&p.to_json()).unwrap(), p);
        for bad in [
            r#"{"rules":[{"action":"allow"}]}"#,
            r#"{"rules":[{"action":"allow","domain":"a.b","cidr":"1.2.3.4"}]}"#,
            r#"{"rules":[{"action":"allow","cidr":"1.2.3.4/33"}]}"#,
            r#"{"rules":[{"action":"allow","domain":"a..b"}]}"#,
            r#"{"rules":[{"action":"allow","domain":"*.*.b"}]}"#,
            r#"{"rules":[{"action":"allow","domain":"a b"}]}"#,
            r#"{"rules":[{"action":"allow","domain":"a.b","ports":["9-3"]}]}"#,
            r#"{"rules":[{"action":"allow","domain":"a.b","ports":["0"]}]}"#,
            r#"{"rules":[{"action":"allow","domain":"a.b","ports":["70000"]}]}"#,
            r#"{"rules":[{"action":"allow","domain":"a.b","protocol":"icmp"}]}"#,
            r#"{"rules":[{"action":"maybe","domain":"a.b"}]}"#,
            r#"{"rules":[{"action":"allow","domain":"a.b","extra":1}]}"#,
        ] {
            assert!(Policy::from_json(bad).is_err(), "{bad} should be refused");
        }
        let long = format!(
            r#"{{"rules":[{{"action":"allow","domain":"{}.b"}}]}}"#,
            "a".repeat(64)
        );
        assert!(Policy::from_json(&long).is_err());
        let many = format!(
            r#"{{"rules":[{}]}}"#,
            vec![r#"{"action":"allow","domain":"a.b"}"#; MAX_RULES + 1].join(",")
        );
        assert_eq!(Policy::from_json(&many), Err(PolicyError::TooManyRules));
    }
}
