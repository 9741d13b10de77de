//! Root-filesystem archives (the release assets): one tar, maybe
//! compressed, hashed while it is unpacked.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;

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
