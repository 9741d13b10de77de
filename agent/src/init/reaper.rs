//! PID 1's duty: reap every child, including orphans reparented to us,
//! and hand the exit status to whoever started that process.

use std::cell::RefCell;
use std::collections::HashMap;

use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use tokio::sync::oneshot;

#[derive(Default)]
pub struct Reaper {
    waiting: RefCell<HashMap<i32, oneshot::Sender<WaitStatus>>>,
}

impl Reaper {
    /// Must be called right after the spawn, before any await, so the
    /// status cannot be reaped unclaimed.
    pub fn watch(&self, pid: i32) -> oneshot::Receiver<WaitStatus> {
        let (tx, rx) = oneshot::channel();
        self.waiting.borrow_mut().insert(pid, tx);
        rx
    }

    pub fn children(&self) -> usize {
        self.waiting.borrow().len()
    }

    /// Collects every exited child; called on each SIGCHLD.
    pub fn reap(&self) {
        loop {
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(_) => return,
                Ok(st) => {
                    if let Some(pid) = st.pid() {
                        if let Some(tx) = self.waiting.borrow_mut().remove(&pid.as_raw()) {
                            let _ = tx.send(st);
                        }
                    }
                }
            }
        }
    }
}
