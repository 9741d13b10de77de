//! Archives written by a real tool (skopeo, from Debian), not by us: a
//! `docker-archive:` tarball and an `oci:` layout copied from our layout.

mod common;

use std::path::Path;
use std::process::Command;

use common::{two_layer_image, Env};
use lockbox_images::Cancel;

fn skopeo_copy(src: &str, dst: &str) {
    let out = Command::new("skopeo")
        .args(["--insecure-policy", "copy", "--quiet", src, dst])
        .output()
        .expect("skopeo (Debian package skopeo, installed by scripts/deps.sh)");
    assert!(
        out.status.success(),
        "skopeo copy {src} {dst}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn assert_content(rootfs: &Path) {
    assert!(!rootfs.join("etc/a").exists());
    assert!(!rootfs.join("opq/old").exists());
    assert_eq!(
        std::fs::read_to_string(rootfs.join("data/f")).unwrap(),
        "second"
    );
    assert_eq!(
        std::fs::read_to_string(rootfs.join("data/g")).unwrap(),
        "first"
    );
    assert_eq!(
        std::fs::read_to_string(rootfs.join("ro/added")).unwrap(),
        "later layer"
    );
}

#[test]
fn skopeo_docker_archive_imports() {
    let env = Env::new();
    let layout = env.path("layout");
    let image = two_layer_image();
    image.write_oci_layout(&layout, "demo");
    let tarball = env.path("saved.tar");
    skopeo_copy(
        &format!("oci:{}:demo", layout.display()),
        &format!("docker-archive:{}:example.com/demo:7", tarball.display()),
    );
    let store = env.store();
    let img = store
        .import_docker_archive(&tarball, Some("example.com/demo:7"), None, &Cancel::never())
        .unwrap();
    assert_content(&img.rootfs);
    assert_eq!(img.config.entrypoint, vec!["/bin/sh", "-c"]);
    assert_eq!(
        store.inspect("example.com/demo:7").unwrap().digest,
        img.digest
    );
    env.assert_outside_untouched();
}

#[test]
fn skopeo_oci_layout_imports() {
    let env = Env::new();
    let layout = env.path("layout");
    two_layer_image().write_oci_layout(&layout, "demo");
    let copied = env.path("copied");
    // skopeo rewrites the layout (its own index.json, recompressed or not).
    skopeo_copy(
        &format!("oci:{}:demo", layout.display()),
        &format!("oci:{}:v1", copied.display()),
    );
    let img = env
        .store()
        .import_oci_layout(&copied, Some("v1"), Some("copied"), &Cancel::never())
        .unwrap();
    assert_content(&img.rootfs);
    assert_eq!(img.config.user.as_deref(), Some("1000:1000"));
}
