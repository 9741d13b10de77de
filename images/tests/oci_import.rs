//! OCI image layouts and `docker save` tarballs: layers applied in order
//! with whiteouts, opaque dirs and hard links; the image config applied;
//! every blob checked.

mod common;

use std::os::unix::fs::MetadataExt;

use common::{two_layer_image, Env};
use lockbox_images::{Cancel, ImageError, Ownership, ResolvedImage};

fn assert_two_layer_result(img: &ResolvedImage) {
    let r = &img.rootfs;
    let read = |p: &str| std::fs::read_to_string(r.join(p)).unwrap();
    assert!(!r.join("etc/a").exists(), "whiteout did not remove etc/a");
    assert!(!r.join("etc/.wh.a").exists(), "whiteout marker was written");
    assert_eq!(read("etc/b"), "b");
    assert!(!r.join("opq/old").exists(), "opaque dir kept a lower entry");
    assert_eq!(read("opq/new"), "new");
    assert!(!r.join("opq/.wh..wh..opq").exists());
    // data/g was a hard link to the lower data/f: replacing data/f must not
    // change it.
    assert_eq!(read("data/f"), "second");
    assert_eq!(read("data/g"), "first");
    assert_eq!(read("ro/added"), "later layer");
    assert_eq!(
        std::fs::metadata(r.join("ro")).unwrap().mode() & 0o777,
        0o555
    );
    let c = &img.config;
    assert_eq!(c.env, vec!["PATH=/bin", "GREETING=hi"]);
    assert_eq!(c.workdir.as_deref(), Some("/srv"));
    assert_eq!(c.user.as_deref(), Some("1000:1000"));
    assert_eq!(c.entrypoint, vec!["/bin/sh", "-c"]);
    assert_eq!(c.cmd, vec!["echo hello"]);
}

#[test]
fn oci_layout_with_index_is_imported() {
    let env = Env::new();
    let image = two_layer_image();
    let layout = env.path("layout");
    image.write_oci_layout(&layout, "demo:1");
    let store = env.store();
    let img = store
        .import_oci_layout(&layout, None, None, &Cancel::never())
        .unwrap();
    assert_two_layer_result(&img);
    // The image digest is the config digest; the name is the ref annotation.
    assert_eq!(img.digest.hex(), common::sha256_hex(&image.config));
    let info = store.inspect("demo:1").unwrap();
    assert_eq!(info.names, vec!["demo:1"]);
    assert_eq!(info.stats.layers, 2);
    assert_eq!(info.stats.whiteouts, 2);
    // Resolvable by name with no release asset of that name.
    let again = store
        .resolve("demo:1", &env.path("none"), &Cancel::never())
        .unwrap();
    assert_eq!(again, img);
    // Selecting by a reference that is not there is a clear not_found.
    let err = store
        .import_oci_layout(&layout, Some("demo:2"), None, &Cancel::never())
        .unwrap_err();
    assert_eq!(err.code(), "not_found", "{err}");
}

#[test]
fn docker_archive_is_imported_to_the_same_image() {
    let env = Env::new();
    let image = two_layer_image();
    let tarball = env.path("saved.tar");
    image.write_docker_archive(&tarball, "demo:latest");
    let store = env.store();
    let img = store
        .import_docker_archive(&tarball, None, None, &Cancel::never())
        .unwrap();
    assert_two_layer_result(&img);
    assert_eq!(store.inspect("demo:latest").unwrap().digest, img.digest);

    // The same image from an OCI layout is the same store entry.
    let layout = env.path("layout");
    image.write_oci_layout(&layout, "demo:1");
    let from_layout = store
        .import_oci_layout(&layout, None, Some("other-name"), &Cancel::never())
        .unwrap();
    assert_eq!(from_layout.rootfs, img.rootfs);
    let names = store.inspect(&img.digest.to_string()).unwrap().names;
    assert_eq!(names, vec!["demo:latest", "other-name"]);
}

#[test]
fn gzipped_docker_archive_is_imported() {
    let env = Env::new();
    let tarball = env.path("saved.tar");
    two_layer_image().write_docker_archive(&tarball, "demo:latest");
    let gz = env.path("saved.tar.gz");
    std::fs::write(&gz, common::gzip(&std::fs::read(&tarball).unwrap())).unwrap();
    let img = env
        .store()
        .import_docker_archive(&gz, Some("demo:latest"), None, &Cancel::never())
        .unwrap();
    assert_two_layer_result(&img);
    env.assert_outside_untouched();
    // Past the budget, the decompressed copy is refused and removed.
    let small = env.store_with(|o| o.max_unpacked_bytes = 1024);
    let err = small
        .import_docker_archive(&gz, Some("demo:latest"), Some("again"), &Cancel::never())
        .unwrap_err();
    assert_eq!(err.code(), "resource_exhausted", "{err}");
    env.assert_outside_untouched();
}

