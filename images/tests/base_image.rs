//! The `base` release image: built by the repo's script, unpacked into the
//! store, resolved by name; rebuilds are cached and byte-identical.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

use common::{scripts_dir, Env};
use lockbox_images::{Cancel, ImageConfig};

fn build_base(out: &Path) -> String {
    let o = Command::new("bash")
        .arg(scripts_dir().join("build-base.sh"))
        .arg(out)
        .output()
        .expect("run build-base.sh");
    assert!(
        o.status.success(),
        "build-base.sh failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn base_image_builds_unpacks_and_resolves() {
    let env = Env::new();
    let out = env.path("images");
    build_base(&out);
    let store = env.store();
    let img = store.resolve("base", &out, &Cancel::never()).unwrap();
    let asset = std::fs::read(out.join("base.tar.zst")).unwrap();
    assert_eq!(img.digest.hex(), common::sha256_hex(&asset));
    assert!(img.rootfs.starts_with(env.home().join("images")));
    assert_eq!(img.config, ImageConfig::named_default());

    // A real busybox with its applets, runnable from the unpacked tree.
    let r = &img.rootfs;
    assert_eq!(
        std::fs::read_link(r.join("usr/bin/awk")).unwrap(),
        Path::new("../../bin/busybox")
    );
    assert_eq!(
        std::fs::read_link(r.join("bin/sh")).unwrap(),
        Path::new("busybox")
    );
    let o = Command::new(r.join("bin/busybox"))
        .args(["sh", "-c", "echo $((6*7))"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "42");
    assert!(std::fs::read_to_string(r.join("etc/passwd"))
        .unwrap()
        .starts_with("root:x:0:0:"));
    let tmp_mode = std::fs::metadata(r.join("tmp"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(tmp_mode & 0o7777, 0o1777);
    assert!(r.join("work").is_dir() && r.join("root").is_dir());

    // Warm path: the same tree, not unpacked again.
    let ino = std::fs::metadata(&img.rootfs).unwrap().ino();
    let again = store.resolve("base", &out, &Cancel::never()).unwrap();
    assert_eq!(again, img);
    assert_eq!(std::fs::metadata(&again.rootfs).unwrap().ino(), ino);
    // Another store handle (another process, in effect) finds it too.
    assert_eq!(
        env.store().resolve("base", &out, &Cancel::never()).unwrap(),
        img
    );

    let list = store.list().unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].names, vec!["base".to_string()]);
    assert!(list[0].stats.entries > 250, "{:?}", list[0].stats);
    // Lookup by digest.
    let by_digest = store
        .resolve(
            &img.digest.to_string(),
            Path::new("/nonexistent"),
            &Cancel::never(),
        )
        .unwrap();
    assert_eq!(by_digest, img);
}

#[test]
fn rebuild_with_nothing_changed_is_cached_and_deterministic() {
    let env = Env::new();
    let out = env.path("images");
    let first = build_base(&out);
    assert!(first.contains("base.tar.zst:"), "{first}");
    let asset = out.join("base.tar.zst");
    let before = std::fs::metadata(&asset).unwrap();
    let sha = common::sha256_hex(&std::fs::read(&asset).unwrap());

    let second = build_base(&out);
    assert!(
        second.contains("up to date"),
        "second build was not cached: {second}"
    );
    let after = std::fs::metadata(&asset).unwrap();
    assert_eq!(
        (before.ino(), before.mtime_nsec()),
        (after.ino(), after.mtime_nsec())
    );

    // Dropping the input hash forces a full rebuild: same bytes.
    std::fs::remove_file(out.join("base.inputs")).unwrap();
    let third = build_base(&out);
    assert!(third.contains("base.tar.zst:"), "{third}");
    assert_eq!(common::sha256_hex(&std::fs::read(&asset).unwrap()), sha);
}

#[test]
fn changed_asset_is_unpacked_again_under_its_new_digest() {
    let env = Env::new();
    let out = env.path("images");
    std::fs::create_dir_all(&out).unwrap();
    let v1 = common::zstd(&common::tar_bytes(&[common::E::File(
        "version", 0o644, b"1",
    )]));
    let v2 = common::zstd(&common::tar_bytes(&[common::E::File(
        "version", 0o644, b"2",
    )]));
    std::fs::write(out.join("tiny.tar.zst"), &v1).unwrap();
    let store = env.store();
    let a = store.resolve("tiny", &out, &Cancel::never()).unwrap();
    std::fs::write(out.join("tiny.tar.zst.new"), &v2).unwrap();
    std::fs::rename(out.join("tiny.tar.zst.new"), out.join("tiny.tar.zst")).unwrap();
    let b = store.resolve("tiny", &out, &Cancel::never()).unwrap();
    assert_ne!(a.digest, b.digest);
    assert_eq!(std::fs::read(b.rootfs.join("version")).unwrap(), b"2");
    // The old content is unnamed now: prune takes it, unless in use.
    let kept = store.prune(std::slice::from_ref(&a.digest)).unwrap();
    assert_eq!(kept.kept_in_use, vec![a.digest.clone()]);
    assert!(a.rootfs.exists());
    let pruned = store.prune(&[]).unwrap();
    assert_eq!(pruned.removed, vec![a.digest.clone()]);
    assert!(!a.rootfs.exists() && b.rootfs.exists());
}

#[test]
fn the_make_built_image_resolves_when_present() {
    // `make test-images` builds build/images first and points here.
    let Some(dir) = std::env::var_os("LOCKBOX_TEST_IMAGES") else {
        eprintln!("LOCKBOX_TEST_IMAGES not set: covered by base_image_builds_unpacks_and_resolves");
        return;
    };
    let env = Env::new();
    let img = env
        .store()
        .resolve("base", Path::new(&dir), &Cancel::never())
        .unwrap();
    assert!(img.rootfs.join("bin/busybox").is_file());
}
