//! A private network for the egress tests, made of namespaces this test
//! creates and removes: every packet the tests cause stays in them.
//!
//! ```text
//!  sandbox ns            outside ns ("the host")          hosts ns ("internet")
//!  tap0 10.0.2.100  ==>  forwarder thread   veth 198.51.100.1 <-> 198.51.100.10-12, .53
//!  (fd held by the       (smoltcp + host    10.77.0.1              10.77.0.10
//!   forwarder)            sockets)
//! ```
//!
//! The hosts namespace runs the test hosts: TCP servers that answer with
//! their own name, UDP echoes, and a DNS server for the test names that
//! logs every name it is asked.

#![allow(dead_code)]

pub mod https;

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{FromRawFd, OwnedFd};
use std::process::Command;
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, Query, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{Name, RData, Record, RecordType};
use lockbox_net::forwarder::{Config, Forwarder, Handle, Limits};
use lockbox_net::intercept::Interception;
use lockbox_net::policy::{HostAddrs, Policy};

pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);
pub const DNS_SERVER: &str = "198.51.100.53:53";

static SEQ: AtomicUsize = AtomicUsize::new(0);

/// The namespaces, the test hosts and the sandbox's tap device.
pub struct Topology {
    pub sandbox: String,
    pub outside: String,
    hosts: String,
    /// Every name the test DNS server was asked, in order.
    pub dns_log: Arc<Mutex<Vec<String>>>,
    /// Every request head the HTTPS test hosts received.
    pub https_log: https::HttpsLog,
}

/// A topology with the forwarder running in this process, on a thread in
/// the outside namespace.
pub struct Lab {
    pub handle: Handle,
    forwarder: Option<thread::JoinHandle<()>>,
    pub dns_log: Arc<Mutex<Vec<String>>>,
    pub sandbox: String,
    pub net: Topology,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `f` on a fresh thread inside network namespace `ns`.
pub fn in_ns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let ns = ns.to_string();
    thread::spawn(move || {
        enter(&ns);
        f()
    })
    .join()
    .expect("thread in namespace")
}

fn enter(ns: &str) {
    let f = File::open(format!("/var/run/netns/{ns}")).expect("open netns");
    nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
}

fn spawn_in(ns: &str, f: impl FnOnce() + Send + 'static) {
    let ns = ns.to_string();
    thread::spawn(move || {
        enter(&ns);
        f()
    });
}

