//! Published ports through the forwarder: a listening socket in the
//! "host" namespace (bound by the test, as the helper binds it), relayed
//! into a server in the sandbox's namespace through the tap. Needs root
//! (network namespaces, /dev/net/tun).

mod lab;

use std::collections::HashSet;
use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use lab::{config, in_ns, Topology};
use lockbox_net::forwarder::{Forwarder, Handle, Limits, Published};
use lockbox_net::policy::Policy;

const MAX_CONNECTIONS: usize = 64;

/// A topology whose forwarder relays `127.0.0.1:<returned port>` in the
/// outside namespace to the sandbox's `guest_port`; deny-all policy.
fn published(guest_port: u16) -> (Topology, Handle, u16, thread::JoinHandle<()>) {
    let (net, tap) = Topology::new();
    let listener = in_ns(&net.outside, || TcpListener::bind("127.0.0.1:0").unwrap());
    let port = listener.local_addr().unwrap().port();
    let (fwd, handle) = Forwarder::new(
        tap,
        config(Limits::default()),
        Policy::from_json(r#"{"rules":[]}"#).unwrap(),
    );
    let fwd = fwd
        .with_redirect(net.redirect())
        .with_published(vec![Published {
            listener,
            guest: SocketAddrV4::new(Ipv4Addr::new(10, 0, 2, 100), guest_port),
        }]);
    let out = net.outside.clone();
    let t = thread::spawn(move || {
        in_ns(&out, move || fwd.run().expect("forwarder"));
    });
    (net, handle, port, t)
}

/// An echo server in the sandbox's namespace that records its peers.
fn echo_server(net: &Topology, port: u16) -> Arc<Mutex<Vec<SocketAddr>>> {
    let peers = Arc::new(Mutex::new(Vec::new()));
    let l = net.inside(move || TcpListener::bind(("0.0.0.0", port)).unwrap());
    let seen = peers.clone();
    thread::spawn(move || {
        for c in l.incoming() {
            let Ok(mut c) = c else { return };
            seen.lock().unwrap().push(c.peer_addr().unwrap());
            thread::spawn(move || {
                let mut r = c.try_clone().unwrap();
                let _ = std::io::copy(&mut r, &mut c);
                let _ = c.shutdown(Shutdown::Write);
            });
        }
    });
    peers
}

fn connect(net: &Topology, port: u16) -> TcpStream {
    in_ns(&net.outside, move || {
        TcpStream::connect(("127.0.0.1", port)).expect("connect to the published port")
    })
}

#[test]
fn a_published_port_reaches_the_sandbox_and_back() {
    let (net, handle, port, t) = published(8080);
    let peers = echo_server(&net, 8080);
    let sent: Vec<u8> = (0..8u32 << 20).map(|i| (i * 7 + i / 251) as u8).collect();
    let mut c = connect(&net, port);
    c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut w = c.try_clone().unwrap();
    let data = sent.clone();
    let writer = thread::spawn(move || {
        w.write_all(&data).unwrap();
        w.shutdown(Shutdown::Write).unwrap();
    });
    let mut got = Vec::new();
    c.read_to_end(&mut got).expect("echo back");
    writer.join().unwrap();
    assert!(got == sent, "{} of {} bytes back", got.len(), sent.len());
    // The sandbox sees its gateway as the peer, from the ephemeral range.
    let p = peers.lock().unwrap()[0];
    assert_eq!(p.ip(), Ipv4Addr::new(10, 0, 2, 2));
    assert!(p.port() >= 49152, "{p}");
    handle.stop();
    t.join().unwrap();
}

#[test]
fn a_closed_guest_port_resets_the_client_fast() {
    let (net, handle, port, t) = published(8081);
    let start = Instant::now();
    let mut c = connect(&net, port);
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut b = [0u8; 16];
    let r = c.read(&mut b);
    assert!(
        matches!(&r, Err(e) if e.kind() == ErrorKind::ConnectionReset),
        "{r:?}"
    );
    // Under the 5 s read timeout (and the forwarder's 10 s connect
    // timeout), with room for a loaded machine (was 1 s).
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );
    // Control: with a server there, the same port is served.
    echo_server(&net, 8081);
    let mut c = connect(&net, port);
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    c.write_all(b"ping").unwrap();
    c.read_exact(&mut b[..4]).unwrap();
    assert_eq!(&b[..4], b"ping");
    handle.stop();
    t.join().unwrap();
}

#[test]
fn open_connections_are_bounded() {
    let (net, handle, port, t) = published(8082);
    let peers = echo_server(&net, 8082);
    let extra = 8;
    let mut clients: Vec<TcpStream> = (0..MAX_CONNECTIONS + extra)
        .map(|_| connect(&net, port))
        .collect();
    let reached = |want: usize| {
        let deadline = Instant::now() + Duration::from_secs(5);
        while peers.lock().unwrap().len() < want && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(20));
        }
        peers.lock().unwrap().len()
    };
    assert_eq!(
        reached(MAX_CONNECTIONS),
        MAX_CONNECTIONS,
        "control: the first 64"
    );
    thread::sleep(Duration::from_millis(300));
    assert_eq!(
        peers.lock().unwrap().len(),
        MAX_CONNECTIONS,
        "more than {MAX_CONNECTIONS} connections into the sandbox at once"
    );
    // Closing some lets the waiting ones in (from the kernel's backlog).
    for c in clients.drain(..extra) {
        drop(c);
    }
    assert_eq!(reached(MAX_CONNECTIONS + extra), MAX_CONNECTIONS + extra);
    let ports: HashSet<u16> = peers.lock().unwrap().iter().map(|p| p.port()).collect();
    assert_eq!(
        ports.len(),
        MAX_CONNECTIONS + extra,
        "a gateway port used twice at once"
    );
    handle.stop();
    t.join().unwrap();
}
