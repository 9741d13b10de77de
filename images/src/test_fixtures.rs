//! Fixtures shared by the store's unit tests: a tiny OCI layout to import,
//! a store with a chosen unpack cap, and a directory fd.

use std::os::fd::{FromRawFd, OwnedFd};
use std::path::Path;

use crate::digest::Digest;
use crate::options::StoreOptions;
use crate::store::ImageStore;

const MT_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const MT_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const MT_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";

/// Writes `data` as a blob of the layout at `dir`; returns its digest.
pub fn blob(dir: &Path, data: &[u8]) -> String {
    let d = Digest::of_bytes(data);
    std::fs::write(dir.join("blobs/sha256").join(d.hex()), data).unwrap();
    d.to_string()
}

/// An OCI layout of one image whose only layer is empty (a 1 KiB tar of
/// zeros: the end-of-archive marker).
pub fn empty_layout(dir: &Path) {
    std::fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let l = blob(dir, &[0u8; 1024]);
    let config = format!(
        r#"{{"architecture":"{}","os":"linux","config":{{}},"rootfs":{{"type":"layers","diff_ids":["{l}"]}}}}"#,
        crate::oci::host_arch()
    );
    let c = blob(dir, config.as_bytes());
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"{MT_MANIFEST}","config":{{"mediaType":"{MT_CONFIG}","digest":"{c}","size":{}}},"layers":[{{"mediaType":"{MT_LAYER}","digest":"{l}","size":1024}}]}}"#,
        config.len()
    );
    let m = blob(dir, manifest.as_bytes());
    let index = format!(
        r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"{MT_MANIFEST}","digest":"{m}","size":{}}}]}}"#,
        manifest.len()
    );
    std::fs::write(dir.join("index.json"), index).unwrap();
}

/// A store at `home` whose unpacked images may hold `max` bytes.
pub fn store(home: &Path, max: u64) -> ImageStore {
    ImageStore::open_with(
        home,
        StoreOptions {
            max_unpacked_bytes: max,
            ..Default::default()
        },
    )
    .unwrap()
}

/// A directory opened O_DIRECTORY, as the store's callers hand them over.
pub fn dir_fd(p: &Path) -> OwnedFd {
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: valid path; the fd is handed to an OwnedFd at once.
    let fd = unsafe { libc::open(c.as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY) };
    assert!(fd >= 0, "open {}", p.display());
    // SAFETY: just opened, owned nowhere else.
    unsafe { OwnedFd::from_raw_fd(fd) }
}
