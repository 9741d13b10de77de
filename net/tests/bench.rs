//! Forwarder figures against the direct path (`make bench-net`): 1 GiB
//! download throughput, added connection latency (p50), DNS answer time,
//! and memory. The direct path is the forwarder's own namespace talking
//! to the same test host, i.e. what the host socket alone costs.

mod lab;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use lab::{resolve, Lab, BULK};
use lockbox_net::forwarder::loopback;
use lockbox_net::policy::Policy;

const GIB: u64 = 1 << 30;

fn download(bytes: u64) -> f64 {
    let a: SocketAddr = BULK.parse().unwrap();
    let mut c = TcpStream::connect_timeout(&a, Duration::from_secs(5)).unwrap();
    let t0 = Instant::now();
    c.write_all(&bytes.to_be_bytes()).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    let mut got = 0u64;
    while got < bytes {
        let n = c
            .read(&mut buf)
            .unwrap_or_else(|e| panic!("download: {e} after {got} of {bytes} bytes"));
        assert!(n > 0, "download cut short at {got}");
        got += n as u64;
    }
    got as f64 / t0.elapsed().as_secs_f64() / (1u64 << 20) as f64
}

fn connect_p50(n: usize) -> Duration {
    let a: SocketAddr = "198.51.100.10:80".parse().unwrap();
    let mut t: Vec<Duration> = (0..n)
        .map(|_| {
            let t0 = Instant::now();
            let c = TcpStream::connect_timeout(&a, Duration::from_secs(5)).unwrap();
            let d = t0.elapsed();
            drop(c);
            d
        })
        .collect();
    t.sort();
    t[n / 2]
}

/// CPU seconds this process (the test hosts, the forwarder and the
/// client are all its threads) has used: per GiB moved, a figure a busy
/// machine changes far less than throughput.
fn cpu_s() -> f64 {
    // SAFETY: getrusage fills the struct.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let t = |v: libc::timeval| v.tv_sec as f64 + v.tv_usec as f64 / 1e6;
    t(u.ru_utime) + t(u.ru_stime)
}

