//! `make bench-images`: unpack and pull timings for the named images, side
//! by side with Debian's tools (skopeo copy, umoci unpack) on the same
//! image in the same run. Timings are printed, never asserted.
//!
//! usage: images_bench <build/images>

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use lockbox_images::{Cancel, Digest, ImageStore, PullOptions};

const REPS: usize = 3;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn secs(d: Duration) -> String {
    format!("{:.3}s", d.as_secs_f64())
}

fn time<T>(f: impl FnOnce() -> T) -> (Duration, T) {
    let t = Instant::now();
    let r = f();
    (t.elapsed(), r)
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// An OCI layout with one gzip layer holding the named image's tar.
fn oci_layout_from_asset(asset: &Path, dir: &Path) -> u64 {
    let mut tar = Vec::new();
    zstd::stream::read::Decoder::new(std::fs::File::open(asset).unwrap())
        .unwrap()
        .read_to_end(&mut tar)
        .unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
    gz.write_all(&tar).unwrap();
    let layer = gz.finish().unwrap();
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let put = |data: &[u8]| {
        let d = Digest::of_bytes(data);
        std::fs::write(blobs.join(d.hex()), data).unwrap();
        d
    };
    let config = format!(
        r#"{{"architecture":"amd64","os":"linux","config":{{"Env":["PATH=/usr/bin:/bin"],"Cmd":["/bin/sh"]}},"rootfs":{{"type":"layers","diff_ids":["{}"]}}}}"#,
        Digest::of_bytes(&tar)
    );
    let c = put(config.as_bytes());
    let l = put(&layer);
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{c}","size":{}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{l}","size":{}}}]}}"#,
        config.len(),
        layer.len()
    );
    let m = put(manifest.as_bytes());
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    std::fs::write(
        dir.join("index.json"),
        format!(
            r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{m}","size":{},"annotations":{{"org.opencontainers.image.ref.name":"bench"}}}}]}}"#,
            manifest.len()
        ),
    )
    .unwrap();
    tar.len() as u64
}

