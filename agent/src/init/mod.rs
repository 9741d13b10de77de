//! The agent: PID 1 of the sandbox. It reaps, forwards a stop request to
//! every process, and serves the agent protocol on the socket the
//! supervisor bound. Everything runs on one thread (no threads were
//! allowed before the forks; a single thread also keeps fork-for-exec
//! simple).

mod conn;
mod exec;
mod fdio;
mod files;
mod reaper;
mod signals;
mod window;

use std::os::fd::OwnedFd;
use std::rc::Rc;
use std::time::Duration;

use lockbox_protocol::LaunchSpec;
use tokio::sync::Notify;

use crate::confine::Confine;

pub struct Agent {
    pub spec: LaunchSpec,
    pub confine: Confine,
    pub reaper: Rc<reaper::Reaper>,
    /// Starts every exec (see spawner.rs); None until the first start or
    /// after it died.
    pub spawner: std::cell::RefCell<Option<crate::spawner::Spawner>>,
    pub host_pid: u32,
    /// Set once a shutdown is under way; wakes the main loop when done.
    pub done: Notify,
}

/// Grace between SIGTERM and SIGKILL on shutdown.
const GRACE: Duration = Duration::from_secs(3);

pub fn run(spec: LaunchSpec, listener: OwnedFd, confine: Confine, host_pid: u32) -> i32 {
    // Processes in the sandbox run as the same uid as the agent; not
    // dumpable means they cannot ptrace it or open its /proc files.
    // SAFETY: prctl with integer arguments.
    unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0) };
    // Before any workload exists: the spawner is briefly dumpable while
    // it raises its OOM score. If this fails, the first exec tries again.
    let spawner = crate::spawner::Spawner::start(&confine).ok();
    if let Err(e) = signals::Signals::block() {
        eprintln!("agent: block signals: {e}");
        return 1;
    }
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("agent: runtime: {e}");
            return 1;
        }
    };
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        let std_l = std::os::unix::net::UnixListener::from(listener);
        let _ = std_l.set_nonblocking(true);
        let listener = match tokio::net::UnixListener::from_std(std_l) {
            Ok(l) => l,
            Err(e) => {
                eprintln!("agent: listener: {e}");
                return 1;
            }
        };
        let signals = match signals::Signals::new() {
            Ok(s) => s,
            Err(e) => {
                eprintln!("agent: signalfd: {e}");
                return 1;
            }
        };
        let reaper = Rc::new(reaper::Reaper::default());
        let agent = Rc::new(Agent {
            spec,
            confine,
            reaper,
            spawner: std::cell::RefCell::new(spawner),
            host_pid,
            done: Notify::new(),
        });
        let a = agent.clone();
        tokio::task::spawn_local(async move {
            a.reaper.reap();
            let mut stopping = false;
            while let Ok(sig) = signals.next().await {
                if sig == libc::SIGCHLD {
                    a.reaper.reap();
                } else if sig == libc::SIGTERM && !stopping {
                    // Stop: forward to every process, grace, then kill.
                    stopping = true;
                    let a2 = a.clone();
                    tokio::task::spawn_local(async move {
                        shutdown(&a2).await;
                        a2.done.notify_one();
                    });
                }
            }
        });
        loop {
            tokio::select! {
                r = listener.accept() => {
                    if let Ok((s, _)) = r {
                        tokio::task::spawn_local(conn::serve(agent.clone(), s));
                    }
                }
                _ = agent.done.notified() => return 0,
            }
        }
    })
}

/// SIGTERM to every process in the sandbox, SIGKILL after the grace.
pub async fn shutdown(agent: &Agent) {
    // SAFETY: kill(-1) from PID 1 of a pid namespace reaches exactly the
    // processes of that namespace, except ourselves.
    unsafe { libc::kill(-1, libc::SIGTERM) };
    let deadline = tokio::time::Instant::now() + GRACE;
    while tokio::time::Instant::now() < deadline {
        // SAFETY: as above; signal 0 only probes.
        if unsafe { libc::kill(-1, 0) } != 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // SAFETY: as above.
    unsafe { libc::kill(-1, libc::SIGKILL) };
    let _ = agent.reaper.children();
}
