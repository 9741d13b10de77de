//! The forwarder: reads the sandbox's Ethernet frames from its tap fd,
//! decides each new connection, datagram and DNS query against the
//! policy, and relays what is allowed through ordinary host sockets.
//!
//! It runs on one thread (a current-thread runtime), in whatever network
//! namespace that thread is in: the host's, never the sandbox's. The
//! sandbox sees one gateway address (also its DNS server) and a stack that
//! answers for every destination; nothing it sends reaches a host socket
//! unless the policy allowed it at that moment.

mod device;
mod frame;
mod ingress;
pub mod loopback;
mod redirect;
mod splice;
mod tcp;
mod udp;
mod upstream;
pub mod vm_link;

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use smoltcp::iface::{Config as IfaceConfig, Interface, SocketHandle, SocketSet};
use smoltcp::socket::{tcp as stcp, udp as sudp};
use smoltcp::wire::{EthernetAddress, IpAddress, IpCidr, IpEndpoint, IpListenEndpoint};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{mpsc, Notify};

use crate::dns::{Ctx, DnsFilter, QueryOutcome};
use crate::events::{Counters, Denial, DenialKind, Events};
use crate::intercept::Interception;
use crate::policy::{HostAddrs, Policy, Protocol, Target};
pub use device::MTU;
pub use ingress::Published;
pub use redirect::{
    listener as redirect_listener, nft_ruleset as redirect_ruleset, TABLE as REDIRECT_TABLE,
};
pub use upstream::{Bounds as UpstreamBounds, PortSlice};

/// The gateway's Ethernet address (locally administered).
const GATEWAY_MAC: EthernetAddress = EthernetAddress([0x02, 0x4c, 0x42, 0x00, 0x00, 0x01]);
/// Frames read per wake-up before the stack gets to run.
const FRAMES_PER_ROUND: usize = 256;
/// Datagrams from host sockets waiting for the loop, all flows together.
const UDP_REPLIES: usize = 256;

/// Everything a sandbox can make the forwarder hold is bounded here.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Open or opening TCP connections.
    pub max_tcp: usize,
    /// UDP (source, destination) pairs with a host socket.
    pub max_udp: usize,
    /// Each direction of each TCP connection's smoltcp buffer.
    pub tcp_buffer: usize,
    pub max_names: usize,
    pub max_pending_dns: usize,
    pub max_events: usize,
    pub connect_timeout: Duration,
    pub udp_idle: Duration,
    /// What the sandbox may take of the host's ephemeral ports (upstream.rs).
    pub upstream: UpstreamBounds,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_tcp: 128,
            max_udp: 256,
            tcp_buffer: 256 * 1024,
            max_names: 4096,
            max_pending_dns: 64,
            max_events: 1024,
            connect_timeout: Duration::from_secs(10),
            udp_idle: Duration::from_secs(60),
            // The host keeps three quarters of its range whatever the
            // sandboxes do; one sandbox holds at most 1024 + 60 × 50 + 128
            // ports in TIME_WAIT (docs/network.md "Host ports").
            upstream: UpstreamBounds {
                ports: Some(PortSlice::top_of_host(4)),
                connections_per_sec: 50,
                connection_burst: 1024,
            },
        }
    }
}

#[derive(Debug, Clone)]
pub struct Config {
    /// The forwarder's address on the sandbox's link: its default route
    /// and its DNS server.
    pub gateway: Ipv4Addr,
    pub prefix_len: u8,
    /// Where allowed names are resolved (the host's resolver).
    pub upstream_dns: SocketAddr,
    /// The host's own addresses, closed unless a CIDR rule names them.
    pub host_addrs: HostAddrs,
    pub limits: Limits,
}

struct Shared {
    policy: RwLock<Arc<Policy>>,
    events: Arc<Events>,
    stop: AtomicBool,
    wake: Arc<Notify>,
    upstream: upstream::Upstream,
}

