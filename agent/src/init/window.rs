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

    /// The peer is gone: nothing waits for credit any more (what is still
    /// sent is dropped with the connection).
    pub fn close(&self) {
        self.avail.set(u64::MAX / 2);
        self.notify.notify_waiters();
    }

    pub fn spend(&self, n: usize) {
        self.avail.set(self.avail.get().saturating_sub(n as u64));
    }

    /// Waits until `n` bytes may be sent at once (n must not exceed the
    /// initial window, which a well-behaved peer always returns to).
    pub async fn acquire_at_least(&self, n: usize) {
        let n = n.min(lockbox_protocol::INITIAL_WINDOW as usize) as u64;
        while self.avail.get() < n {
            self.notify.notified().await;
        }
    }
}
