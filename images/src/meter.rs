//! Bounds what the tar reader may pull in between two entries.
//!
//! The `tar` crate reads GNU long-name and pax records whole into memory,
//! sized by their header: a layer of compressed zeros could declare a
//! many-GiB record and exhaust the host's memory (the library lives inside
//! the caller's process). File contents are read by us and charged against
//! the unpack budget; everything the reader consumes on its own while
//! finding the next entry is capped here.

use std::cell::Cell;
use std::io::{self, Read, Seek, SeekFrom};
use std::rc::Rc;

/// Metadata between two entries (long names, pax records, padding).
pub(crate) const METADATA_LIMIT: u64 = 4 << 20;

#[derive(Default)]
pub(crate) struct Meter {
    count: Cell<u64>,
    limit: Cell<Option<u64>>,
    tripped: Cell<bool>,
}

impl Meter {
    pub(crate) fn arm(&self, limit: u64) {
        self.count.set(0);
        self.limit.set(Some(limit));
    }

    pub(crate) fn disarm(&self) {
        self.limit.set(None);
    }

    pub(crate) fn tripped(&self) -> bool {
        self.tripped.get()
    }
}

pub(crate) struct MeteredReader<R> {
    pub inner: R,
    pub meter: Rc<Meter>,
}

impl<R: Read> Read for MeteredReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let m = &self.meter;
        let buf = match m.limit.get() {
            Some(limit) => {
                let left = limit.saturating_sub(m.count.get());
                if left == 0 {
                    m.tripped.set(true);
                    return Err(io::Error::other(format!(
                        "a tar metadata record is larger than {limit} bytes"
                    )));
                }
                let n = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                &mut buf[..n]
            }
            None => buf,
        };
        let n = self.inner.read(buf)?;
        m.count.set(m.count.get() + n as u64);
        Ok(n)
    }
}

/// Seeks (skipping member data) are not metadata and are not counted.
impl<R: Seek> Seek for MeteredReader<R> {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        self.inner.seek(pos)
    }
}
