//! Root-filesystem archives (the release assets) and image layers: a tar,
//! maybe compressed, hashed while it is unpacked.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;

use crate::cancel::Cancel;
use crate::decompress::decompressed;
use crate::digest::{Digest, HashingReader};
use crate::error::{ImageError, IoContext, Result};
use crate::unpack::{LayerKind, Unpacker};

/// Unpacks `archive` and returns the sha256 of its bytes.
pub(crate) fn unpack_rootfs_archive(archive: &Path, unpacker: &mut Unpacker) -> Result<Digest> {
    let file = File::open(archive).ctx("open", archive)?;
    let mut hashing = HashingReader::new(file);
    unpack_layer(&mut hashing, unpacker, LayerKind::Rootfs)?;
    let (digest, _) = hashing.finish().ctx("read", archive)?;
    Ok(digest)
}

/// Decompresses and applies one layer, reading the decompressed stream to
/// its end so the caller's hash covers every byte.
pub(crate) fn unpack_layer<R: Read>(
    raw: R,
    unpacker: &mut Unpacker,
    kind: LayerKind,
) -> Result<()> {
    let mut stream = decompressed(BufReader::with_capacity(256 << 10, raw))?;
    unpacker.apply(&mut stream, kind)?;
    std::io::copy(&mut stream, &mut std::io::sink())
        .map_err(|e| ImageError::invalid_image(format!("reading layer: {e}")))?;
    Ok(())
}

/// What a layer must hash to: its blob (compressed bytes) when the source
/// names one, and always its diff_id (the uncompressed tar) from the image
/// config, so the config digest the store keys images by pins the content.
pub(crate) struct LayerCheck<'a> {
    pub blob: Option<(&'a Digest, Option<u64>)>,
    pub diff_id: &'a Digest,
    pub what: &'a str,
}

/// A layer's bytes that stop when the caller gives up: what is left after
/// the tar's end (read only to hash it) is not bounded by the unpacker's
/// budgets, and a compressed tail may expand without end.
pub(crate) struct Cancellable<'c, R> {
    pub inner: R,
    pub cancel: &'c Cancel,
}

impl<R: Read> Read for Cancellable<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.cancel.is_canceled() {
            return Err(std::io::Error::other("canceled"));
        }
        self.inner.read(buf)
    }
}

/// Applies one image layer and checks both digests. A blob that fails its
/// digest is reported as such even when it broke the tar first.
pub(crate) fn unpack_checked_layer<R: Read>(
    raw: R,
    unpacker: &mut Unpacker,
    check: LayerCheck,
) -> Result<()> {
    let cancel = unpacker.cancel();
    let raw = Cancellable { inner: raw, cancel };
    let mut hashing = HashingReader::new(raw);
    let applied = (|| {
        let stream = decompressed(BufReader::with_capacity(256 << 10, &mut hashing))?;
        let mut plain = HashingReader::new(Cancellable {
            inner: stream,
            cancel,
        });
        unpacker.apply(&mut plain, LayerKind::OciLayer)?;
        plain
            .finish()
            .map(|(d, _)| d)
            .map_err(|e| ImageError::invalid_image(format!("reading {}: {e}", check.what)))
    })();
    if matches!(applied, Err(ImageError::Canceled)) || cancel.is_canceled() {
        return Err(ImageError::Canceled);
    }
    let (blob_digest, size) = hashing
        .finish()
        .map_err(|e| ImageError::invalid_image(format!("reading {}: {e}", check.what)))?;
    if let Some((expected, expected_size)) = check.blob {
        expected.verify(&blob_digest, check.what)?;
        if let Some(n) = expected_size.filter(|&n| n != size) {
            return Err(ImageError::invalid_image(format!(
                "{} is {size} bytes, its descriptor says {n}",
                check.what
            )));
        }
    }
    let diff = applied?;
    check
        .diff_id
        .verify(&diff, &format!("{} (diff_id)", check.what))
}
