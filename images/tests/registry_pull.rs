//! Pulls from a real registry (Debian's docker-registry) on 127.0.0.1,
//! with the image pushed there by a real tool (skopeo).

mod common;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{two_layer_image, Env};
use lockbox_images::{Cancel, ImageError, PullOptions};

/// bcrypt of "secret" for user "lockbox" (registry htpasswd wants bcrypt).
/// Cost 4: the registry checks it on every request.
const HTPASSWD: &str = "lockbox:$2b$04$CNLAm/BCVctxjwAJ1w9OAO/SUUD9WO0R2WA0D0MP5hDEAaRMCz4wa\n";

struct Registry {
    child: Child,
    pub addr: String,
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start_registry(dir: &Path, with_auth: bool) -> Registry {
    std::fs::create_dir_all(dir.join("data")).unwrap();
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let auth = if with_auth {
        std::fs::write(dir.join("htpasswd"), HTPASSWD).unwrap();
        format!(
            "auth:\n  htpasswd:\n    realm: lockbox-test\n    path: {}\n",
            dir.join("htpasswd").display()
        )
    } else {
        String::new()
    };
    let config = format!(
        "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n{auth}",
        dir.join("data").display()
    );
    std::fs::write(dir.join("config.yml"), config).unwrap();
    let child = Command::new("docker-registry")
        .arg("serve")
        .arg(dir.join("config.yml"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("registry.log")).unwrap())
        .spawn()
        .expect("docker-registry (Debian package docker-registry, installed by scripts/deps.sh)");
    let reg = Registry { child, addr };
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(&reg.addr).is_err() {
        assert!(
            Instant::now() < deadline,
            "registry did not start: {}",
            std::fs::read_to_string(dir.join("registry.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    reg
}

fn skopeo_push(layout: &Path, tag: &str, dest: &str, creds: Option<&str>) {
    let mut cmd = Command::new("skopeo");
    cmd.args([
        "--insecure-policy",
        "copy",
        "--all",
        "--quiet",
        "--dest-tls-verify=false",
    ]);
    if let Some(c) = creds {
        cmd.args(["--dest-creds", c]);
    }
    let out = cmd
        .arg(format!("oci:{}:{tag}", layout.display()))
        .arg(format!("docker://{dest}"))
        .output()
        .expect("skopeo (Debian package skopeo, installed by scripts/deps.sh)");
    assert!(
        out.status.success(),
        "skopeo push failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn plain_http() -> PullOptions {
    PullOptions {
        plain_http: true,
        ..Default::default()
    }
}

fn layout(env: &Env) -> PathBuf {
    let l = env.path("layout");
    two_layer_image().write_oci_layout(&l, "demo");
    l
}

#[test]
fn pull_from_a_loopback_registry() {
    let env = Env::new();
    let reg = start_registry(&env.path("registry"), false);
    let layout = layout(&env);
    let reference = format!("{}/test/demo:1", reg.addr);
    skopeo_push(&layout, "demo", &reference, None);

    let store = env.store();
    let img = store
        .pull(&reference, &plain_http(), &Cancel::never())
        .unwrap();
    // The index was followed to this machine's platform: both layers,
    // whiteouts and the config applied.
    assert!(!img.rootfs.join("etc/a").exists());
    assert_eq!(
        std::fs::read_to_string(img.rootfs.join("data/f")).unwrap(),
        "second"
    );
    assert_eq!(
        std::fs::read_to_string(img.rootfs.join("data/g")).unwrap(),
        "first"
    );
    assert_eq!(img.config.workdir.as_deref(), Some("/srv"));
    assert_eq!(img.config.cmd, vec!["echo hello"]);
    assert_eq!(
        img.digest.hex(),
        common::sha256_hex(&two_layer_image().config)
    );
    // The other platform of the index is the one-layer image.
    let other = if cfg!(target_arch = "x86_64") {
        "linux/arm64"
    } else {
        "linux/amd64"
    };
    let foreign = PullOptions {
        platform: Some(other.into()),
        ..plain_http()
    };
    let home2 = env.path("home2");
    let store2 = lockbox_images::ImageStore::open(&home2).unwrap();
    let f = store2.pull(&reference, &foreign, &Cancel::never()).unwrap();
    assert!(f.rootfs.join("etc/a").exists() && !f.rootfs.join("opq/new").exists());
    let none = PullOptions {
        platform: Some("windows/amd64".into()),
        ..plain_http()
    };
    let err = store2
        .pull(&reference, &none, &Cancel::never())
        .unwrap_err();
    assert_eq!(err.code(), "not_found", "{err}");
    assert!(err.to_string().contains("linux/amd64"), "{err}");
    // Found again by name without the network.
    drop(reg);
    let again = store
        .resolve(&reference, &env.path("none"), &Cancel::never())
        .unwrap();
    assert_eq!(again, img);
    // Pulling again needs the registry for the manifest; with it gone, the
    // error is clear and the stored image is untouched.
    let err = store
        .pull(&reference, &plain_http(), &Cancel::never())
        .unwrap_err();
    assert_eq!(err.code(), "internal", "{err}");
    assert!(img.rootfs.join("data/f").exists());
}

#[test]
fn plain_http_only_when_asked_and_missing_tags_are_not_found() {
    let env = Env::new();
    let reg = start_registry(&env.path("registry"), false);
    let layout = layout(&env);
    let reference = format!("{}/test/demo:1", reg.addr);
    skopeo_push(&layout, "demo", &reference, None);
    let store = env.store();
    // https to a plain-http registry fails; it does not fall back.
    let err = store
        .pull(&reference, &PullOptions::default(), &Cancel::never())
        .unwrap_err();
    assert!(matches!(err, ImageError::Io { .. }), "{err}");
    assert!(store.list().unwrap().is_empty());
    let err = store
        .pull(
            &format!("{}/test/demo:nope", reg.addr),
            &plain_http(),
            &Cancel::never(),
        )
        .unwrap_err();
    assert_eq!(err.code(), "not_found", "{err}");
    // Pinned by digest: a wrong digest is refused before anything is stored.
    let wrong = format!("{}/test/demo@sha256:{}", reg.addr, "1".repeat(64));
    let err = store
        .pull(&wrong, &plain_http(), &Cancel::never())
        .unwrap_err();
    assert!(
        err.code() == "not_found" || matches!(err, ImageError::DigestMismatch { .. }),
        "{err}"
    );
    assert!(store.list().unwrap().is_empty());
    env.assert_outside_untouched();
}

#[test]
fn pull_with_basic_auth() {
    let env = Env::new();
    let reg = start_registry(&env.path("registry"), true);
    let layout = layout(&env);
    let reference = format!("{}/private/demo:1", reg.addr);
    skopeo_push(&layout, "demo", &reference, Some("lockbox:secret"));
    let store = env.store();
    let err = store
        .pull(&reference, &plain_http(), &Cancel::never())
        .unwrap_err();
    assert_eq!(err.code(), "permission_denied", "{err}");
    let wrong = PullOptions {
        credentials: Some(("lockbox".into(), "wrong".into())),
        plain_http: true,
        ..Default::default()
    };
    let err = store
        .pull(&reference, &wrong, &Cancel::never())
        .unwrap_err();
    assert_eq!(err.code(), "permission_denied", "{err}");
    let right = PullOptions {
        credentials: Some(("lockbox".into(), "secret".into())),
        plain_http: true,
        ..Default::default()
    };
    let img = store.pull(&reference, &right, &Cancel::never()).unwrap();
    assert_eq!(
        std::fs::read_to_string(img.rootfs.join("opq/new")).unwrap(),
        "new"
    );
}