#[test]
fn tampered_layer_blob_is_refused() {
    let env = Env::new();
    let image = two_layer_image();
    let layout = env.path("layout");
    image.write_oci_layout(&layout, "demo:1");
    // Same size, one byte different, in the uncompressed second layer.
    let blob = layout
        .join("blobs/sha256")
        .join(common::sha256_hex(&image.layer2));
    let mut data = std::fs::read(&blob).unwrap();
    let at = data.windows(5).position(|w| w == b"later").unwrap();
    data[at] = b'L';
    std::fs::write(&blob, &data).unwrap();
    let err = env
        .store()
        .import_oci_layout(&layout, None, None, &Cancel::never())
        .unwrap_err();
    assert!(matches!(err, ImageError::DigestMismatch { .. }), "{err}");
    env.assert_outside_untouched();
    assert!(env.store().list().unwrap().is_empty());

    // A corrupted tar header is reported as the digest mismatch it is.
    data[at] = b'l';
    data[0] ^= 0x20;
    std::fs::write(&blob, &data).unwrap();
    let err = env
        .store()
        .import_oci_layout(&layout, None, None, &Cancel::never())
        .unwrap_err();
    assert!(matches!(err, ImageError::DigestMismatch { .. }), "{err}");
    env.assert_outside_untouched();
}

#[test]
fn tampered_docker_layer_fails_its_diff_id() {
    let env = Env::new();
    let mut image = two_layer_image();
    // Re-compress layer 1 with different content: the config's diff_id no
    // longer matches.
    image.layer1_gz = common::gzip(&common::tar_bytes(&[common::E::File("x", 0o644, b"evil")]));
    let tarball = env.path("saved.tar");
    image.write_docker_archive(&tarball, "demo:latest");
    let err = env
        .store()
        .import_docker_archive(&tarball, None, None, &Cancel::never())
        .unwrap_err();
    assert!(matches!(err, ImageError::DigestMismatch { .. }), "{err}");
    assert!(err.to_string().contains("diff_id"), "{err}");
    env.assert_outside_untouched();
}

#[test]
fn not_a_layout_is_invalid_argument() {
    let env = Env::new();
    let err = env
        .store()
        .import_oci_layout(&env.outside(), None, None, &Cancel::never())
        .unwrap_err();
    assert_eq!(err.code(), "invalid_argument", "{err}");
}

#[test]
fn ids_are_shifted_into_the_sandbox_range_when_root() {
    if Ownership::for_current_user() == Ownership::Caller {
        eprintln!("not root: id shifting needs CAP_CHOWN; Caller ownership is covered elsewhere");
        return;
    }
    let env = Env::new();
    let layout = env.path("layout");
    two_layer_image().write_oci_layout(&layout, "demo:1");
    let store = env.store_with(|o| {
        o.ownership = Ownership::Shift {
            base: 100_000,
            size: 65536,
        }
    });
    let img = store
        .import_oci_layout(&layout, None, None, &Cancel::never())
        .unwrap();
    let owned = std::fs::metadata(img.rootfs.join("owned")).unwrap();
    assert_eq!((owned.uid(), owned.gid()), (101_000, 101_000));
    let etc = std::fs::metadata(img.rootfs.join("etc")).unwrap();
    assert_eq!((etc.uid(), etc.gid()), (100_000, 100_000));
    let link = std::fs::symlink_metadata(img.rootfs.join("data/g")).unwrap();
    assert_eq!(link.uid(), 100_000);
    // A differently owned copy lives apart from an unshifted one.
    assert!(img
        .rootfs
        .parent()
        .unwrap()
        .to_string_lossy()
        .ends_with("-u100000"));
    let plain = env
        .store()
        .import_oci_layout(&layout, None, None, &Cancel::never())
        .unwrap();
    assert_ne!(plain.rootfs, img.rootfs);
    assert_eq!(
        std::fs::metadata(plain.rootfs.join("owned")).unwrap().uid(),
        1000
    );
}

#[test]
fn layers_must_match_the_configs_diff_ids() {
    // A manifest whose layer is not what the config says: the config
    // digest (the store key) would not pin the content, so it is refused.
    let env = Env::new();
    let mut image = two_layer_image();
    image.layer2 = common::tar_bytes(&[common::E::File("other", 0o644, b"not in the config")]);
    let layout = env.path("layout");
    image.write_oci_layout(&layout, "demo");
    let err = env
        .store()
        .import_oci_layout(&layout, None, None, &Cancel::never())
        .unwrap_err();
    assert!(matches!(err, ImageError::DigestMismatch { .. }), "{err}");
    assert!(err.to_string().contains("diff_id"), "{err}");
    env.assert_outside_untouched();
}

#[test]
fn docker_archive_with_a_huge_metadata_record_is_refused() {
    let env = Env::new();
    let size: u64 = 64 << 20;
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::GNULongName);
    h.set_path("././@LongLink").unwrap();
    h.set_size(size);
    h.set_cksum();
    b.append(&h, std::io::Read::take(std::io::repeat(b'a'), size))
        .unwrap();
    let mut m = tar::Header::new_gnu();
    m.set_entry_type(tar::EntryType::Regular);
    m.set_path("manifest.json").unwrap();
    m.set_size(2);
    m.set_cksum();
    b.append(&m, &b"[]"[..]).unwrap();
    let gz = env.path("bomb.tar.gz");
    std::fs::write(&gz, common::gzip(&b.into_inner().unwrap())).unwrap();
    let err = env
        .store()
        .import_docker_archive(&gz, None, None, &Cancel::never())
        .unwrap_err();
    assert_eq!(err.code(), "resource_exhausted", "{err}");
    env.assert_outside_untouched();
}
