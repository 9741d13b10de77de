//! Helpers for the image tests: tar layers built entry by entry (including
//! hostile ones the `tar` crate's safe setters would refuse), and a temp
//! home with a sentinel directory beside the store.
#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};

use lockbox_images::{ImageStore, Ownership, StoreOptions};

pub struct Env {
    pub dir: tempfile::TempDir,
}

impl Env {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("home")).unwrap();
        std::fs::create_dir(dir.path().join("outside")).unwrap();
        std::fs::write(dir.path().join("outside/secret"), b"host secret").unwrap();
        Env { dir }
    }
    pub fn home(&self) -> PathBuf {
        self.dir.path().join("home")
    }
    pub fn outside(&self) -> PathBuf {
        self.dir.path().join("outside")
    }
    pub fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }
    pub fn store(&self) -> ImageStore {
        ImageStore::open(&self.home()).unwrap()
    }
    pub fn store_with(&self, f: impl FnOnce(&mut StoreOptions)) -> ImageStore {
        let mut o = StoreOptions::default();
        f(&mut o);
        ImageStore::open_with(&self.home(), o).unwrap()
    }
    /// Nothing but the sentinel file may be in `outside/`, unchanged.
    pub fn assert_outside_untouched(&self) {
        let names: Vec<String> = std::fs::read_dir(self.outside())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, vec!["secret".to_string()], "outside/ was written to");
        assert_eq!(
            std::fs::read(self.outside().join("secret")).unwrap(),
            b"host secret"
        );
        // The store keeps no half-unpacked leftovers either.
        let tmp: Vec<_> = std::fs::read_dir(self.home().join("images/tmp"))
            .unwrap()
            .collect();
        assert!(tmp.is_empty(), "temp dirs left behind: {tmp:?}");
    }
}

pub fn caller_ownership() -> Ownership {
    Ownership::for_current_user()
}

/// One tar entry. Names and link targets go into the header bytes as
/// given, so tests can write `../x` and `/x`.
pub enum E<'a> {
    Dir(&'a str, u32),
    File(&'a str, u32, &'a [u8]),
    /// A file whose header claims `size` bytes of zeros.
    Big(&'a str, u64),
    Symlink(&'a str, &'a str),
    Hardlink(&'a str, &'a str),
    Char(&'a str),
    Owned(&'a str, u64, u64, &'a [u8]),
}

fn raw_name(h: &mut tar::Header, name: &str) {
    let bytes = name.as_bytes();
    let old = h.as_old_mut();
    old.name = [0; 100];
    old.name[..bytes.len()].copy_from_slice(bytes);
}

fn raw_link(h: &mut tar::Header, target: &str) {
    let bytes = target.as_bytes();
    let old = h.as_old_mut();
    old.linkname = [0; 100];
    old.linkname[..bytes.len()].copy_from_slice(bytes);
}

fn file_entry(b: &mut tar::Builder<Vec<u8>>, mut h: tar::Header, n: &str, mode: u32, data: &[u8]) {
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mode(mode);
    h.set_size(data.len() as u64);
    raw_name(&mut h, n);
    h.set_cksum();
    b.append(&h, data).unwrap();
}

pub fn tar_bytes(entries: &[E]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_ustar();
        h.set_mtime(1_700_000_000);
        h.set_uid(0);
        h.set_gid(0);
        match e {
            E::Dir(n, mode) => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(*mode);
                h.set_size(0);
                raw_name(&mut h, n);
                h.set_cksum();
                b.append(&h, std::io::empty()).unwrap();
            }
            E::File(n, mode, data) => file_entry(&mut b, h, n, *mode, data),
            E::Owned(n, uid, gid, data) => {
                h.set_uid(*uid);
                h.set_gid(*gid);
                file_entry(&mut b, h, n, 0o644, data)
            }
            E::Big(n, size) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(0o644);
                h.set_size(*size);
                raw_name(&mut h, n);
                h.set_cksum();
                b.append(&h, std::io::Read::take(std::io::repeat(0), *size))
                    .unwrap();
            }
            E::Symlink(n, t) | E::Hardlink(n, t) => {
                h.set_entry_type(if matches!(e, E::Symlink(..)) {
                    tar::EntryType::Symlink
                } else {
                    tar::EntryType::Link
                });
                h.set_mode(0o777);
                h.set_size(0);
                raw_name(&mut h, n);
                raw_link(&mut h, t);
                h.set_cksum();
                b.append(&h, std::io::empty()).unwrap();
            }
            E::Char(n) => {
                h.set_entry_type(tar::EntryType::Char);
                h.set_mode(0o666);
                h.set_size(0);
                h.set_device_major(1).unwrap();
                h.set_device_minor(3).unwrap();
                raw_name(&mut h, n);
                h.set_cksum();
                b.append(&h, std::io::empty()).unwrap();
            }
        }
    }
    b.into_inner().unwrap()
}

pub fn zstd(data: &[u8]) -> Vec<u8> {
    zstd::encode_all(data, 3).unwrap()
}

pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

pub fn write(path: &Path, data: &[u8]) -> PathBuf {
    std::fs::write(path, data).unwrap();
    path.to_path_buf()
}

pub fn sha256_hex(data: &[u8]) -> String {
    lockbox_images::Digest::of_bytes(data).hex().to_string()
}

/// The repo's image build scripts.
pub fn scripts_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/images")
}
