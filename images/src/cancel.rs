//! A cancellation flag checked between tar entries and while waiting for
//! locks, so a long unpack stops soon after the caller gives up.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::error::{ImageError, Result};

#[derive(Clone, Debug, Default)]
pub struct Cancel(Arc<AtomicBool>);

impl Cancel {
    /// A flag nobody will set.
    pub fn never() -> Self {
        Self::default()
    }

    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    pub fn is_canceled(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }

    pub(crate) fn check(&self) -> Result<()> {
        if self.is_canceled() {
            Err(ImageError::Canceled)
        } else {
            Ok(())
        }
    }
}
