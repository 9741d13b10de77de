//! Store behaviour: concurrent unpacks, crash leftovers, cancellation,
//! remove/prune with images in use, rootless operation.

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;

use common::{tar_bytes, two_layer_image, Env, E};
use lockbox_images::{Cancel, ImageError, ImageStore, Ownership};

fn tiny_asset(dir: &Path, name: &str, content: &[u8]) {
    std::fs::create_dir_all(dir).unwrap();
    let data = common::zstd(&tar_bytes(&[
        E::Dir("etc", 0o755),
        E::File("etc/v", 0o644, content),
    ]));
    std::fs::write(dir.join(format!("{name}.tar.zst")), data).unwrap();
}

#[test]
fn concurrent_resolves_unpack_once() {
    let env = Env::new();
    let assets = env.path("assets");
    let entries: Vec<String> = (0..400).map(|i| format!("d/f{i}")).collect();
    let mut list = vec![E::Dir("d", 0o755)];
    list.extend(entries.iter().map(|n| E::File(n, 0o644, b"some bytes")));
    std::fs::create_dir_all(&assets).unwrap();
    std::fs::write(assets.join("many.tar.zst"), common::zstd(&tar_bytes(&list))).unwrap();

    let results: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let home = env.home();
                let assets = assets.clone();
                // A store handle each, as separate processes would have.
                s.spawn(move || {
                    ImageStore::open(&home)
                        .unwrap()
                        .resolve("many", &assets, &Cancel::never())
                        .unwrap()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(results.windows(2).all(|w| w[0] == w[1]));
    let images: Vec<_> = std::fs::read_dir(env.home().join("images"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.len() >= 64)
        .collect();
    assert_eq!(images.len(), 1, "{images:?}");
    assert_eq!(
        std::fs::read_dir(results[0].rootfs.join("d"))
            .unwrap()
            .count(),
        400
    );
    env.assert_outside_untouched();
}

#[test]
fn crash_leftovers_are_recovered() {
    let env = Env::new();
    let assets = env.path("assets");
    tiny_asset(&assets, "tiny", b"1");
    let store = env.store();
    let img = store.resolve("tiny", &assets, &Cancel::never()).unwrap();
    // A crash after the rename but before the marker: the dir is there,
    // the marker is not, and a half-written file is inside.
    let image_dir = img.rootfs.parent().unwrap().to_path_buf();
    std::fs::remove_file(image_dir.join(".complete")).unwrap();
    std::fs::write(img.rootfs.join("etc/v"), b"half").unwrap();
    // A crash mid-unpack: a temp dir.
    std::fs::create_dir_all(env.home().join("images/tmp/999-1-1/rootfs")).unwrap();

    assert_eq!(
        store
            .resolve(&img.digest.to_string(), &assets, &Cancel::never())
            .unwrap_err()
            .code(),
        "not_found"
    );
    let again = store.resolve("tiny", &assets, &Cancel::never()).unwrap();
    assert_eq!(again.rootfs, img.rootfs);
    assert_eq!(std::fs::read(again.rootfs.join("etc/v")).unwrap(), b"1");
    let report = store.prune(&[]).unwrap();
    assert_eq!(report.removed_temp_dirs, 1);
    assert!(report.removed.is_empty(), "a named image was pruned");
    env.assert_outside_untouched();
}

#[test]
fn canceled_unpack_leaves_nothing() {
    let env = Env::new();
    let assets = env.path("assets");
    tiny_asset(&assets, "tiny", b"1");
    let cancel = Cancel::never();
    cancel.cancel();
    let err = env.store().resolve("tiny", &assets, &cancel).unwrap_err();
    assert!(matches!(err, ImageError::Canceled));
    assert_eq!(err.code(), "canceled");
    assert!(env.store().list().unwrap().is_empty());
    env.assert_outside_untouched();
}

#[test]
fn remove_respects_names_and_images_in_use() {
    let env = Env::new();
    let store = env.store();
    let layout = env.path("layout");
    two_layer_image().write_oci_layout(&layout, "demo:1");
    let img = store
        .import_oci_layout(&layout, None, None, &Cancel::never())
        .unwrap();
    store
        .import_oci_layout(&layout, None, Some("alias"), &Cancel::never())
        .unwrap();

    // Dropping one of two names keeps the content.
    store.remove("alias", &[]).unwrap();
    assert!(img.rootfs.exists());
    assert_eq!(store.inspect("alias").unwrap_err().code(), "not_found");
    // The last name of an image in use: refused, nothing changed.
    let err = store
        .remove("demo:1", std::slice::from_ref(&img.digest))
        .unwrap_err();
    assert_eq!(err.code(), "unavailable");
    assert_eq!(store.inspect("demo:1").unwrap().digest, img.digest);
    // Prune never takes a named image.
    assert!(store.prune(&[]).unwrap().removed.is_empty());
    store.remove("demo:1", &[]).unwrap();
    assert!(!img.rootfs.exists());
    assert!(store.list().unwrap().is_empty());
    assert_eq!(store.remove("demo:1", &[]).unwrap_err().code(), "not_found");
    assert_eq!(
        store.inspect("sha256:zz").unwrap_err().code(),
        "invalid_argument"
    );
}

#[test]
fn bad_names_are_invalid_arguments() {
    let env = Env::new();
    let store = env.store();
    for bad in ["", "a b", "x\n", "tab\t"] {
        let err = store
            .resolve(bad, &env.path("x"), &Cancel::never())
            .unwrap_err();
        assert_eq!(err.code(), "invalid_argument", "{bad:?}: {err}");
    }
    // A name that cannot be an asset file still cannot escape images_dir.
    let err = store
        .resolve("../outside/secret", &env.path("x"), &Cancel::never())
        .unwrap_err();
    assert_eq!(err.code(), "not_found", "{err}");
}

/// Runs the child half of `rootless_unpack_as_nobody` as uid 65534.
#[test]
fn rootless_unpack_as_nobody() {
    if let Ok(dir) = std::env::var("LOCKBOX_IMAGES_ROOTLESS_CHILD") {
        return rootless_child(Path::new(&dir));
    }
    if Ownership::for_current_user() == Ownership::Caller {
        eprintln!("not root: this whole run is rootless already");
        return;
    }
    let dir = tempfile::tempdir_in("/tmp").unwrap();
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    std::os::unix::fs::chown(dir.path(), Some(65534), Some(65534)).unwrap();
    // A copy of this test binary nobody can reach (the build tree's
    // parents may be closed to other users).
    let exe = dir.path().join("test-binary");
    std::fs::copy(std::env::current_exe().unwrap(), &exe).unwrap();
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(&exe)
        .args(["--exact", "rootless_unpack_as_nobody", "--nocapture"])
        .env("LOCKBOX_IMAGES_ROOTLESS_CHILD", dir.path())
        .output()
        .expect("setpriv");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "rootless child failed:\n{text}");
    assert!(text.contains("rootless child ok"), "{text}");
}

fn rootless_child(dir: &Path) {
    assert_eq!(Ownership::for_current_user(), Ownership::Caller);
    let home = dir.join("home");
    let layout = dir.join("layout");
    two_layer_image().write_oci_layout(&layout, "demo:1");
    let store = ImageStore::open(&home).unwrap();
    let img = store
        .import_oci_layout(&layout, None, None, &Cancel::never())
        .unwrap();
    // Everything belongs to the caller, whatever the image said.
    let owned = std::fs::metadata(img.rootfs.join("owned")).unwrap();
    assert_eq!((owned.uid(), owned.gid()), (65534, 65534));
    // The image's read-only dir is read-only, and still removable.
    assert_eq!(
        std::fs::metadata(img.rootfs.join("ro")).unwrap().mode() & 0o777,
        0o555
    );
    store.remove("demo:1", &[]).unwrap();
    assert!(!img.rootfs.exists());
    println!("rootless child ok");
}
