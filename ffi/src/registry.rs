//! The handle registry: every object the host holds is a u64 handle here.
//!
//! A handle is `kind << 56 | serial`; serials come from one process-wide
//! counter and are never reused, so a closed handle can never name a newer
//! object. Lookups check the kind bits first (wrong kind: `invalid_argument`)
//! and then the map (closed or never issued: `not_found`).
//!
//! Engine objects go in as `Arc<dyn Any + Send + Sync>` and come back typed
//! with [`Registry::get`]; streams go in as `Arc<dyn ByteStream>`. Closing
//! drops the registry's `Arc`; the object dies when the last call using it
//! finishes.
use crate::error::ApiError;
use crate::stream::ByteStream;
use dashmap::DashMap;
use std::any::Any;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};

const KIND_SHIFT: u32 = 56;
const SERIAL_MASK: u64 = (1 << KIND_SHIFT) - 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    Sandbox = 1,
    Exec = 2,
    Stream = 3,
    Object = 4,
}

impl Kind {
    pub fn from_handle(h: u64) -> Option<Kind> {
        match h >> KIND_SHIFT {
            1 => Some(Kind::Sandbox),
            2 => Some(Kind::Exec),
            3 => Some(Kind::Stream),
            4 => Some(Kind::Object),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Sandbox => "sandbox",
            Kind::Exec => "exec",
            Kind::Stream => "stream",
            Kind::Object => "object",
        }
    }
}

#[derive(Clone)]
enum Entry {
    Any(Arc<dyn Any + Send + Sync>),
    Stream(Arc<dyn ByteStream>),
}

pub struct Registry {
    entries: DashMap<u64, Entry>,
    next_serial: AtomicU64,
}

impl Default for Registry {
    fn default() -> Self {
        Registry {
            entries: DashMap::new(),
            next_serial: AtomicU64::new(1),
        }
    }
}

impl Registry {
    fn issue(&self, kind: Kind, entry: Entry) -> u64 {
        let serial = self.next_serial.fetch_add(1, Ordering::Relaxed);
        let h = ((kind as u64) << KIND_SHIFT) | (serial & SERIAL_MASK);
        self.entries.insert(h, entry);
        h
    }

    /// Registers an engine object under a new handle of `kind`.
    pub fn insert<T: Any + Send + Sync>(&self, kind: Kind, obj: Arc<T>) -> u64 {
        self.issue(kind, Entry::Any(obj))
    }

    /// Registers a byte stream under a new stream handle.
    pub fn insert_stream(&self, s: Arc<dyn ByteStream>) -> u64 {
        self.issue(Kind::Stream, Entry::Stream(s))
    }

    fn lookup(&self, h: u64, want: Kind) -> Result<Entry, ApiError> {
        match Kind::from_handle(h) {
            Some(k) if k == want => {}
            Some(k) => {
                return Err(ApiError::invalid_argument(format!(
                    "handle {h:#x} is a {} handle, want {}",
                    k.as_str(),
                    want.as_str()
                )))
            }
            None => {
                return Err(ApiError::not_found(format!(
                    "handle {h:#x} was never issued"
                )))
            }
        }
        self.entries
            .get(&h)
            .map(|e| e.value().clone())
            .ok_or_else(|| self.missing(h))
    }

    fn missing(&self, h: u64) -> ApiError {
        if self.was_issued(h) {
            ApiError::not_found(format!("handle {h:#x} is closed"))
        } else {
            ApiError::not_found(format!("handle {h:#x} was never issued"))
        }
    }

    /// Serial below the counter and a known kind. A forged handle can pass
    /// this (it cannot tell which kind an old serial had); that only makes
    /// closing it a harmless no-op.
    fn was_issued(&self, h: u64) -> bool {
        let serial = h & SERIAL_MASK;
        Kind::from_handle(h).is_some()
            && serial != 0
            && serial < self.next_serial.load(Ordering::Relaxed)
    }

    /// The object behind a live handle of `kind`, as its concrete type.
    pub fn get<T: Any + Send + Sync>(&self, h: u64, kind: Kind) -> Result<Arc<T>, ApiError> {
        match self.lookup(h, kind)? {
            Entry::Any(a) => a.downcast::<T>().map_err(|_| {
                ApiError::internal(format!("handle {h:#x} holds an unexpected object type"))
            }),
            Entry::Stream(_) => Err(ApiError::internal(format!(
                "handle {h:#x} holds a stream, not an object"
            ))),
        }
    }

    /// The stream behind a live stream handle.
    pub fn stream(&self, h: u64) -> Result<Arc<dyn ByteStream>, ApiError> {
        match self.lookup(h, Kind::Stream)? {
            Entry::Stream(s) => Ok(s),
            Entry::Any(_) => Err(ApiError::internal(format!(
                "stream handle {h:#x} holds no stream"
            ))),
        }
    }

    /// The kind of a live handle.
    pub fn kind(&self, h: u64) -> Result<Kind, ApiError> {
        let kind = Kind::from_handle(h).ok_or_else(|| self.missing(h))?;
        if self.entries.contains_key(&h) {
            Ok(kind)
        } else {
            Err(self.missing(h))
        }
    }