struct Registry(Child);
impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_registry(dir: &Path) -> (Registry, String) {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    std::fs::create_dir_all(dir.join("data")).unwrap();
    let cfg = dir.join("config.yml");
    std::fs::write(
        &cfg,
        format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {addr}\n",
            dir.join("data").display()
        ),
    )
    .unwrap();
    let child = Command::new("docker-registry")
        .arg("serve")
        .arg(&cfg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("docker-registry");
    let reg = Registry(child);
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(&addr).is_err() {
        assert!(Instant::now() < deadline, "registry did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    (reg, addr)
}

fn bench_image(images: &Path, name: &str, work: &Path, registry: Option<&str>) {
    let asset = images.join(format!("{name}.tar.zst"));
    if !asset.is_file() {
        println!(
            "{name}: {} missing, skipped (make image-{name})",
            asset.display()
        );
        return;
    }
    let packed = std::fs::metadata(&asset).unwrap().len();
    println!("\n== {name}: {:.1} MiB packed", packed as f64 / 1048576.0);

    // Cold import of the release asset into an empty store.
    let mut cold = Vec::new();
    let mut warm = Vec::new();
    let mut bytes = 0;
    for i in 0..REPS {
        let home = work.join(format!("{name}-asset-{i}"));
        let store = ImageStore::open(&home).unwrap();
        let (d, img) = time(|| store.resolve(name, images, &Cancel::never()).unwrap());
        cold.push(d);
        bytes = store.inspect(name).unwrap().stats.bytes;
        let (d, again) = time(|| store.resolve(name, images, &Cancel::never()).unwrap());
        assert_eq!(again.rootfs, img.rootfs);
        warm.push(d);
        std::fs::remove_dir_all(&home).unwrap();
    }
    let cold = median(cold);
    println!(
        "asset unpack (cold resolve): {} for {:.1} MiB of files = {:.0} MiB/s",
        secs(cold),
        bytes as f64 / 1048576.0,
        bytes as f64 / 1048576.0 / cold.as_secs_f64()
    );
    // The same unpack by GNU tar (no path checks, no hashing, no store).
    let mut gnu = Vec::new();
    for i in 0..REPS {
        let dest = work.join(format!("{name}-gnutar-{i}"));
        std::fs::create_dir_all(&dest).unwrap();
        let (d, _) = time(|| {
            run(Command::new("sh").arg("-c").arg(format!(
                "zstd -dc '{}' | tar -x -C '{}'",
                asset.display(),
                dest.display()
            )))
        });
        gnu.push(d);
        std::fs::remove_dir_all(&dest).unwrap();
    }
    let gnu = median(gnu);
    println!(
        "zstd -dc | tar -x (GNU tar, same archive): {}  (lockbox/that = {:.2})",
        secs(gnu),
        cold.as_secs_f64() / gnu.as_secs_f64()
    );
    println!(
        "warm resolve (cached image, a stat): {:.1} us",
        median(warm).as_secs_f64() * 1e6
    );

    // The same content as an OCI layout (one gzip layer).
    let layout = work.join(format!("{name}-layout"));
    oci_layout_from_asset(&asset, &layout);
    let mut imports = Vec::new();
    for i in 0..REPS {
        let home = work.join(format!("{name}-oci-{i}"));
        let store = ImageStore::open(&home).unwrap();
        let (d, _) = time(|| {
            store
                .import_oci_layout(&layout, None, None, &Cancel::never())
                .unwrap()
        });
        imports.push(d);
        std::fs::remove_dir_all(&home).unwrap();
    }
    println!("OCI layout import (gzip layer): {}", secs(median(imports)));

    let Some(addr) = registry else { return };
    let reference = format!("{addr}/bench/{name}:1");
    run(Command::new("skopeo")
        .args([
            "--insecure-policy",
            "copy",
            "--quiet",
            "--dest-tls-verify=false",
        ])
        .arg(format!("oci:{}:bench", layout.display()))
        .arg(format!("docker://{reference}")));
    let opts = PullOptions {
        plain_http: true,
        ..Default::default()
    };
    let (mut ours, mut skopeo, mut umoci) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..REPS {
        let home = work.join(format!("{name}-pull-{i}"));
        let store = ImageStore::open(&home).unwrap();
        let (d, _) = time(|| store.pull(&reference, &opts, &Cancel::never()).unwrap());
        ours.push(d);
        std::fs::remove_dir_all(&home).unwrap();

        let dest = work.join(format!("{name}-skopeo-{i}"));
        let (d, _) = time(|| {
            run(Command::new("skopeo")
                .args([
                    "--insecure-policy",
                    "copy",
                    "--quiet",
                    "--src-tls-verify=false",
                ])
                .arg(format!("docker://{reference}"))
                .arg(format!("oci:{}:bench", dest.display())))
        });
        skopeo.push(d);
        if have("umoci") {
            let bundle = work.join(format!("{name}-bundle-{i}"));
            let (d, _) = time(|| {
                run(Command::new("umoci")
                    .args(["unpack", "--image"])
                    .arg(format!("{}:bench", dest.display()))
                    .arg(&bundle))
            });
            umoci.push(d);
            std::fs::remove_dir_all(&bundle).unwrap();
        }
        std::fs::remove_dir_all(&dest).unwrap();
    }
    let (ours, skopeo) = (median(ours), median(skopeo));
    println!(
        "pull+unpack from 127.0.0.1 registry (lockbox): {}",
        secs(ours)
    );
    println!(
        "skopeo copy docker:// -> oci: (download only, no unpack): {}  (lockbox/skopeo = {:.2})",
        secs(skopeo),
        ours.as_secs_f64() / skopeo.as_secs_f64()
    );
    if !umoci.is_empty() {
        let both = skopeo + median(umoci);
        println!(
            "skopeo copy + umoci unpack (the same end state): {}  (lockbox/that = {:.2})",
            secs(both),
            ours.as_secs_f64() / both.as_secs_f64()
        );
    }
}

fn main() {
    let images = PathBuf::from(
        std::env::args()
            .nth(1)
            .unwrap_or_else(|| "build/images".into()),
    );
    let work = tempfile::tempdir().unwrap();
    println!(
        "images bench: median of {REPS} runs, 2-core machine, {}",
        images.display()
    );
    let registry = if have("docker-registry") && have("skopeo") {
        Some(start_registry(&work.path().join("registry")))
    } else {
        println!("docker-registry/skopeo not installed: registry comparison skipped");
        None
    };
    let addr = registry.as_ref().map(|(_, a)| a.as_str());
    for name in ["base", "python"] {
        bench_image(&images, name, work.path(), addr);
    }
}
