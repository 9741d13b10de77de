//! Hostile archives are refused with a clear error, and nothing is written
//! outside the store (or left inside it).

mod common;

use common::{tar_bytes, write, Env, E};
use lockbox_images::{Cancel, Digest, ImageError};

fn import(env: &Env, entries: &[E]) -> Result<lockbox_images::ResolvedImage, ImageError> {
    let archive = write(&env.path("evil.tar"), &tar_bytes(entries));
    env.store()
        .import_archive(&archive, Some("evil"), None, &Cancel::never())
}

fn assert_refused(env: &Env, r: Result<lockbox_images::ResolvedImage, ImageError>, needle: &str) {
    let err = r.expect_err("hostile archive was accepted");
    let msg = err.to_string();
    assert!(
        msg.contains(needle),
        "error {msg:?} does not mention {needle:?}"
    );
    env.assert_outside_untouched();
    assert!(
        env.store().list().unwrap().is_empty(),
        "a refused image was stored"
    );
    assert_eq!(
        env.store()
            .resolve("evil", &env.path("none"), &Cancel::never())
            .unwrap_err()
            .code(),
        "not_found"
    );
}

#[test]
fn dotdot_path_is_refused() {
    let env = Env::new();
    let r = import(
        &env,
        &[
            E::Dir("a", 0o755),
            E::File("a/../../../outside/pwned", 0o644, b"x"),
        ],
    );
    assert_eq!(r.as_ref().unwrap_err().code(), "invalid_argument");
    assert_refused(&env, r, "escapes the root");
}

#[test]
fn absolute_path_is_refused() {
    let env = Env::new();
    let target = format!("{}/pwned", env.outside().display());
    let r = import(&env, &[E::File(&target, 0o644, b"x")]);
    assert_refused(&env, r, "absolute path");
}

#[test]
fn write_through_symlink_pointing_out_is_refused() {
    let env = Env::new();
    let out = env.outside().display().to_string();
    let r = import(
        &env,
        &[E::Symlink("link", &out), E::File("link/pwned", 0o644, b"x")],
    );
    assert_refused(&env, r, "goes through the symlink");
}

#[test]
fn write_through_relative_symlink_chain_is_refused() {
    let env = Env::new();
    let r = import(
        &env,
        &[
            E::Dir("d", 0o755),
            E::Symlink("d/up", "../../../outside"),
            E::File("d/up/pwned", 0o644, b"x"),
        ],
    );
    assert_refused(&env, r, "goes through the symlink");
}

#[test]
fn overwriting_a_symlink_replaces_the_link_not_its_target() {
    // Not hostile by itself: the file replaces the link, the host file
    // behind the link stays as it was.
    let env = Env::new();
    let secret = env.outside().join("secret").display().to_string();
    let img = import(
        &env,
        &[E::Symlink("s", &secret), E::File("s", 0o644, b"new")],
    )
    .unwrap();
    assert_eq!(std::fs::read(img.rootfs.join("s")).unwrap(), b"new");
    assert!(!std::fs::symlink_metadata(img.rootfs.join("s"))
        .unwrap()
        .is_symlink());
    env.assert_outside_untouched();
}

#[test]
fn hard_link_to_a_file_outside_is_refused() {
    let env = Env::new();
    let r = import(&env, &[E::Hardlink("h", "../../../outside/secret")]);
    assert_refused(&env, r, "points outside the root");
    let env = Env::new();
    let abs = env.outside().join("secret").display().to_string();
    let r = import(&env, &[E::Hardlink("h", &abs)]);
    assert_refused(&env, r, "points outside the root");
}

#[test]
fn hard_link_through_a_symlink_is_refused() {
    let env = Env::new();
    let out = env.outside().display().to_string();
    let r = import(&env, &[E::Symlink("s", &out), E::Hardlink("h", "s/secret")]);
    assert_refused(&env, r, "goes through the symlink");
}

#[test]
fn file_past_the_size_budget_is_refused() {
    let env = Env::new();
    let archive = write(
        &env.path("big.tar"),
        &tar_bytes(&[E::File("small", 0o644, b"ok"), E::Big("big", 3 << 20)]),
    );
    let store = env.store_with(|o| o.max_unpacked_bytes = 1 << 20);
    let err = store
        .import_archive(&archive, Some("evil"), None, &Cancel::never())
        .unwrap_err();
    assert!(matches!(err, ImageError::TooLarge(_)), "{err}");
    assert_eq!(err.code(), "resource_exhausted");
    assert!(err.to_string().contains("\"big\""), "{err}");
    env.assert_outside_untouched();
    assert!(store.list().unwrap().is_empty());
}