/// A tap device named tap0 in the calling thread's namespace.
fn open_tap() -> OwnedFd {
    // SAFETY: plain open/ioctl; the fd is owned from here on.
    unsafe {
        let fd = libc::open(c"/dev/net/tun".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC);
        assert!(fd >= 0, "open /dev/net/tun (the egress tests run as root)");
        let mut ifr = [0u8; 40];
        ifr[..4].copy_from_slice(b"tap0");
        let flags: libc::c_short = (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short;
        ifr[16..18].copy_from_slice(&flags.to_ne_bytes());
        let r = libc::ioctl(fd, libc::TUNSETIFF as _, ifr.as_mut_ptr());
        assert_eq!(r, 0, "TUNSETIFF: {}", std::io::Error::last_os_error());
        OwnedFd::from_raw_fd(fd)
    }
}

impl Topology {
    /// Builds the namespaces and the hosts; returns the sandbox's tap fd,
    /// for whoever runs the forwarder.
    pub fn new() -> (Topology, OwnedFd) {
        remove_stale();
        let n = format!(
            "{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::SeqCst)
        );
        let (sandbox, outside, hosts) = (
            format!("lbxs-{n}"),
            format!("lbxo-{n}"),
            format!("lbxh-{n}"),
        );
        for ns in [&sandbox, &outside, &hosts] {
            ip(&["netns", "add", ns]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        let (va, vb) = (format!("lbo{}", &n), format!("lbh{}", &n));
        let (va, vb) = (trunc(&va), trunc(&vb));
        ip(&[
            "-n", &outside, "link", "add", &va, "type", "veth", "peer", "name", &vb, "netns",
            &hosts,
        ]);
        for a in ["198.51.100.1/24", "10.77.0.1/24"] {
            ip(&["-n", &outside, "addr", "add", a, "dev", &va]);
        }
        for a in [
            "198.51.100.10/24",
            "198.51.100.11/24",
            "198.51.100.12/24",
            "198.51.100.53/24",
            "10.77.0.10/24",
        ] {
            ip(&["-n", &hosts, "addr", "add", a, "dev", &vb]);
        }
        ip(&["-n", &outside, "link", "set", &va, "up"]);
        ip(&["-n", &hosts, "link", "set", &vb, "up"]);
        // IPv6 is off inside: the policy path is IPv4 only, so nothing
        // may go around it over IPv6.
        let tap = in_ns(&sandbox, move || {
            let _ = std::fs::write("/proc/sys/net/ipv6/conf/all/disable_ipv6", "1");
            open_tap()
        });
        for args in [
            &["addr", "add", "10.0.2.100/24", "dev", "tap0"][..],
            &["link", "set", "tap0", "mtu", "65520", "up"],
            &["route", "add", "default", "via", "10.0.2.2"],
        ] {
            let mut a = vec!["-n", sandbox.as_str()];
            a.extend_from_slice(args);
            ip(&a);
        }
        let dns_log = Arc::new(Mutex::new(Vec::new()));
        let https_log = https::HttpsLog::default();
        start_hosts(&hosts, dns_log.clone(), https_log.clone());
        (
            Topology {
                sandbox,
                outside,
                hosts,
                dns_log,
                https_log,
            },
            tap,
        )
    }

    pub fn inside<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        in_ns(&self.sandbox, f)
    }

    /// The fast TCP path's listener in the sandbox's namespace, with the
    /// nftables rule that redirects the sandbox's TCP to it (what the
    /// helper's tap child does).
    pub fn redirect(&self) -> OwnedFd {
        let l = self.inside(|| lockbox_net::forwarder::redirect_listener().expect("listener"));
        let port = l.local_addr().unwrap().port();
        nft(
            &self.sandbox,
            &lockbox_net::forwarder::redirect_ruleset(port),
        );
        l.into()
    }
}

/// Loads `rules` into namespace `ns`.
pub fn nft(ns: &str, rules: &str) {
    let mut c = Command::new("ip")
        .args(["netns", "exec", ns, "nft", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run nft");
    c.stdin.take().unwrap().write_all(rules.as_bytes()).unwrap();
    let out = c.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "nft: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Drop for Topology {
    fn drop(&mut self) {
        for ns in [&self.sandbox, &self.outside, &self.hosts] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// The forwarder's view of the topology's host side.
pub fn config(limits: Limits) -> Config {
    Config {
        gateway: GATEWAY,
        prefix_len: 24,
        upstream_dns: DNS_SERVER.parse().unwrap(),
        host_addrs: HostAddrs(vec![
            "198.51.100.1".parse().unwrap(),
            "10.77.0.1".parse().unwrap(),
        ]),
        limits,
    }
}

impl Lab {
    pub fn new(policy: Policy) -> Lab {
        Lab::with_limits(policy, Limits::default())
    }

    pub fn with_limits(policy: Policy, limits: Limits) -> Lab {
        Lab::build(policy, limits, None)
    }

    /// A lab whose forwarder intercepts TLS to `ix`'s secret hosts.
    pub fn with_interception(policy: Policy, ix: Arc<Interception>) -> Lab {
        Lab::build(policy, Limits::default(), Some(ix))
    }

    /// A lab whose sandbox TCP goes only through the tap and the
    /// user-mode stack (no redirect rule), for comparisons.
    pub fn tap_only(policy: Policy) -> Lab {
        Lab::build_with(policy, Limits::default(), None, false)
    }

    fn build(policy: Policy, limits: Limits, ix: Option<Arc<Interception>>) -> Lab {
        Lab::build_with(policy, limits, ix, true)
    }

    fn build_with(
        policy: Policy,
        limits: Limits,
        ix: Option<Arc<Interception>>,
        redirect: bool,
    ) -> Lab {
        let (net, tap) = Topology::new();
        let (mut fwd, handle) = Forwarder::new(tap, config(limits), policy);
        if redirect {
            fwd = fwd.with_redirect(net.redirect());
        }
        if let Some(ix) = ix {
            fwd = fwd.with_interception(ix);
        }
        let out = net.outside.clone();
        let forwarder = thread::spawn(move || {
            enter(&out);
            fwd.run().expect("forwarder");
        });
        Lab {
            handle,
            forwarder: Some(forwarder),
            dns_log: net.dns_log.clone(),
            sandbox: net.sandbox.clone(),
            net,
        }
    }

    /// Runs `f` inside the sandbox's namespace.
    pub fn inside<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        in_ns(&self.net.sandbox, f)
    }

    /// Runs `f` in the forwarder's namespace: the direct path to the
    /// test hosts, without the forwarder (for baselines).
    pub fn outside<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        in_ns(&self.net.outside, f)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.handle.stop();
        if let Some(t) = self.forwarder.take() {
            let _ = t.join();
        }
    }
}

/// Namespaces left by a test process that was killed (its Drop never
/// ran): named lbx?-<pid>-<n>, removed once that pid is gone.
fn remove_stale() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        let Some(rest) = name.strip_prefix("lbx").and_then(|r| r.get(2..)) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = Command::new("ip").args(["netns", "del", name]).status();
        }
    }
}

fn trunc(s: &str) -> String {
    s.chars().take(15).collect()
}

/// The test hosts. Each TCP server answers one read with its name and
/// closes; each UDP echo sends back what it got.
fn start_hosts(ns: &str, dns_log: Arc<Mutex<Vec<String>>>, https_log: https::HttpsLog) {
    let (tx, rx) = std::sync::mpsc::channel();
    spawn_in(ns, move || {
        for (addr, name) in [
            ("198.51.100.10:80", "api"),
            ("198.51.100.10:8080", "api-8080"),
            ("198.51.100.11:80", "pkg"),
            ("198.51.100.12:443", "tls"),
            ("10.77.0.10:80", "internal"),
        ] {
            let l = TcpListener::bind(addr).expect("bind test server");
            thread::spawn(move || tcp_server(l, name));
        }
        let bulk = TcpListener::bind(BULK).expect("bind bulk server");
        thread::spawn(move || bulk_server(bulk));
        for addr in ["198.51.100.10:7", "198.51.100.10:9", "198.51.100.10:80"] {
            let s = UdpSocket::bind(addr).expect("bind udp echo");
            thread::spawn(move || udp_echo(s));
        }
        for (addr, label, name, rogue) in HTTPS_HOSTS {
            let l = TcpListener::bind(addr).expect("bind https server");
            let (cfg, _) = https::server_config(name, rogue);
            let log = https_log.clone();
            thread::spawn(move || https::serve(l, label, cfg, log));
        }
        let s = UdpSocket::bind(DNS_SERVER).expect("bind dns");
        thread::spawn(move || dns_server(s, dns_log));
        tx.send(()).unwrap();
    });
    rx.recv_timeout(Duration::from_secs(10)).expect("hosts up");
}

fn tcp_server(l: TcpListener, name: &'static str) {
    for c in l.incoming() {
        let Ok(mut c) = c else { continue };
        thread::spawn(move || {
            let mut buf = [0u8; 65536];
            let _ = c.set_read_timeout(Some(Duration::from_secs(5)));
            if matches!(c.read(&mut buf), Ok(n) if n > 0) {
                let _ = c.write_all(name.as_bytes());
            }
        });
    }
}

/// HTTPS hosts: (address, label, certificate name, issued by the rogue
/// CA). The rogue one claims api.test with a certificate nobody trusts.
pub const HTTPS_HOSTS: [(&str, &str, &str, bool); 3] = [
    ("198.51.100.10:443", "api-tls", "api.test", false),
    ("198.51.100.11:443", "pkg-tls", "files.pkg.test", false),
    ("198.51.100.10:8443", "rogue", "api.test", true),
];

/// Reads a big-endian u64 and sends that many bytes.
pub const BULK: &str = "198.51.100.10:9000";

fn bulk_server(l: TcpListener) {
    for c in l.incoming() {
        let Ok(mut c) = c else { continue };
        thread::spawn(move || {
            let mut n = [0u8; 8];
            if c.read_exact(&mut n).is_err() {
                return;
            }
            let mut left = u64::from_be_bytes(n);
            let chunk = vec![0x5a; 256 * 1024];
            while left > 0 {
                let k = left.min(chunk.len() as u64) as usize;
                if c.write_all(&chunk[..k]).is_err() {
                    return;
                }
                left -= k as u64;
            }
        });
    }
}

fn udp_echo(s: UdpSocket) {
    let mut buf = [0u8; 65536];
    while let Ok((n, from)) = s.recv_from(&mut buf) {
        let _ = s.send_to(&buf[..n], from);
    }
}

/// The test names: api.test, anything under pkg.test, tls.test,
/// rebind.test (an internal and a loopback address); everything else
/// NXDOMAIN. Every name asked is logged.
fn dns_server(s: UdpSocket, log: Arc<Mutex<Vec<String>>>) {
    let zone: HashMap<&str, Vec<Ipv4Addr>> = HashMap::from([
        ("api.test", vec![Ipv4Addr::new(198, 51, 100, 10)]),
        ("tls.test", vec![Ipv4Addr::new(198, 51, 100, 12)]),
        (
            "rebind.test",
            vec![Ipv4Addr::new(10, 77, 0, 10), Ipv4Addr::LOCALHOST],
        ),
    ]);
    let mut buf = [0u8; 4096];
    while let Ok((n, from)) = s.recv_from(&mut buf) {
        let Ok(q) = Message::from_vec(&buf[..n]) else {
            continue;
        };
        let Some(query) = q.queries().first().cloned() else {
            continue;
        };
        let name = query
            .name()
            .to_ascii()
            .trim_end_matches('.')
            .to_ascii_lowercase();
        log.lock().unwrap().push(name.clone());
        let addrs = if name.ends_with(".pkg.test") {
            Some(vec![Ipv4Addr::new(198, 51, 100, 11)])
        } else {
            zone.get(name.as_str()).cloned()
        };
        let mut r = Message::new();
        r.set_id(q.id())
            .set_message_type(MessageType::Response)
            .add_query(query.clone());
        match addrs {
            Some(list) if query.query_type() == RecordType::A => {
                for a in list {
                    r.add_answer(Record::from_rdata(query.name().clone(), 60, RData::A(A(a))));
                }
            }
            Some(_) => {}
            None => {
                r.set_response_code(ResponseCode::NXDomain);
            }
        }
        let _ = s.send_to(&r.to_vec().unwrap(), from);
    }
}

/// Asks Lockbox's resolver (the gateway) for `name`'s A records, from
/// inside the sandbox's namespace (call within `Lab::inside`).
pub fn resolve(name: &str) -> (ResponseCode, Vec<IpAddr>) {
    let s = UdpSocket::bind("0.0.0.0:0").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let mut m = Message::new();
    m.set_id(rand_id())
        .set_message_type(MessageType::Query)
        .set_recursion_desired(true)
        .add_query(Query::query(
            Name::from_str(&format!("{name}.")).unwrap(),
            RecordType::A,
        ));
    s.send_to(&m.to_vec().unwrap(), (GATEWAY, 53)).unwrap();
    let mut buf = [0u8; 4096];
    let n = s.recv(&mut buf).expect("an answer from Lockbox's resolver");
    let r = Message::from_vec(&buf[..n]).unwrap();
    assert_eq!(r.id(), m.id());
    let addrs = r
        .answers()
        .iter()
        .filter_map(|a| match a.data() {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            _ => None,
        })
        .collect();
    (r.response_code(), addrs)
}

fn rand_id() -> u16 {
    (std::process::id() as u16)
        .wrapping_mul(31)
        .wrapping_add(SEQ.fetch_add(1, Ordering::SeqCst) as u16)
}

/// What a TCP exchange from inside the sandbox came to.
#[derive(Debug, PartialEq, Eq)]
pub enum Tcp {
    /// The server's answer.
    Answer(String),
    /// Refused or reset, and how long it took (must be fast).
    Refused(Duration),
    /// Connected, but closed without an answer.
    Closed,
}

/// Connects to `addr`, sends `payload`, reads the answer.
pub fn tcp_exchange(addr: &str, payload: &[u8]) -> Tcp {
    let a: SocketAddr = addr.parse().unwrap();
    let t0 = std::time::Instant::now();
    let mut c = match TcpStream::connect_timeout(&a, Duration::from_secs(5)) {
        Ok(c) => c,
        // Refused on the tap path; on the redirect path the kernel inside
        // has completed the handshake before the forwarder decides, and
        // the reset may land before connect() returns.
        Err(e) => {
            assert!(
                matches!(
                    e.kind(),
                    std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::ConnectionReset
                ),
                "{addr}: {e}"
            );
            return Tcp::Refused(t0.elapsed());
        }
    };
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    if let Err(e) = c.write_all(payload) {
        return match e.kind() {
            std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe => {
                Tcp::Refused(t0.elapsed())
            }
            _ => panic!("{addr}: write: {e}"),
        };
    }
    let mut out = Vec::new();
    match c.read_to_end(&mut out) {
        Ok(_) if out.is_empty() => Tcp::Closed,
        Ok(_) => Tcp::Answer(String::from_utf8_lossy(&out).into_owned()),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => Tcp::Refused(t0.elapsed()),
        Err(e) => panic!("{addr}: read: {e}"),
    }
}

/// What a UDP exchange from inside the sandbox came to.
#[derive(Debug, PartialEq, Eq)]
pub enum Udp {
    Echo(Vec<u8>),
    /// ICMP unreachable reached the socket (ECONNREFUSED), and how fast.
    Refused(Duration),
    /// Nothing came back.
    Silence,
}

pub fn udp_exchange(addr: &str, payload: &[u8]) -> Udp {
    let s = UdpSocket::bind("0.0.0.0:0").unwrap();
    s.connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let t0 = std::time::Instant::now();
    s.send(payload).unwrap();
    let mut buf = [0u8; 65536];
    match s.recv(&mut buf) {
        Ok(n) => Udp::Echo(buf[..n].to_vec()),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => Udp::Refused(t0.elapsed()),
        Err(_) => Udp::Silence,
    }
}

pub const HTTP_GET: &[u8] = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
/// What "fail fast" means here: far below any client timeout (5 s), with
/// room for a loaded machine running the tests in parallel (was 500 ms).
pub const FAST: Duration = Duration::from_millis(2000);

pub fn refused_fast(r: &Tcp) -> bool {
    matches!(r, Tcp::Refused(d) if *d < FAST)
}

/// Asks the bulk server for `bytes` and reads them all; returns how many
/// arrived intact before the server closed (or the error).
pub fn bulk_download(bytes: u64) -> Result<u64, std::io::Error> {
    let a: SocketAddr = BULK.parse().unwrap();
    let mut c = TcpStream::connect_timeout(&a, Duration::from_secs(5))?;
    c.set_read_timeout(Some(Duration::from_secs(10)))?;
    c.write_all(&bytes.to_be_bytes())?;
    let mut buf = vec![0u8; 1 << 20];
    let mut got = 0u64;
    loop {
        let n = c.read(&mut buf)?;
        if n == 0 {
            return Ok(got);
        }
        assert!(buf[..n].iter().all(|&b| b == 0x5a), "corrupted at {got}");
        got += n as u64;
    }
}
