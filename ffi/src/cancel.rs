//! Cancel ids (docs/abi.md, "Cancellation").
//!
//! The caller picks a non-zero id per blocking call and may cancel it
//! before, during or after the call. The table maps an id to either the
//! token of the call running under it, or a tombstone left by a cancel that
//! arrived before its call started (or after it ended). A call that finds a
//! tombstone fails at once with `canceled`; `lockbox_cancel_release` forgets
//! the tombstone.
use crate::error::ApiError;
use dashmap::mapref::entry::Entry;
use dashmap::DashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock};
use tokio::sync::Notify;

#[derive(Default)]
struct Flag {
    canceled: AtomicBool,
    notify: Notify,
}

impl Flag {
    fn fire(&self) {
        self.canceled.store(true, Ordering::SeqCst);
        self.notify.notify_waiters();
    }
}

/// What a method sees of its call's cancellation. `none()` never fires.
#[derive(Clone, Default)]
pub struct CancelToken(Option<Arc<Flag>>);

impl CancelToken {
    pub fn none() -> Self {
        CancelToken(None)
    }

    pub fn is_canceled(&self) -> bool {
        self.0
            .as_ref()
            .is_some_and(|f| f.canceled.load(Ordering::SeqCst))
    }

    /// `Err(canceled)` once the call was canceled; for polling loops.
    pub fn check(&self) -> Result<(), ApiError> {
        if self.is_canceled() {
            Err(ApiError::canceled())
        } else {
            Ok(())
        }
    }

    /// Resolves when the call is canceled (never, for `none()`).
    pub async fn canceled(&self) {
        let Some(flag) = &self.0 else {
            return std::future::pending().await;
        };
        loop {
            let notified = flag.notify.notified();
            tokio::pin!(notified);
            // Register before checking the flag so a fire in between is seen.
            notified.as_mut().enable();
            if flag.canceled.load(Ordering::SeqCst) {
                return;
            }
            notified.await;
        }
    }
}

enum Slot {
    Active(Arc<Flag>),
    Tombstone,
}

#[derive(Default)]
pub struct CancelTable {
    slots: DashMap<u64, Slot>,
}

/// Holds a call's id for as long as the call runs.
pub struct CallScope<'a> {
    table: &'a CancelTable,
    id: u64,
    token: CancelToken,
}

impl CallScope<'_> {
    pub fn token(&self) -> CancelToken {
        self.token.clone()
    }
}

impl Drop for CallScope<'_> {
    fn drop(&mut self) {
        if self.id == 0 {
            return;
        }
        let mine = self.token.0.as_ref();
        self.table.slots.remove_if(&self.id, |_, slot| match slot {
            Slot::Active(f) => mine.is_some_and(|m| Arc::ptr_eq(m, f)),
            Slot::Tombstone => false,
        });
    }
}

impl CancelTable {
    /// Starts a call under `id`. Fails with `canceled` when a cancel for
    /// the id came first, and with `invalid_argument` when another call is
    /// already running under it.
    pub fn begin(&self, id: u64) -> Result<CallScope<'_>, ApiError> {
        if id == 0 {
            return Ok(CallScope {
                table: self,
                id,
                token: CancelToken::none(),
            });
        }
        match self.slots.entry(id) {
            Entry::Occupied(e) => match e.get() {
                Slot::Tombstone => Err(ApiError::canceled()),
                Slot::Active(_) => Err(ApiError::invalid_argument(format!(
                    "cancel id {id} is already in use by a running call"
                ))),
            },
            Entry::Vacant(v) => {
                let flag = Arc::new(Flag::default());
                v.insert(Slot::Active(flag.clone()));
                Ok(CallScope {
                    table: self,
                    id,
                    token: CancelToken(Some(flag)),
                })
            }
        }
    }

    /// Cancels the call running under `id`, or leaves a tombstone.
    pub fn cancel(&self, id: u64) {
        if id == 0 {
            return;
        }
        match self.slots.entry(id) {
            Entry::Occupied(e) => {
                if let Slot::Active(f) = e.get() {
                    f.fire();
                }
            }
            Entry::Vacant(v) => {
                v.insert(Slot::Tombstone);
            }
        }
    }

    /// Forgets a tombstone. A running call's slot is left alone: its scope
    /// removes it when the call returns.
    pub fn release(&self, id: u64) {
        self.slots
            .remove_if(&id, |_, slot| matches!(slot, Slot::Tombstone));
    }

    /// Slots held (running calls plus tombstones); for leak checks.
    #[cfg(any(test, feature = "test-hooks"))]
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }
}

static TABLE: LazyLock<CancelTable> = LazyLock::new(CancelTable::default);

pub fn table() -> &'static CancelTable {
    &TABLE
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cancel_before_leaves_tombstone_until_release() {
        let t = CancelTable::default();
        t.cancel(7);
        assert_eq!(
            t.begin(7).err().map(|e| e.code),
            Some(ApiError::canceled().code)
        );
        t.release(7);
        assert!(t.is_empty());
        let s = t.begin(7).expect("id is free again");
        assert!(!s.token().is_canceled());
    }

    #[test]
    fn cancel_during_fires_token_and_scope_cleans_up() {
        let t = CancelTable::default();
        let s = t.begin(9).unwrap();
        let tok = s.token();
        assert!(t.begin(9).is_err(), "id in use");
        t.cancel(9);
        assert!(tok.is_canceled());
        drop(s);
        assert!(t.is_empty());
    }

    #[test]
    fn release_does_not_touch_a_running_call() {
        let t = CancelTable::default();
        let s = t.begin(3).unwrap();
        t.release(3);
        assert_eq!(t.len(), 1);
        drop(s);
        assert!(t.is_empty());
    }
}
