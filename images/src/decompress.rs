//! Layers and archives come plain, gzip'd or zstd'd; the magic bytes say
//! which (media types lie more often than magic does).

use std::io::{BufRead, Read};

use crate::error::{ImageError, Result};

pub(crate) fn decompressed<'a, R: BufRead + 'a>(mut r: R) -> Result<Box<dyn Read + 'a>> {
    let head = r
        .fill_buf()
        .map_err(|e| ImageError::invalid_image(format!("reading archive: {e}")))?;
    if head.starts_with(&[0x1f, 0x8b]) {
        Ok(Box::new(flate2::bufread::MultiGzDecoder::new(r)))
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        let d = zstd::stream::read::Decoder::with_buffer(r)
            .map_err(|e| ImageError::invalid_image(format!("zstd: {e}")))?;
        Ok(Box::new(d))
    } else {
        Ok(Box::new(r))
    }
}
