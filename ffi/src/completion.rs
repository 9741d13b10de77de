//! The completion queue behind `lockbox_submit` and the `*_submit` stream
//! calls (docs/abi.md, "Asynchronous calls").
//!
//! A blocking export pins the caller's OS thread for as long as it waits;
//! a Go host with thousands of waiting goroutines then needs thousands of
//! threads. Submitted work instead runs on the library's runtime and, when
//! it ends, its token is queued and one eventfd is signalled. The host
//! waits on that fd with its own poller (Go: an `*os.File`), drains the
//! finished tokens and takes each result. No host thread waits inside the
//! library.
//!
//! Every token that was accepted completes exactly once (errors, cancels
//! and panics included), unless the caller forgets it first. A result is
//! held until it is taken or forgotten, so a caller that abandons tokens
//! must forget them; nothing here is bounded by anything but the caller's
//! own concurrency.
use crate::error::ApiError;
use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::future::Future;
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd};
use std::pin::Pin;
use std::sync::{LazyLock, Mutex, OnceLock};
use std::task::{Context, Poll};
use tokio::task::AbortHandle;

/// What `lockbox_take` hands back: the result bytes, or the error.
pub type Outcome = Result<Vec<u8>, ApiError>;

enum Entry {
    /// Running; the handle lets `forget` stop it.
    Pending(Option<AbortHandle>),
    Done(Outcome),
}

#[derive(Default)]
struct Inner {
    entries: HashMap<u64, Entry>,
    ready: VecDeque<u64>,
}

#[derive(Default)]
pub struct Queue {
    inner: Mutex<Inner>,
}

/// Why `take` found nothing to hand back.
pub enum TakeError {
    Unknown,
    Pending,
}

impl Queue {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while the lock is held cannot leave the map half-updated
        // (each critical section is one map/queue operation), so a
        // poisoned lock is still consistent.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Claims `token` for one piece of work. False for 0 or a token that
    /// is still pending or not yet taken.
    pub fn register(&self, token: u64) -> bool {
        if token == 0 {
            return false;
        }
        let mut g = self.lock();
        if g.entries.contains_key(&token) {
            return false;
        }
        g.entries.insert(token, Entry::Pending(None));
        true
    }

    /// Records how to stop the work, unless it already finished.
    pub fn set_abort(&self, token: u64, h: AbortHandle) {
        if let Some(Entry::Pending(slot)) = self.lock().entries.get_mut(&token) {
            *slot = Some(h);
        }
    }

    /// Stores the result and wakes the host. A forgotten token's result is
    /// dropped here.
    pub fn complete(&self, token: u64, r: Outcome) {
        {
            let mut g = self.lock();
            match g.entries.get_mut(&token) {
                Some(e @ Entry::Pending(_)) => *e = Entry::Done(r),
                _ => return,
            }
            g.ready.push_back(token);
        }
        // After the push: a host that read the fd before this write drains
        // again after it, so no completion is missed.
        signal();
    }

    /// Moves up to `out.len()` finished tokens into `out`.
    pub fn drain(&self, out: &mut [u64]) -> usize {
        let mut g = self.lock();
        let mut n = 0;
        while n < out.len() {
            let Some(t) = g.ready.pop_front() else { break };
            // Forgotten after it finished: nobody will take it.
            if matches!(g.entries.get(&t), Some(Entry::Done(_))) {
                out[n] = t;
                n += 1;
            }
        }
        n
    }

    pub fn take(&self, token: u64) -> Result<Outcome, TakeError> {
        let mut g = self.lock();
        match g.entries.get(&token) {
            None => Err(TakeError::Unknown),
            Some(Entry::Pending(_)) => Err(TakeError::Pending),
            Some(Entry::Done(_)) => match g.entries.remove(&token) {
                Some(Entry::Done(r)) => Ok(r),
                _ => unreachable!("checked under the same lock"),
            },
        }
    }

    /// Drops a token's result, or stops its work. True if it was known.
    pub fn forget(&self, token: u64) -> bool {
        let e = self.lock().entries.remove(&token);
        match e {
            Some(Entry::Pending(Some(h))) => {
                // Outside the lock: aborting may drop the task's future
                // here, and that future calls `complete` on its way out
                // only when it ran to the end (it did not).
                h.abort();
                true
            }
            Some(_) => true,
            None => false,
        }
    }

    /// Tokens held (pending or not yet taken); for leak checks.
    #[cfg(any(test, feature = "test-hooks"))]
    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

static QUEUE: LazyLock<Queue> = LazyLock::new(Queue::default);

pub fn queue() -> &'static Queue {
    &QUEUE
}

extern "C" {
    // glibc's eventfd(2) wrapper; std has none and a libc dependency for
    // one call is not worth it.
    fn eventfd(initval: u32, flags: i32) -> i32;
}
const EFD_CLOEXEC: i32 = 0o2000000;
const EFD_NONBLOCK: i32 = 0o4000;

static EVENTFD: OnceLock<Option<File>> = OnceLock::new();

fn event_file() -> Option<&'static File> {
    EVENTFD
        .get_or_init(|| {
            // SAFETY: plain syscall wrapper; a valid fd is owned by the File.
            let fd = unsafe { eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK) };
            if fd < 0 {
                crate::lb_log!(
                    crate::log::Level::Error,
                    "eventfd: {}",
                    std::io::Error::last_os_error()
                );
                return None;
            }
            // SAFETY: fd is fresh and owned by nothing else.
            Some(unsafe { File::from_raw_fd(fd) })
        })
        .as_ref()
}

/// The completion eventfd, or -1 when the kernel refused one.
pub fn fd() -> i32 {
    event_file().map_or(-1, |f| f.as_raw_fd())
}

fn signal() {
    if let Some(mut f) = event_file() {
        // EAGAIN only when the counter is about to overflow (2^64 - 2
        // unread signals): the fd is readable then anyway.
        let _ = f.write(&1u64.to_ne_bytes());
    }
}

/// Runs a future with panics turned into `internal` errors, so a panic in
/// submitted work still completes its token.
pub struct Catch<F>(pub Pin<Box<F>>);

impl<T, F: Future<Output = Result<T, ApiError>>> Future for Catch<F> {
    type Output = Result<T, ApiError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let fut = self.0.as_mut();
        match crate::panic::catch(move || fut.poll(cx)) {
            Ok(p) => p,
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifecycle() {
        let q = Queue::default();
        assert!(!q.register(0));
        assert!(q.register(5));
        assert!(!q.register(5), "token in use");
        assert!(matches!(q.take(5), Err(TakeError::Pending)));
        q.complete(5, Ok(b"x".to_vec()));
        let mut out = [0u64; 4];
        assert_eq!(q.drain(&mut out), 1);
        assert_eq!(out[0], 5);
        assert_eq!(q.take(5).ok().unwrap().unwrap(), b"x");
        assert!(matches!(q.take(5), Err(TakeError::Unknown)));
        assert!(q.is_empty());
    }

    #[test]
    fn forgotten_tokens_leave_nothing() {
        let q = Queue::default();
        assert!(q.register(1));
        assert!(q.forget(1));
        q.complete(1, Ok(vec![1]));
        assert!(q.is_empty());
        assert!(q.register(2));
        q.complete(2, Ok(vec![2]));
        assert!(q.forget(2));
        let mut out = [0u64; 4];
        assert_eq!(q.drain(&mut out), 0, "a forgotten result is not reported");
        assert!(!q.forget(2));
    }
}
