//! Credit-based flow control for one outgoing stream: the agent may have at
//! most the granted number of bytes in flight; the engine's `Credit`
//! frames top it up. Single-threaded (the agent's runtime is).

use std::cell::Cell;

use tokio::sync::Notify;

pub struct Window {
    avail: Cell<u64>,
    notify: Notify,
}

impl Default for Window {
    fn default() -> Self {
        Window {
            avail: Cell::new(lockbox_protocol::INITIAL_WINDOW as u64),
            notify: Notify::new(),
        }
    }
}

impl Window {
    pub fn grant(&self, n: u32) {
        self.avail.set(self.avail.get().saturating_add(n as u64));
        self.notify.notify_waiters();
    }

    /// Waits for credit and returns how many bytes (at most `max`) may be
    /// sent now; the caller must `spend` what it actually sends.
    pub async fn acquire(&self, max: usize) -> usize {
        loop {
            let a = self.avail.get();
            if a > 0 {
                return (a as usize).min(max);
            }
            self.notify.notified().await;
        }
    }

    pub fn spend(&self, n: usize) {
        self.avail.set(self.avail.get().saturating_sub(n as u64));
    }
}