/// Throughput in MiB/s and CPU seconds per GiB of one download.
fn measured(bytes: u64, f: impl FnOnce() -> f64) -> (f64, f64) {
    let c0 = cpu_s();
    let r = f();
    (r, (cpu_s() - c0) / (bytes as f64 / GIB as f64))
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn rss_kib() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[test]
#[ignore = "benchmark: make bench-net"]
fn bench_forwarder_against_direct() {
    let rss0 = rss_kib();
    let policy = Policy::from_json(
        r#"{"rules":[{"action":"allow","domain":"api.test"},{"action":"allow","cidr":"198.51.100.10/32"}]}"#,
    )
    .unwrap();
    let lab = Lab::new(policy);
    let rss_idle = rss_kib();

    let bytes = std::env::var("LOCKBOX_NET_BENCH_BYTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(GIB);
    let rounds: usize = std::env::var("LOCKBOX_NET_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    // The user-mode path alone (no redirect rule), in a lab of its own:
    // what TCP cost before the kernel path, measured in the same sitting.
    let tap_lab = Lab::tap_only(
        Policy::from_json(r#"{"rules":[{"action":"allow","cidr":"198.51.100.10/32"}]}"#).unwrap(),
    );
    // The kernel path as it was before loopback's larger segments (64
    // KiB, the kernel's default), in the same lab: set before each of its
    // rounds, put back after (a connection takes the size it starts with).
    let segment = |s: u32| lab.inside(move || loopback::set_segment(s).expect("loopback segment"));
    // Interleaved so that a busy moment on the machine lands on every
    // path alike; medians, and the ratio of each round.
    let (mut direct, mut through, mut tap) = (Vec::new(), Vec::new(), Vec::new());
    let (mut cpu_direct, mut cpu_through, mut cpu_tap) = (Vec::new(), Vec::new(), Vec::new());
    let (mut small, mut cpu_small) = (Vec::new(), Vec::new());
    let (mut ratios, mut ratios_small) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        let d = measured(bytes, || lab.outside(move || download(bytes)));
        let t = measured(bytes, || lab.inside(move || download(bytes)));
        segment(65536);
        let s = measured(bytes, || lab.inside(move || download(bytes)));
        segment(loopback::SEGMENT);
        let u = measured(bytes, || tap_lab.inside(move || download(bytes)));
        ratios.push(t.0 / d.0);
        ratios_small.push(s.0 / d.0);
        direct.push(d.0);
        through.push(t.0);
        small.push(s.0);
        tap.push(u.0);
        cpu_direct.push(d.1);
        cpu_through.push(t.1);
        cpu_small.push(s.1);
        cpu_tap.push(u.1);
    }
    drop(tap_lab);
    let connect_direct = lab.outside(|| connect_p50(200));
    let connect_through = lab.inside(|| connect_p50(200));
    let direct = (median(&mut direct), connect_direct);
    let through = (median(&mut through), connect_through);
    let tap = median(&mut tap);
    let ratio = median(&mut ratios);
    let small = median(&mut small);
    let ratio_small = median(&mut ratios_small);
    let rounds_of = |v: &[f64]| {
        v.iter()
            .map(|r| format!("{r:.2}"))
            .collect::<Vec<_>>()
            .join(" ")
    };

    let dns = lab.inside(|| {
        let mut allowed: Vec<Duration> = (0..200)
            .map(|_| {
                let t0 = Instant::now();
                resolve("api.test");
                t0.elapsed()
            })
            .collect();
        let mut denied: Vec<Duration> = (0..200)
            .map(|i| {
                let t0 = Instant::now();
                resolve(&format!("x{i}.denied.test"));
                t0.elapsed()
            })
            .collect();
        allowed.sort();
        denied.sort();
        (allowed[100], denied[100])
    });

    // Memory with 100 open, idle connections.
    let (tx, rx) = std::sync::mpsc::channel();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let sb = lab.sandbox.clone();
    let holder = std::thread::spawn(move || {
        lab::in_ns(&sb, move || {
            let a: SocketAddr = "198.51.100.10:80".parse().unwrap();
            let conns: Vec<_> = (0..100)
                .map(|_| TcpStream::connect_timeout(&a, Duration::from_secs(5)).unwrap())
                .collect();
            tx.send(()).unwrap();
            let _ = done_rx.recv();
            drop(conns);
        })
    });
    rx.recv().unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let rss_conns = rss_kib();
    done_tx.send(()).unwrap();
    holder.join().unwrap();

    println!("net bench (through the forwarder vs the direct path):");
    println!(
        "  {} MiB download, median of {rounds} interleaved rounds: {:.0} MiB/s through (kernel path), {:.0} MiB/s direct, {:.0} MiB/s through the tap alone; ratio through/direct median {:.2}x (rounds: {})",
        bytes >> 20,
        through.0,
        direct.0,
        tap,
        ratio,
        rounds_of(&ratios)
    );
    println!(
        "  kernel path with 64 KiB loopback segments (before): {small:.0} MiB/s, ratio median {ratio_small:.2}x (rounds: {})",
        rounds_of(&ratios_small)
    );
    println!(
        "  CPU per GiB (all threads: hosts, forwarder, client), median: {:.2} s through (kernel path), {:.2} s with 64 KiB loopback segments, {:.2} s direct, {:.2} s through the tap alone",
        median(&mut cpu_through),
        median(&mut cpu_small),
        median(&mut cpu_direct),
        median(&mut cpu_tap)
    );
    println!(
        "  connect p50: {:?} through, {:?} direct (added {:?})",
        through.1,
        direct.1,
        through.1.saturating_sub(direct.1)
    );
    println!(
        "  DNS p50: allowed name {:?} (upstream round trip), denied name {:?} (local NXDOMAIN)",
        dns.0, dns.1
    );
    println!(
        "  memory (test process RSS): +{} KiB for an idle forwarder and its lab, +{} KiB more with 100 open connections",
        rss_idle.saturating_sub(rss0),
        rss_conns.saturating_sub(rss_idle)
    );
}