#[test]
fn too_many_entries_are_refused() {
    let env = Env::new();
    let names: Vec<String> = (0..50).map(|i| format!("f{i}")).collect();
    let entries: Vec<E> = names.iter().map(|n| E::File(n, 0o644, b"")).collect();
    let archive = write(&env.path("many.tar"), &tar_bytes(&entries));
    let store = env.store_with(|o| o.max_entries = 10);
    let err = store
        .import_archive(&archive, None, None, &Cancel::never())
        .unwrap_err();
    assert!(matches!(err, ImageError::TooLarge(_)), "{err}");
    env.assert_outside_untouched();
}

#[test]
fn digest_mismatch_is_refused() {
    let env = Env::new();
    let data = common::zstd(&tar_bytes(&[E::File("f", 0o644, b"content")]));
    let archive = write(&env.path("img.tar.zst"), &data);
    let wrong = Digest::of_bytes(b"something else");
    let err = env
        .store()
        .import_archive(&archive, Some("img"), Some(&wrong), &Cancel::never())
        .unwrap_err();
    assert!(matches!(err, ImageError::DigestMismatch { .. }), "{err}");
    assert!(err.to_string().contains(&wrong.to_string()));
    env.assert_outside_untouched();
    assert!(env.store().list().unwrap().is_empty());
    // The right digest goes through.
    let right = Digest::of_bytes(&data);
    let img = env
        .store()
        .import_archive(&archive, Some("img"), Some(&right), &Cancel::never())
        .unwrap();
    assert_eq!(img.digest, right);
}

#[test]
fn device_nodes_are_skipped_and_setuid_bits_dropped() {
    let env = Env::new();
    let img = import(
        &env,
        &[
            E::Dir("dev", 0o755),
            E::Char("dev/mem"),
            E::File("suid", 0o4755, b"#!/bin/sh\n"),
            E::Dir("sticky", 0o1777),
        ],
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert!(!img.rootfs.join("dev/mem").exists());
    let mode = std::fs::metadata(img.rootfs.join("suid"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o7777, 0o755);
    let sticky = std::fs::metadata(img.rootfs.join("sticky"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(sticky & 0o7777, 0o1777);
    let info = env.store().inspect("evil").unwrap();
    assert_eq!(info.stats.skipped_devices, 1);
    assert_eq!(info.stats.dropped_setid_bits, 1);
}

#[test]
fn truncated_archive_is_refused() {
    let env = Env::new();
    let mut data = tar_bytes(&[E::File("f", 0o644, &[7u8; 4096])]);
    data.truncate(1024);
    let archive = write(&env.path("cut.tar"), &data);
    let err = env
        .store()
        .import_archive(&archive, None, None, &Cancel::never())
        .unwrap_err();
    assert_eq!(err.code(), "invalid_argument", "{err}");
    env.assert_outside_untouched();
}

#[test]
fn hard_link_to_a_missing_file_is_refused() {
    let env = Env::new();
    let r = import(&env, &[E::Hardlink("h", "no/such/file")]);
    assert_eq!(r.as_ref().unwrap_err().code(), "invalid_argument");
    assert_refused(&env, r, "not a file in the image");
}

#[test]
fn huge_long_name_record_is_refused_without_reading_it_into_memory() {
    // A GNU long-name record declaring 64 MiB (zeros: a tiny zstd file).
    // The tar reader would buffer it whole; the store stops it at 4 MiB.
    let env = Env::new();
    let size: u64 = 64 << 20;
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::GNULongName);
    h.set_path("././@LongLink").unwrap();
    h.set_size(size);
    h.set_mode(0o644);
    h.set_cksum();
    b.append(&h, std::io::Read::take(std::io::repeat(0), size))
        .unwrap();
    let mut f = tar::Header::new_gnu();
    f.set_entry_type(tar::EntryType::Regular);
    f.set_path("f").unwrap();
    f.set_size(0);
    f.set_cksum();
    b.append(&f, std::io::empty()).unwrap();
    let packed = common::zstd(&b.into_inner().unwrap());
    assert!(
        packed.len() < 1 << 20,
        "the bomb should be small: {}",
        packed.len()
    );
    let archive = write(&env.path("bomb.tar.zst"), &packed);
    let err = env
        .store()
        .import_archive(&archive, None, None, &Cancel::never())
        .unwrap_err();
    assert_eq!(err.code(), "resource_exhausted", "{err}");
    assert!(err.to_string().contains("metadata record"), "{err}");
    env.assert_outside_untouched();
}