impl Shared {
    fn current_policy(&self) -> Arc<Policy> {
        self.policy
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// The host's side: replace the policy, read denials, stop.
#[derive(Clone)]
pub struct Handle(Arc<Shared>);

impl Handle {
    /// New connections, datagrams and queries see `p` from now on;
    /// connections already open stay open.
    pub fn set_policy(&self, p: Policy) {
        *self.0.policy.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(p);
        self.0.wake.notify_one();
    }

    pub fn take_events(&self) -> Vec<Denial> {
        self.0.events.drain()
    }

    pub fn counters(&self) -> Counters {
        self.0.events.counters()
    }

    pub fn stop(&self) {
        self.0.stop.store(true, Ordering::SeqCst);
        self.0.wake.notify_one();
    }
}

pub struct Forwarder {
    tap: OwnedFd,
    redirect: Option<OwnedFd>,
    config: Config,
    shared: Arc<Shared>,
    interception: Option<Arc<Interception>>,
    published: Vec<Published>,
}

impl Forwarder {
    /// `tap` is the sandbox's tap device (IFF_TAP|IFF_NO_PI), opened in the
    /// sandbox's network namespace and handed out.
    pub fn new(tap: OwnedFd, config: Config, policy: Policy) -> (Forwarder, Handle) {
        let events = Arc::new(Events::new(config.limits.max_events));
        let shared = Arc::new(Shared {
            policy: RwLock::new(Arc::new(policy)),
            upstream: upstream::Upstream::new(&config.limits.upstream, events.clone()),
            events,
            stop: AtomicBool::new(false),
            wake: Arc::new(Notify::new()),
        });
        let h = Handle(shared.clone());
        (
            Forwarder {
                tap,
                redirect: None,
                config,
                shared,
                interception: None,
                published: Vec::new(),
            },
            h,
        )
    }

    /// Intercepts TLS to the hosts `ix`'s secrets are bound to (and only
    /// those), substituting their placeholders; watches plaintext for them.
    pub fn with_interception(mut self, ix: Arc<Interception>) -> Forwarder {
        self.interception = Some(ix);
        self
    }

    /// Relays connections accepted on these host sockets into the
    /// sandbox (published ports; see ingress.rs).
    pub fn with_published(mut self, p: Vec<Published>) -> Forwarder {
        self.published = p;
        self
    }

    /// Serves the sandbox's TCP from `listener`: a listening socket in the
    /// sandbox's network namespace that an nftables rule there redirects
    /// every outgoing TCP connection to (see `redirect`). SYNs that still
    /// reach the tap are served by the user-mode stack, under the same
    /// rules.
    pub fn with_redirect(mut self, listener: OwnedFd) -> Forwarder {
        self.redirect = Some(listener);
        self
    }

    /// Runs until `Handle::stop` or a tap error, on the calling thread and
    /// in its network namespace.
    pub fn run(self) -> io::Result<()> {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(self.main())
    }

    async fn main(self) -> io::Result<()> {
        device::set_nonblocking(&self.tap)?;
        // SAFETY: the AsyncFd owns the fd; nothing else closes or
        // replaces it while it is registered.
        let tap = unsafe { AsyncFd::register_with_interest(self.tap, Interest::READABLE)? };
        let up = std::net::UdpSocket::bind(SocketAddr::new(
            unspecified_like(self.config.upstream_dns.ip()),
            0,
        ))?;
        up.connect(self.config.upstream_dns)?;
        up.set_nonblocking(true)?;
        // Queries go out through the plain socket (see udp::Flow::send);
        // answers come in through the runtime.
        let upstream_send = up.try_clone()?;
        let upstream = UdpSocket::from_std(up)?;
        let listener = match self.redirect {
            Some(fd) => {
                let l = std::net::TcpListener::from(fd);
                l.set_nonblocking(true)?;
                Some(TcpListener::from_std(l)?)
            }
            None => None,
        };
        let mut st = Stack::new(self.config, self.shared.clone(), self.interception);
        if !self.published.is_empty() {
            let (gw, wake) = (st.config.gateway, self.shared.wake.clone());
            st.ingress = Some(ingress::Ingress::start(self.published, gw, wake)?);
        }
        let mut frame = vec![0u8; 65536];
        let mut answer = vec![0u8; 65536];
        let wake = self.shared.wake.clone();
        loop {
            if self.shared.stop.load(Ordering::SeqCst) {
                return Ok(());
            }
            st.round(&upstream_send);
            while let Some(f) = st.dev.tx.pop_front() {
                device::write_frame(tap.get_ref(), &f);
                st.dev.recycle(f);
            }
            let delay = st
                .iface
                .poll_delay(smol_now(), &st.sockets)
                .map(|d| Duration::from_micros(d.total_micros()))
                .unwrap_or(Duration::from_secs(1))
                .min(Duration::from_secs(1));
            tokio::select! {
                r = tap.readable() => {
                    let mut guard = r?;
                    for _ in 0..FRAMES_PER_ROUND {
                        match device::read_frame(guard.get_inner(), &mut frame)? {
                            Some(n) => st.ingest(frame[..n].to_vec()),
                            None => {
                                guard.clear_ready();
                                break;
                            }
                        }
                    }
                }
                _ = wake.notified() => {}
                r = accept(listener.as_ref()) => match r {
                    Ok((s, _)) => st.on_redirected(s),
                    // Out of fds or memory: the sandbox's connection
                    // waits in the backlog; try again after a pause.
                    Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                },
                r = upstream.recv(&mut answer) => {
                    if let Ok(n) = r {
                        st.on_dns_answer(&answer[..n]);
                    }
                }
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }
}

type TcpKey = (SocketAddr, SocketAddr);

struct Stack {
    config: Config,
    shared: Arc<Shared>,
    interception: Option<Arc<Interception>>,
    policy: Arc<Policy>,
    iface: Interface,
    dev: device::Queues,
    sockets: SocketSet<'static>,
    dns_socket: SocketHandle,
    dns: DnsFilter,
    tcp: HashMap<TcpKey, tcp::Flow>,
    /// Open connections through the redirect listener.
    redirected: Arc<AtomicUsize>,
    udp: HashMap<udp::Key, udp::Flow>,
    udp_ports: HashMap<u16, SocketHandle>,
    connected_tx: mpsc::UnboundedSender<(TcpKey, io::Result<TcpStream>)>,
    connected_rx: mpsc::UnboundedReceiver<(TcpKey, io::Result<TcpStream>)>,
    udp_tx: mpsc::Sender<(udp::Key, Vec<u8>)>,
    udp_rx: mpsc::Receiver<(udp::Key, Vec<u8>)>,
    last_sweep: Instant,
    ingress: Option<ingress::Ingress>,
}

impl Stack {
    fn new(config: Config, shared: Arc<Shared>, interception: Option<Arc<Interception>>) -> Stack {
        let mut dev = device::Queues::default();
        let mut ic = IfaceConfig::new(GATEWAY_MAC.into());
        ic.random_seed = random_u64();
        let mut iface = Interface::new(ic, &mut dev, smol_now());
        // Answer for every destination: each is decided before a socket
        // exists for it, and without a socket smoltcp resets or drops.
        iface.set_any_ip(true);
        iface.update_ip_addrs(|a| {
            let _ = a.push(IpCidr::new(
                IpAddress::Ipv4(config.gateway),
                config.prefix_len,
            ));
        });
        iface
            .routes_mut()
            .add_default_ipv4_route(config.gateway)
            .expect("one route fits");
        let mut sockets = SocketSet::new(vec![]);
        // Added first so it takes gateway:53 before any relay socket on
        // port 53 (smoltcp gives a datagram to the first that accepts).
        let mut dns = udp_socket(64);
        dns.bind(IpListenEndpoint {
            addr: Some(IpAddress::Ipv4(config.gateway)),
            port: 53,
        })
        .expect("bind the resolver");
        let dns_socket = sockets.add(dns);
        let (connected_tx, connected_rx) = mpsc::unbounded_channel();
        let (udp_tx, udp_rx) = mpsc::channel(UDP_REPLIES);
        let l = &config.limits;
        let dns_filter = DnsFilter::new(l.max_pending_dns, l.max_names);
        let policy = shared
            .policy
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        Stack {
            config,
            shared,
            interception,
            policy,
            iface,
            dev,
            sockets,
            dns_socket,
            dns: dns_filter,
            tcp: HashMap::new(),
            redirected: Arc::new(AtomicUsize::new(0)),
            udp: HashMap::new(),
            udp_ports: HashMap::new(),
            connected_tx,
            connected_rx,
            udp_tx,
            udp_rx,
            last_sweep: Instant::now(),
            ingress: None,
        }
    }

    fn refresh_policy(&mut self) {
        self.policy = self
            .shared
            .policy
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
    }

    /// Everything that does not wait: connect results, host datagrams,
    /// the stack, the sockets.
    fn round(&mut self, upstream: &std::net::UdpSocket) {
        self.refresh_policy();
        while let Ok((key, r)) = self.connected_rx.try_recv() {
            self.on_connected(key, r);
        }
        while let Ok((key, data)) = self.udp_rx.try_recv() {
            self.udp_to_sandbox(key, &data);
        }
        self.iface
            .poll(smol_now(), &mut self.dev, &mut self.sockets);
        self.serve_dns(upstream);
        self.udp_from_sandbox();
        self.relay_tcp();
        if let Some(i) = self.ingress.as_mut() {
            i.round(&mut self.iface, &mut self.dev, &mut self.sockets);
        }
        self.iface
            .poll(smol_now(), &mut self.dev, &mut self.sockets);
        if self.last_sweep.elapsed() > Duration::from_secs(1) {
            self.sweep();
        }
    }

    /// One frame from the sandbox: decided here, before smoltcp sees it.
    fn ingest(&mut self, f: Vec<u8>) {
        self.refresh_policy();
        match frame::classify(&f) {
            frame::Kind::Drop => {}
            frame::Kind::Stack | frame::Kind::Tcp => self.dev.rx.push_back(f),
            frame::Kind::TcpSyn { src, dst } => self.on_syn(f, src, dst),
            frame::Kind::Udp { src, dst } => self.on_udp(f, src, dst),
        }
    }

    fn decide(&self, dst: SocketAddr, protocol: Protocol) -> (bool, Option<Denial>) {
        let names = self.dns.table().names(dst.ip(), Instant::now());
        let t = Target {
            ip: dst.ip(),
            names: &names,
            port: dst.port(),
            protocol,
        };
        let v = self.policy.decide(&t, &self.config.host_addrs);
        if v.allowed {
            return (true, None);
        }
        let mut d = Denial::now(DenialKind::Connect, self.policy.describe(v.rule));
        d.protocol = Some(protocol);
        d.ip = Some(dst.ip());
        d.port = Some(dst.port());
        d.name = (!names.is_empty()).then(|| names.join(","));
        // At most MAX_NAMES_PER_ADDRESS names of at most 253 bytes: an
        // event stays small whatever the sandbox resolved.
        (false, Some(d))
    }

    fn on_syn(&mut self, f: Vec<u8>, src: SocketAddr, dst: SocketAddr) {
        let key = (src, dst);
        if let Some(flow) = self.tcp.get(&key) {
            // A retransmitted SYN: wait for the connect, or let the open
            // socket see it.
            if matches!(flow.phase, tcp::Phase::Open { .. }) {
                self.dev.rx.push_back(f);
            }
            return;
        }
        // Without a socket smoltcp answers with a reset: that is how every
        // refusal below fails fast inside the sandbox.
        if dst.ip() == IpAddr::V4(self.config.gateway) {
            self.dev.rx.push_back(f);
            return;
        }
        let (ok, denial) = self.decide(dst, Protocol::Tcp);
        if let Some(d) = denial {
            self.shared.events.deny(d);
        }
        if !ok {
            self.dev.rx.push_back(f);
            return;
        }
        if self.tcp_full(dst) {
            self.dev.rx.push_back(f);
            return;
        }
        // Counted as allowed by upstream::connect, once its bounds let it.
        let tx = self.connected_tx.clone();
        let shared = self.shared.clone();
        let timeout = self.config.limits.connect_timeout;
        let task = tokio::spawn(async move {
            let r = upstream::connect(&shared.upstream, dst, timeout).await;
            let _ = tx.send((key, r));
            shared.wake.notify_one();
        });
        self.tcp.insert(
            key,
            tcp::Flow {
                dst,
                phase: tcp::Phase::Connecting { syn: f },
                connect: Some(task),
            },
        );
    }

    /// Both TCP paths together hold at most `max_tcp` connections; one
    /// more is refused and reported.
    fn tcp_full(&self, dst: SocketAddr) -> bool {
        let open = self.tcp.len() + self.redirected.load(Ordering::SeqCst);
        if open < self.config.limits.max_tcp {
            return false;
        }
        let mut d = Denial::now(DenialKind::Limit, "open TCP connections".into());
        d.protocol = Some(Protocol::Tcp);
        d.ip = Some(dst.ip());
        d.port = Some(dst.port());
        self.shared.events.deny(d);
        true
    }

    /// A connection accepted on the redirect listener: decided as a SYN
    /// on the tap is, then served on a task of its own.
    fn on_redirected(&mut self, s: TcpStream) {
        self.refresh_policy();
        let dst = match redirect::original_dst(&s) {
            Ok(d) => SocketAddr::V4(d),
            Err(_) => return redirect::refuse(s),
        };
        // Loopback never leaves the sandbox (the rule redirects only what
        // would), so a loopback destination is a connection made straight
        // to the listener: never forwarded, whatever a CIDR rule says
        // (it would be the host's loopback). The gateway has no TCP
        // service, as on the tap.
        if dst.ip().is_loopback() {
            let mut d = Denial::now(
                DenialKind::Connect,
                "the forwarder's redirect listener is not a destination".into(),
            );
            d.protocol = Some(Protocol::Tcp);
            d.ip = Some(dst.ip());
            d.port = Some(dst.port());
            self.shared.events.deny(d);
            return redirect::refuse(s);
        }
        if dst.ip() == IpAddr::V4(self.config.gateway) {
            return redirect::refuse(s);
        }
        let (ok, denial) = self.decide(dst, Protocol::Tcp);
        if let Some(d) = denial {
            self.shared.events.deny(d);
        }
        if !ok || self.tcp_full(dst) {
            return redirect::refuse(s);
        }
        // Counted as allowed by upstream::connect, once its bounds let it.
        let conn = redirect::Conn {
            shared: self.shared.clone(),
            host_addrs: self.config.host_addrs.clone(),
            interception: self.interception.clone(),
            connect_timeout: self.config.limits.connect_timeout,
            dst,
            slot: redirect::Slot::take(&self.redirected),
        };
        tokio::spawn(redirect::serve(s, conn));
    }

    fn on_connected(&mut self, key: TcpKey, r: io::Result<TcpStream>) {
        let Some(flow) = self.tcp.get_mut(&key) else {
            return;
        };
        let tcp::Phase::Connecting { syn } = &mut flow.phase else {
            return;
        };
        let syn = std::mem::take(syn);
        let stream = match r {
            Ok(s) => s,
            Err(_) => {
                self.tcp.remove(&key);
                // No socket: smoltcp resets, as the destination did.
                self.dev.rx.push_front(syn);
                return;
            }
        };
        let n = self.config.limits.tcp_buffer;
        let mut s = stcp::Socket::new(
            stcp::SocketBuffer::new(vec![0; n]),
            stcp::SocketBuffer::new(vec![0; n]),
        );
        s.set_nagle_enabled(false);
        s.set_keep_alive(Some(smoltcp::time::Duration::from_secs(30)));
        s.set_timeout(Some(smoltcp::time::Duration::from_secs(90)));
        let (IpAddr::V4(a), port) = (flow.dst.ip(), flow.dst.port()) else {
            return;
        };
        if s.listen(IpListenEndpoint {
            addr: Some(IpAddress::Ipv4(a)),
            port,
        })
        .is_err()
        {
            self.tcp.remove(&key);
            return;
        }
        let handle = self.sockets.add(s);
        let ctx = tcp::RelayCtx {
            interception: self.interception.clone(),
            events: self.shared.events.clone(),
            dst: flow.dst,
        };
        let (to_host, from_host, tasks) = tcp::spawn_relay(stream, self.shared.wake.clone(), ctx);
        flow.phase = tcp::Phase::Open {
            handle,
            to_host: Some(to_host),
            from_host,
            pending: None,
            host_done: false,
            gate: Some(Vec::new()),
            tasks,
        };
        flow.connect = None;
        // This SYN must meet this socket before any other SYN to the same
        // destination can: feed it alone, now.
        self.dev.rx.push_front(syn);
        self.iface
            .poll(smol_now(), &mut self.dev, &mut self.sockets);
    }

    fn relay_tcp(&mut self) {
        let mut over = Vec::new();
        let policy = self.policy.clone();
        for (key, flow) in self.tcp.iter_mut() {
            let tcp::Phase::Open { handle, gate, .. } = &mut flow.phase else {
                continue;
            };
            let handle = *handle;
            let sock = self.sockets.get_mut::<stcp::Socket>(handle);
            if let Some(g) = gate.as_mut() {
                tcp::fill_gate(sock, g);
                let closed = peer_closed(sock);
                let verdict = match tcp::judge(g) {
                    tcp::GateResult::Wait if g.is_empty() && closed => tcp::GateResult::Pass(None),
                    tcp::GateResult::Wait if closed => tcp::GateResult::Refuse,
                    v => v,
                };
                let refuse = |name: Option<String>, rule: String| {
                    let mut d = Denial::now(DenialKind::Sni, rule);
                    d.protocol = Some(Protocol::Tcp);
                    d.ip = Some(flow.dst.ip());
                    d.port = Some(flow.dst.port());
                    d.name = name;
                    self.shared.events.deny(d);
                };
                match verdict {
                    tcp::GateResult::Wait => continue,
                    tcp::GateResult::Refuse => {
                        refuse(None, "malformed TLS ClientHello".into());
                        sock.abort();
                    }
                    tcp::GateResult::Pass(name) => {
                        let ok = match &name {
                            None => true,
                            Some(n) => {
                                let names: Vec<&str> = if n.is_empty() { vec![] } else { vec![n] };
                                let t = Target {
                                    ip: flow.dst.ip(),
                                    names: &names,
                                    port: flow.dst.port(),
                                    protocol: Protocol::Tcp,
                                };
                                let v = policy.decide(&t, &self.config.host_addrs);
                                if !v.allowed {
                                    refuse(Some(n.clone()), policy.describe(v.rule));
                                }
                                v.allowed
                            }
                        };
                        if ok {
                            let first = std::mem::take(g);
                            *gate = None;
                            let mode = match (&self.interception, name) {
                                (None, _) => None,
                                (Some(_), None) => Some(tcp::ToHost::Scan),
                                (Some(ix), Some(n)) => ix
                                    .secrets()
                                    .intercepts(&n)
                                    .then_some(tcp::ToHost::Intercept(n)),
                            };
                            if let tcp::Phase::Open {
                                to_host: Some(tx), ..
                            } = &flow.phase
                            {
                                // A fresh channel has room for the mode
                                // and one gate (MAX_HELLO is less than
                                // one chunk).
                                if let Some(m) = mode {
                                    let _ = tx.try_send(m);
                                }
                                for c in first.chunks(tcp::CHUNK) {
                                    let _ = tx.try_send(tcp::ToHost::Data(c.to_vec()));
                                }
                            }
                        } else {
                            sock.abort();
                        }
                    }
                }
            }
            if !tcp::shuttle(sock, &mut flow.phase) {
                over.push((*key, handle));
            }
        }
        if !over.is_empty() {
            // An aborted socket sends its reset when polled: poll before
            // it goes, or the sandbox waits for a reset that never comes.
            self.iface
                .poll(smol_now(), &mut self.dev, &mut self.sockets);
        }
        for (key, handle) in over {
            self.tcp.remove(&key);
            self.sockets.remove(handle);
        }
    }

    fn on_udp(&mut self, f: Vec<u8>, src: SocketAddr, dst: SocketAddr) {
        if dst.ip() == IpAddr::V4(self.config.gateway) {
            if dst.port() == 53 {
                self.dev.rx.push_back(f);
            } else {
                self.refuse_datagram(&f);
            }
            return;
        }
        let (ok, denial) = self.decide(dst, Protocol::Udp);
        if let Some(d) = denial {
            self.shared.events.deny(d);
        }
        if !ok {
            self.refuse_datagram(&f);
            return;
        }
        let key = (src, dst);
        if !self.udp.contains_key(&key) {
            if self.udp.len() >= self.config.limits.max_udp {
                self.sweep();
            }
            if self.udp.len() >= self.config.limits.max_udp {
                let mut d = Denial::now(DenialKind::Limit, "UDP flows".into());
                d.protocol = Some(Protocol::Udp);
                d.ip = Some(dst.ip());
                d.port = Some(dst.port());
                self.shared.events.deny(d);
                self.refuse_datagram(&f);
                return;
            }
            let ports = self.config.limits.upstream.ports;
            match udp::open(key, ports, self.udp_tx.clone(), self.shared.wake.clone()) {
                Ok(flow) => {
                    self.shared.events.count(|c| c.connections_allowed += 1);
                    self.udp.insert(key, flow);
                }
                Err(e) => {
                    // connect's autobind with the slice held: EAGAIN.
                    if matches!(e.raw_os_error(), Some(libc::EAGAIN | libc::EADDRINUSE)) {
                        let mut d = Denial::now(
                            DenialKind::Limit,
                            "host ports: the forwarders' share of the host's UDP ports is held"
                                .into(),
                        );
                        d.protocol = Some(Protocol::Udp);
                        d.ip = Some(dst.ip());
                        d.port = Some(dst.port());
                        self.shared.events.deny(d);
                    }
                    self.refuse_datagram(&f);
                    return;
                }
            }
        }
        if !self.udp_ports.contains_key(&dst.port()) {
            let mut s = udp_socket(32);
            if s.bind(dst.port()).is_err() {
                return;
            }
            let h = self.sockets.add(s);
            self.udp_ports.insert(dst.port(), h);
        }
        self.dev.rx.push_back(f);
    }

    fn refuse_datagram(&mut self, f: &[u8]) {
        if let Some(icmp) = frame::icmp_unreachable(f, GATEWAY_MAC) {
            self.dev.tx.push_back(icmp);
        }
    }

    /// Datagrams smoltcp took from the sandbox; each was decided in
    /// `on_udp` just before, and has its flow.
    fn udp_from_sandbox(&mut self) {
        let now = Instant::now();
        for (&port, &h) in &self.udp_ports {
            let s = self.sockets.get_mut::<sudp::Socket>(h);
            while let Ok((data, meta)) = s.recv() {
                let Some(IpAddress::Ipv4(local)) = meta.local_address else {
                    continue;
                };
                let key = (
                    endpoint_addr(meta.endpoint),
                    SocketAddr::V4(SocketAddrV4::new(local, port)),
                );
                if let Some(flow) = self.udp.get_mut(&key) {
                    flow.last = now;
                    let _ = flow.send.send(data);
                }
            }
        }
    }

    fn udp_to_sandbox(&mut self, key: udp::Key, data: &[u8]) {
        let Some(&h) = self.udp_ports.get(&key.1.port()) else {
            return;
        };
        if let Some(flow) = self.udp.get_mut(&key) {
            flow.last = Instant::now();
        }
        let (Some(ep), IpAddr::V4(local)) = (endpoint(key.0), key.1.ip()) else {
            return;
        };
        let mut meta = sudp::UdpMetadata::from(ep);
        meta.local_address = Some(IpAddress::Ipv4(local));
        let _ = self
            .sockets
            .get_mut::<sudp::Socket>(h)
            .send_slice(data, meta);
    }

    fn serve_dns(&mut self, upstream: &std::net::UdpSocket) {
        let policy = self.policy.clone();
        let ctx = Ctx {
            policy: &policy,
            host: &self.config.host_addrs,
            events: &self.shared.events,
        };
        let now = Instant::now();
        let s = self.sockets.get_mut::<sudp::Socket>(self.dns_socket);
        let gateway = IpAddress::Ipv4(self.config.gateway);
        while let Ok((q, meta)) = s.recv() {
            let client = endpoint_addr(meta.endpoint);
            match self.dns.on_query(q, client, &ctx, now) {
                QueryOutcome::Reply(r) => {
                    let mut m = sudp::UdpMetadata::from(meta.endpoint);
                    m.local_address = Some(gateway);
                    let _ = s.send_slice(&r, m);
                }
                QueryOutcome::Forward(b) => {
                    let _ = upstream.send(&b);
                }
                QueryOutcome::Ignore => {}
            }
        }
    }

    fn on_dns_answer(&mut self, pkt: &[u8]) {
        self.refresh_policy();
        let policy = self.policy.clone();
        let ctx = Ctx {
            policy: &policy,
            host: &self.config.host_addrs,
            events: &self.shared.events,
        };
        let Some((client, bytes)) = self.dns.on_answer(pkt, &ctx, Instant::now()) else {
            return;
        };
        let Some(ep) = endpoint(client) else { return };
        let mut m = sudp::UdpMetadata::from(ep);
        m.local_address = Some(IpAddress::Ipv4(self.config.gateway));
        let _ = self
            .sockets
            .get_mut::<sudp::Socket>(self.dns_socket)
            .send_slice(&bytes, m);
    }

    fn sweep(&mut self) {
        let now = Instant::now();
        let idle = self.config.limits.udp_idle;
        self.udp.retain(|_, f| now.duration_since(f.last) < idle);
        // A port socket lives only while a flow uses its port, so there
        // are never more of them than flows.
        let used: std::collections::HashSet<u16> = self.udp.keys().map(|k| k.1.port()).collect();
        let sockets = &mut self.sockets;
        self.udp_ports.retain(|port, h| {
            let keep = used.contains(port);
            if !keep {
                sockets.remove(*h);
            }
            keep
        });
        self.dns.expire(now);
        self.last_sweep = now;
    }
}

/// The sandbox closed its sending side (or the connection is gone).
fn peer_closed(s: &stcp::Socket<'_>) -> bool {
    use stcp::State::*;
    matches!(s.state(), CloseWait | LastAck | Closing | TimeWait | Closed)
}

/// Room for `packets` datagrams and 128 KiB each way (a datagram is at
/// most 64 KiB).
fn udp_socket(packets: usize) -> sudp::Socket<'static> {
    let buf = || {
        sudp::PacketBuffer::new(
            vec![sudp::PacketMetadata::EMPTY; packets],
            vec![0; 128 * 1024],
        )
    };
    sudp::Socket::new(buf(), buf())
}

fn endpoint(a: SocketAddr) -> Option<IpEndpoint> {
    match a {
        SocketAddr::V4(v4) => Some(IpEndpoint::new(IpAddress::Ipv4(*v4.ip()), v4.port())),
        SocketAddr::V6(_) => None,
    }
}

fn endpoint_addr(e: IpEndpoint) -> SocketAddr {
    let IpAddress::Ipv4(a) = e.addr;
    SocketAddr::V4(SocketAddrV4::new(a, e.port))
}

fn unspecified_like(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(_) => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
    }
}

/// The next connection on the redirect listener; never, without one.
async fn accept(l: Option<&TcpListener>) -> io::Result<(TcpStream, SocketAddr)> {
    match l {
        Some(l) => l.accept().await,
        None => std::future::pending().await,
    }
}

fn smol_now() -> smoltcp::time::Instant {
    smoltcp::time::Instant::now()
}

fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    // SAFETY: the buffer is valid for its length.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    assert_eq!(n, 8, "getrandom");
    u64::from_ne_bytes(b)
}