    /// Closes a handle. Closing twice is fine; a number that was never
    /// issued is `not_found`.
    pub fn close(&self, h: u64) -> Result<(), ApiError> {
        if self.entries.remove(&h).is_some() || self.was_issued(h) {
            Ok(())
        } else {
            Err(ApiError::not_found(format!(
                "handle {h:#x} was never issued"
            )))
        }
    }

    /// Removes a live handle and hands its object to the caller (e.g. to
    /// shut it down); `Ok(None)` if it was already closed.
    pub fn take<T: Any + Send + Sync>(
        &self,
        h: u64,
        kind: Kind,
    ) -> Result<Option<Arc<T>>, ApiError> {
        match self.lookup(h, kind) {
            Ok(_) => {}
            Err(e) if self.was_issued(h) && Kind::from_handle(h) == Some(kind) => {
                let _ = e;
                return Ok(None);
            }
            Err(e) => return Err(e),
        }
        match self.entries.remove(&h) {
            Some((_, Entry::Any(a))) => a.downcast::<T>().map(Some).map_err(|_| {
                ApiError::internal(format!("handle {h:#x} holds an unexpected object type"))
            }),
            Some((_, Entry::Stream(_))) => Err(ApiError::internal(format!(
                "handle {h:#x} holds a stream, not an object"
            ))),
            None => Ok(None),
        }
    }

    /// Live handles; for leak checks.
    #[cfg(any(test, feature = "test-hooks"))]
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

static GLOBAL: LazyLock<Registry> = LazyLock::new(Registry::default);

/// The process-wide registry behind the C ABI.
pub fn global() -> &'static Registry {
    &GLOBAL
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::thread;

    static DROPS: AtomicUsize = AtomicUsize::new(0);

    #[derive(Debug)]
    struct Counted(u64);
    impl Drop for Counted {
        fn drop(&mut self) {
            DROPS.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn many_threads_insert_lookup_close() {
        const THREADS: u64 = 8;
        const PER: u64 = 2_000;
        let reg = Arc::new(Registry::default());

        // Insert from all threads at once, each checking its own entries.
        let handles: Vec<Vec<u64>> = (0..THREADS)
            .map(|t| {
                let reg = reg.clone();
                thread::spawn(move || {
                    (0..PER)
                        .map(|i| {
                            let tag = t * PER + i;
                            let h = reg.insert(Kind::Object, Arc::new(Counted(tag)));
                            assert_eq!(reg.get::<Counted>(h, Kind::Object).unwrap().0, tag);
                            h
                        })
                        .collect()
                })
            })
            .map(|j| j.join().unwrap())
            .collect();
        let all: Vec<u64> = handles.into_iter().flatten().collect();
        assert_eq!(reg.len() as u64, THREADS * PER, "no entry lost");
        let mut uniq = all.clone();
        uniq.sort_unstable();
        uniq.dedup();
        assert_eq!(uniq.len(), all.len(), "handles are unique");

        // Two threads race to take every handle while others look up and
        // double-close: exactly one take wins per handle.
        let all = Arc::new(all);
        let won = Arc::new(AtomicUsize::new(0));
        let mut joins = Vec::new();
        for t in 0..THREADS {
            let (reg, all, won) = (reg.clone(), all.clone(), won.clone());
            joins.push(thread::spawn(move || {
                for (i, &h) in all.iter().enumerate() {
                    match t % 4 {
                        0 | 1 => {
                            if reg.take::<Counted>(h, Kind::Object).unwrap().is_some() {
                                won.fetch_add(1, Ordering::SeqCst);
                            }
                        }
                        2 => {
                            if let Ok(obj) = reg.get::<Counted>(h, Kind::Object) {
                                assert_eq!(obj.0, i as u64);
                            }
                        }
                        _ => reg.close(h).unwrap(),
                    }
                }
            }));
        }
        for j in joins {
            j.join().unwrap();
        }
        assert!(reg.is_empty());
        // Drops: every object exactly once (a double release would overshoot).
        assert_eq!(DROPS.load(Ordering::SeqCst) as u64, THREADS * PER);
        assert!(won.load(Ordering::SeqCst) as u64 <= THREADS * PER);
        for &h in all.iter() {
            assert_eq!(
                reg.get::<Counted>(h, Kind::Object).unwrap_err().code,
                lockbox_engine::ErrorCode::NotFound
            );
            reg.close(h).expect("double close is harmless");
        }
    }

    #[test]
    fn wrong_kind_forged_and_never_issued() {
        let reg = Registry::default();
        let h = reg.insert(Kind::Object, Arc::new(1u8));
        let as_sandbox = (h & SERIAL_MASK) | ((Kind::Sandbox as u64) << KIND_SHIFT);
        assert_eq!(
            reg.get::<u8>(h, Kind::Sandbox).unwrap_err().code,
            lockbox_engine::ErrorCode::InvalidArgument
        );
        assert_eq!(
            reg.get::<u8>(as_sandbox, Kind::Sandbox).unwrap_err().code,
            lockbox_engine::ErrorCode::NotFound
        );
        assert!(reg.close(0).is_err());
        assert!(reg.close(h + 1000).is_err(), "serial never issued");
        assert!(reg.close(0xff << KIND_SHIFT | 1).is_err(), "unknown kind");
        assert!(
            reg.get::<u16>(h, Kind::Object).is_err(),
            "wrong type is an error, not a panic"
        );
    }
}
