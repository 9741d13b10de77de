//! Lockbox images: named release images (`base`, `python`) and OCI images,
//! unpacked once into `$LOCKBOX_HOME/images`, content-addressed, shared
//! read-only by every sandbox.
//!
//! The engine's use:
//! ```no_run
//! use lockbox_images::{Cancel, ImageStore};
//! # fn main() -> Result<(), lockbox_images::ImageError> {
//! let store = ImageStore::open(std::path::Path::new("/home/u/.local/share/lockbox"))?;
//! let img = store.resolve("base", std::path::Path::new("/opt/lockbox/images"), &Cancel::never())?;
//! // img.rootfs: the read-only lower dir; img.config: env, workdir, user, entrypoint, cmd
//! # Ok(()) }
//! ```
//! All calls block (run them on a blocking thread) and are safe from many
//! threads and processes at once. Errors carry a stable ABI code
//! ([`ImageError::code`]).

mod archive;
mod cancel;
mod config;
mod decompress;
mod digest;
mod docker_archive;
mod error;
mod export;
mod fsutil;
mod imports;
mod kernel_copy;
mod layered;
mod lock;
mod meter;
mod oci;
mod oci_layout;
mod options;
mod reclaim;
mod reference;
mod refs;
mod registry;
mod safe_path;
mod store;
#[cfg(test)]
mod test_fixtures;
mod unpack;
mod upper_copy;

pub use cancel::Cancel;
pub use config::ImageConfig;
pub use digest::Digest;
pub use error::{ImageError, Result};
pub use options::{Ownership, StoreOptions};
pub use reclaim::{ForkHold, ReclaimReport};
pub use reference::Reference;
pub use registry::PullOptions;
pub use store::{ImageInfo, ImageStore, PruneReport, ResolvedImage};
pub use unpack::UnpackStats;
pub use upper_copy::{IdShift, LayerDigest};
