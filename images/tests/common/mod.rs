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

/// A two-layer image written as an OCI layout and as a `docker save`
/// tarball from the same bytes.
pub struct TwoLayerImage {
    pub layer1_gz: Vec<u8>,
    pub layer2: Vec<u8>,
    pub config: Vec<u8>,
}

pub fn two_layer_image() -> TwoLayerImage {
    let layer1 = tar_bytes(&[
        E::Dir("etc", 0o755),
        E::File("etc/a", 0o644, b"a"),
        E::File("etc/b", 0o644, b"b"),
        E::Dir("opq", 0o755),
        E::File("opq/old", 0o644, b"old"),
        E::Dir("data", 0o755),
        E::File("data/f", 0o644, b"first"),
        E::Hardlink("data/g", "data/f"),
        E::Dir("ro", 0o555),
        E::File("ro/inside", 0o444, b"in a read-only dir"),
        E::Owned("owned", 1000, 1000, b"by uid 1000"),
    ]);
    let layer2 = tar_bytes(&[
        E::File("etc/.wh.a", 0o644, b""),
        E::Dir("opq", 0o755),
        E::File("opq/new", 0o644, b"new"),
        E::File("opq/.wh..wh..opq", 0o644, b""),
        E::File("data/f", 0o644, b"second"),
        E::File("ro/added", 0o644, b"later layer"),
    ]);
    let config = format!(
        r#"{{"architecture":"amd64","os":"linux","config":{{"Env":["PATH=/bin","GREETING=hi"],"WorkingDir":"/srv","User":"1000:1000","Entrypoint":["/bin/sh","-c"],"Cmd":["echo hello"]}},"rootfs":{{"type":"layers","diff_ids":["sha256:{}","sha256:{}"]}}}}"#,
        sha256_hex(&layer1),
        sha256_hex(&layer2)
    )
    .into_bytes();
    TwoLayerImage {
        layer1_gz: gzip(&layer1),
        layer2,
        config,
    }
}

fn blob(dir: &Path, data: &[u8]) -> String {
    let hex = sha256_hex(data);
    std::fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
    std::fs::write(dir.join("blobs/sha256").join(&hex), data).unwrap();
    format!("sha256:{hex}")
}

fn desc(media: &str, digest: &str, size: usize) -> String {
    format!(r#"{{"mediaType":"{media}","digest":"{digest}","size":{size}}}"#)
}

impl TwoLayerImage {
    /// index.json -> image index (amd64 + arm64) -> manifest -> blobs.
    pub fn write_oci_layout(&self, dir: &Path, ref_name: &str) {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
        let c = blob(dir, &self.config);
        let l1 = blob(dir, &self.layer1_gz);
        let l2 = blob(dir, &self.layer2);
        let manifest = format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{},"layers":[{},{}]}}"#,
            desc(
                "application/vnd.oci.image.config.v1+json",
                &c,
                self.config.len()
            ),
            desc(
                "application/vnd.oci.image.layer.v1.tar+gzip",
                &l1,
                self.layer1_gz.len()
            ),
            desc(
                "application/vnd.oci.image.layer.v1.tar",
                &l2,
                self.layer2.len()
            ),
        );
        let m = blob(dir, manifest.as_bytes());
        // The other platform's image has only the first layer: picking it
        // by mistake shows in the result.
        let layer1 = {
            let mut plain = Vec::new();
            std::io::Read::read_to_end(
                &mut flate2::read::GzDecoder::new(&self.layer1_gz[..]),
                &mut plain,
            )
            .unwrap();
            plain
        };
        let other_config = format!(
            r#"{{"architecture":"other","os":"linux","config":{{}},"rootfs":{{"type":"layers","diff_ids":["sha256:{}"]}}}}"#,
            sha256_hex(&layer1)
        );
        let oc = blob(dir, other_config.as_bytes());
        let other_manifest = format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{},"layers":[{}]}}"#,
            desc(
                "application/vnd.oci.image.config.v1+json",
                &oc,
                other_config.len()
            ),
            desc(
                "application/vnd.oci.image.layer.v1.tar+gzip",
                &l1,
                self.layer1_gz.len()
            ),
        );
        let other = blob(dir, other_manifest.as_bytes());
        let other_size = other_manifest.len();
        let arch = if cfg!(target_arch = "x86_64") {
            "amd64"
        } else {
            "arm64"
        };
        let not_arch = if arch == "amd64" { "arm64" } else { "amd64" };
        let index = format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[
              {{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{other}","size":{other_size},"platform":{{"os":"linux","architecture":"{not_arch}"}}}},
              {{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{m}","size":{},"platform":{{"os":"linux","architecture":"{arch}"}}}}]}}"#,
            manifest.len()
        );
        let i = blob(dir, index.as_bytes());
        let top = format!(
            r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"application/vnd.oci.image.index.v1+json","digest":"{i}","size":{},"annotations":{{"org.opencontainers.image.ref.name":"{ref_name}"}}}}]}}"#,
            index.len()
        );
        std::fs::write(dir.join("index.json"), top).unwrap();
    }

    /// The legacy `docker save` form: manifest.json, <hex>.json, <id>/layer.tar.
    pub fn write_docker_archive(&self, path: &Path, tag: &str) {
        let mut b = tar::Builder::new(Vec::new());
        let mut add = |name: &str, data: &[u8]| {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_entry_type(tar::EntryType::Regular);
            b.append_data(&mut h, name, data).unwrap();
        };
        let config_name = format!("{}.json", sha256_hex(&self.config));
        let l1 = "1111/layer.tar";
        let l2 = format!("blobs/sha256/{}", sha256_hex(&self.layer2));
        add(
            "manifest.json",
            format!(
                r#"[{{"Config":"{config_name}","RepoTags":["{tag}"],"Layers":["{l1}","{l2}"]}}]"#
            )
            .as_bytes(),
        );
        add(&config_name, &self.config);
        add(l1, &self.layer1_gz);
        add(&l2, &self.layer2);
        std::fs::write(path, b.into_inner().unwrap()).unwrap();
    }
}
