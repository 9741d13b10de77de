//! TCP terminated by the sandbox's own kernel (docs/network.md "The fast
//! TCP path"): an nftables rule in the sandbox's network namespace, which
//! the sandbox cannot change, redirects every outgoing TCP connection to a
//! listening socket made there before the sandbox ran; the forwarder holds
//! that socket, accepts, reads where the connection was going
//! (SO_ORIGINAL_DST), decides it exactly as a SYN on the tap is decided,
//! and relays with splice(2) (no copy through this process) unless the
//! connection's bytes must be read (secret interception, placeholder scan).

use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::splice;
use super::tcp::{self, GateResult, RelayCtx};
use super::Shared;
use crate::events::{Denial, DenialKind};
use crate::intercept::Interception;
use crate::policy::{HostAddrs, Protocol, Target};
use crate::secrets::StreamScan;
use crate::sni;

/// netfilter's SO_ORIGINAL_DST (linux/netfilter_ipv4.h).
const SO_ORIGINAL_DST: libc::c_int = 80;

/// Where the sandbox meant to connect, as the NAT rule recorded it. A
/// connection made straight to the listener has itself as destination.
pub fn original_dst(s: &impl AsRawFd) -> io::Result<SocketAddrV4> {
    // SAFETY: sockaddr_in is plain data; getsockopt fills at most `len`.
    let mut sin: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: as above, with a valid pointer and length.
    let r = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::SOL_IP,
            SO_ORIGINAL_DST,
            (&mut sin as *mut libc::sockaddr_in).cast(),
            &mut len,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    if sin.sin_family != libc::AF_INET as libc::sa_family_t {
        return Err(io::Error::other("not IPv4"));
    }
    Ok(SocketAddrV4::new(
        Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)),
        u16::from_be(sin.sin_port),
    ))
}

/// One open redirected connection, counted against `max_tcp` while it
/// lives.
pub struct Slot(Arc<AtomicUsize>);

impl Slot {
    pub fn take(open: &Arc<AtomicUsize>) -> Slot {
        open.fetch_add(1, Ordering::SeqCst);
        Slot(open.clone())
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Ends `s` with a reset inside the sandbox.
pub fn refuse(s: TcpStream) {
    splice::reset_on_close(&s);
    drop(s);
}

/// What a connection's task needs from the forwarder.
pub struct Conn {
    pub shared: Arc<Shared>,
    pub host_addrs: HostAddrs,
    pub interception: Option<Arc<Interception>>,
    pub connect_timeout: Duration,
    pub dst: SocketAddr,
    pub slot: Slot,
}

/// An allowed connection, from the upstream connect to its end.
pub async fn serve(sandbox: TcpStream, c: Conn) {
    let _slot = &c.slot;
    let up = match super::upstream::connect(&c.shared.upstream, c.dst, c.connect_timeout).await {
        Ok(s) => s,
        // As the destination did (or would not answer): a reset.
        _ => return refuse(sandbox),
    };
    for s in [&sandbox, &up] {
        let _ = s.set_nodelay(true);
        keepalive(s);
    }
    let mut sandbox = sandbox;
    let (first, verdict) = gate(&mut sandbox).await;
    let name = match verdict {
        GateResult::Wait => unreachable!("gate decides"),
        GateResult::Refuse => {
            c.deny(None, "malformed TLS ClientHello".into());
            return refuse(sandbox);
        }
        GateResult::Pass(name) => name,
    };
    if let Some(n) = &name {
        if let Some(rule) = c.name_refused(n) {
            c.deny(Some(n.clone()), rule);
            return refuse(sandbox);
        }
    }
    let ctx = RelayCtx {
        interception: c.interception.clone(),
        events: c.shared.events.clone(),
        dst: c.dst,
    };
    let end = match (&c.interception, name) {
        (None, _) => splice::relay(&sandbox, &up, &first).await,
        (Some(_), None) => scanned(&sandbox, &up, first, &ctx).await,
        (Some(ix), Some(n)) if ix.secrets().intercepts(&n) => {
            intercepted(sandbox, up, first, &n, &ctx).await;
            return;
        }
        (Some(_), Some(_)) => splice::relay(&sandbox, &up, &first).await,
    };
    if end == splice::End::Reset {
        splice::reset_on_close(&sandbox);
        splice::reset_on_close(&up);
    }
}

/// A peer that went away without a word (a sandbox side whose socket
/// was closed and forgotten, an upstream host that vanished) is noticed
/// within about a minute, as the user-mode stack's timeout did: the relay
/// then ends and its slot is free.
fn keepalive(s: &TcpStream) {
    let set = |level, opt, v: libc::c_int| {
        // SAFETY: setsockopt with an int.
        unsafe {
            libc::setsockopt(
                s.as_raw_fd(),
                level,
                opt,
                (&v as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
    };
    set(libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1);
    set(libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, 30);
    set(libc::IPPROTO_TCP, libc::TCP_KEEPINTVL, 10);
    set(libc::IPPROTO_TCP, libc::TCP_KEEPCNT, 3);
}

impl Conn {
    fn deny(&self, name: Option<String>, rule: String) {
        let mut d = Denial::now(DenialKind::Sni, rule);
        d.protocol = Some(Protocol::Tcp);
        d.ip = Some(self.dst.ip());
        d.port = Some(self.dst.port());
        d.name = name;
        self.shared.events.deny(d);
    }

    /// The rule refusing a TLS server name for this destination, judged
    /// against the policy of this moment; None when it is allowed.
    fn name_refused(&self, n: &str) -> Option<String> {
        let policy = self.shared.current_policy();
        let names: Vec<&str> = if n.is_empty() { vec![] } else { vec![n] };
        let t = Target {
            ip: self.dst.ip(),
            names: &names,
            port: self.dst.port(),
            protocol: Protocol::Tcp,
        };
        let v = policy.decide(&t, &self.host_addrs);
        (!v.allowed).then(|| policy.describe(v.rule))
    }
}

/// The sandbox's first bytes, read until they are judged (at most one TLS
/// record), as the tap path's gate does.
async fn gate(s: &mut TcpStream) -> (Vec<u8>, GateResult) {
    let mut g = vec![0u8; sni::MAX_HELLO];
    let mut len = 0;
    loop {
        let closed = match s.read(&mut g[len..]).await {
            Ok(0) | Err(_) => true,
            Ok(n) => {
                len += n;
                false
            }
        };
        let v = match tcp::judge(&g[..len]) {
            GateResult::Wait if len == 0 && closed => GateResult::Pass(None),
            GateResult::Wait if closed || len == g.len() => GateResult::Refuse,
            v => v,
        };
        if !matches!(v, GateResult::Wait) {
            g.truncate(len);
            return (g, v);
        }
    }
}

/// Plaintext while the forwarder holds secrets: the sandbox's bytes are
/// read (to report placeholders) and written on; the host's are spliced.
async fn scanned(
    sandbox: &TcpStream,
    up: &TcpStream,
    first: Vec<u8>,
    ctx: &RelayCtx,
) -> splice::End {
    let Some(ix) = ctx.interception.as_ref() else {
        return splice::End::Reset;
    };
    let mut scan = StreamScan::default();
    let mut reported = Vec::new();
    let upward = async {
        let mut buf = first;
        let mut chunk = vec![0u8; tcp::CHUNK];
        loop {
            if !buf.is_empty() {
                tcp::report_plaintext(&mut scan, ix, &buf, &mut reported, ctx);
                write_all(up, &buf).await?;
            }
            let n = read_some(sandbox, &mut chunk).await?;
            if n == 0 {
                // SAFETY: shutdown on a socket we hold.
                unsafe { libc::shutdown(up.as_raw_fd(), libc::SHUT_WR) };
                return io::Result::Ok(());
            }
            buf = chunk[..n].to_vec();
        }
    };
    let downward = splice::one_way(up, sandbox);
    match tokio::try_join!(upward, downward) {
        Ok(_) => splice::End::Closed,
        Err(_) => splice::End::Reset,
    }
}

async fn read_some(s: &TcpStream, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        s.readable().await?;
        match s.try_read(buf) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            r => return r,
        }
    }
}

async fn write_all(s: &TcpStream, mut buf: &[u8]) -> io::Result<()> {
    while !buf.is_empty() {
        s.writable().await?;
        match s.try_write(buf) {
            Ok(n) => buf = &buf[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// TLS to a secret host: the interception serves the sandbox's side
/// through an in-memory pipe fed from the kernel socket (gate first).
async fn intercepted(
    sandbox: TcpStream,
    up: TcpStream,
    first: Vec<u8>,
    host: &str,
    ctx: &RelayCtx,
) {
    let Some(ix) = ctx.interception.clone() else {
        return refuse(sandbox);
    };
    let mut sandbox = sandbox;
    let failed = {
        let (ours, theirs) = tokio::io::duplex(tcp::CHUNK);
        let (mut pipe_r, mut pipe_w) = tokio::io::split(ours);
        let (mut sr, mut sw) = sandbox.split();
        let up_pump = async {
            pipe_w.write_all(&first).await?;
            tokio::io::copy(&mut sr, &mut pipe_w).await?;
            pipe_w.shutdown().await
        };
        // Ends at the pipe's end: once `serve` is over and dropped its
        // side, after everything it wrote toward the sandbox went out.
        let down_pump = async {
            tokio::io::copy(&mut pipe_r, &mut sw).await?;
            sw.shutdown().await
        };
        let work = ix.serve(host, up, theirs, &ctx.events, ctx.dst);
        tokio::pin!(up_pump, down_pump, work);
        let (mut up_done, mut down_done, mut result) = (false, false, None);
        loop {
            tokio::select! {
                r = &mut work, if result.is_none() => {
                    if r.is_err() || down_done {
                        break r.is_err();
                    }
                    result = Some(r);
                }
                r = &mut down_pump, if !down_done => {
                    down_done = true;
                    if let Some(r) = result.take() {
                        break r.is_err();
                    }
                    if r.is_err() {
                        break true;
                    }
                }
                _ = &mut up_pump, if !up_done => up_done = true,
            }
        }
    };
    if failed {
        refuse(sandbox);
    }
}

/// The nftables table that sends the sandbox's TCP to the listener on
/// 127.0.0.1:`port`, installed in the sandbox's network namespace before
/// anything runs there (the sandbox has no CAP_NET_ADMIN to change it).
/// Every new TCP connection that would leave the namespace is redirected;
/// loopback (the sandbox's own services, its own address) is left alone.
pub fn nft_ruleset(port: u16) -> String {
    format!(
        "table ip {TABLE} {{
  chain out {{
    type nat hook output priority -100; policy accept;
    oifname \"lo\" return
    meta l4proto tcp redirect to :{port}
  }}
}}
"
    )
}

/// The table's name in the sandbox's namespace.
pub const TABLE: &str = "lockbox_redirect";

/// Pending connections the listener queues for the forwarder.
const BACKLOG: libc::c_int = 64;

/// The redirect listener, bound to 127.0.0.1 on a port the kernel picks,
/// in the calling thread's network namespace, whose loopback is set to
/// carry the relayed bytes in larger segments.
pub fn listener() -> io::Result<std::net::TcpListener> {
    // SAFETY: plain socket calls; the fd is owned right away.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fresh fd.
    let l = unsafe { <std::net::TcpListener as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(Ipv4Addr::LOCALHOST).to_be(),
        },
        sin_zero: [0; 8],
    };
    // The helper makes it before the sandbox's loopback is up, when
    // 127.0.0.1 is not yet an address there.
    let one: libc::c_int = 1;
    // SAFETY: setsockopt with an int.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_IP,
            libc::IP_FREEBIND,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    // SAFETY: a valid sockaddr_in and its length.
    let r = unsafe {
        libc::bind(
            fd,
            (&sin as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    // SAFETY: listen on the socket just bound.
    if r != 0 || unsafe { libc::listen(fd, BACKLOG) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // Best effort: without it the path is only slower (see `loopback`).
    let _ = super::loopback::set_segment(super::loopback::SEGMENT);
    Ok(l)
}
