//! The engine's QMP client: qemu's control socket (`qmp.sock` in the
//! sandbox's directory, bound 0600 by `lockbox-helper vmm`, qemu's fd 4).
//! Only the engine talks QMP; the guest cannot write to it, but qemu's
//! replies are still read with bounds: a line, the events skipped while
//! waiting for one reply, and the time.
//!
//! Blocking I/O on purpose: callers run it on a blocking thread, and one
//! command at a time is all QMP offers per connection anyway.

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::error::{EngineError, Result};

pub const SOCKET: &str = "qmp.sock";
/// The qemu arguments that serve QMP on the helper's fd 4.
pub fn args() -> [String; 4] {
    [
        "-chardev".into(),
        "socket,id=qmp,fd=4,server=on,wait=off".into(),
        "-mon".into(),
        "chardev=qmp,mode=control".into(),
    ]
}

/// A reply or event line; qemu's are a few hundred bytes.
const MAX_LINE: usize = 64 * 1024;
/// Events (not replies) read while waiting for one reply.
const MAX_EVENTS: usize = 1024;

pub struct Qmp {
    sock: UnixStream,
    buf: Vec<u8>,
    deadline: Instant,
}

fn err(what: &str, e: impl std::fmt::Display) -> EngineError {
    EngineError::internal(format!("qmp {what}: {e}"))
}

impl Qmp {
    /// Connects and leaves capabilities negotiation; every later read or
    /// write must end within `timeout` of this call (`extend` moves it).
    pub fn connect(dir: &Path, timeout: Duration) -> Result<Qmp> {
        let deadline = Instant::now() + timeout;
        let sock = loop {
            match UnixStream::connect(dir.join(SOCKET)) {
                Ok(s) => break s,
                // Not there yet (a helper that is starting) or refused.
                Err(e) if Instant::now() >= deadline => return Err(err("connect", e)),
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        };
        let mut q = Qmp {
            sock,
            buf: Vec::new(),
            deadline,
        };
        let greeting = q.read_value()?;
        if greeting.get("QMP").is_none() {
            return Err(err("greeting", greeting));
        }
        q.execute("qmp_capabilities", json!({}))?;
        Ok(q)
    }

    pub fn extend(&mut self, timeout: Duration) {
        self.deadline = Instant::now() + timeout;
    }

    fn remaining(&self) -> Result<Duration> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(EngineError::new(
                lockbox_protocol::ErrorCode::Timeout,
                "qmp: qemu did not answer in time",
            ));
        }
        Ok(left)
    }

    /// One line, without its end; refuses a line past MAX_LINE.
    fn read_line(&mut self) -> Result<Vec<u8>> {
        loop {
            if let Some(i) = self.buf.iter().position(|&b| b == b'\n') {
                let line = self.buf.drain(..=i).collect::<Vec<u8>>();
                return Ok(line);
            }
            if self.buf.len() > MAX_LINE {
                return Err(err("read", "a line longer than 64 KiB"));
            }
            let left = self.remaining()?;
            self.sock
                .set_read_timeout(Some(left))
                .map_err(|e| err("read", e))?;
            let mut chunk = [0u8; 4096];
            match self.sock.read(&mut chunk) {
                Ok(0) => return Err(err("read", "qemu closed the connection")),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    self.remaining()?;
                }
                Err(e) => return Err(err("read", e)),
            }
        }
    }

    fn read_value(&mut self) -> Result<Value> {
        let line = self.read_line()?;
        serde_json::from_slice(&line).map_err(|e| err("reply", e))
    }

    fn write(&mut self, cmd: &Value, fd: Option<RawFd>) -> Result<()> {
        let mut bytes = serde_json::to_vec(cmd).map_err(|e| err("encode", e))?;
        bytes.push(b'\n');
        let left = self.remaining()?;
        self.sock
            .set_write_timeout(Some(left))
            .map_err(|e| err("write", e))?;
        match fd {
            None => self.sock.write_all(&bytes).map_err(|e| err("write", e)),
            Some(fd) => send_with_fd(&self.sock, &bytes, fd),
        }
    }

    /// Runs one command and returns its `return` value; an `error` reply
    /// is an error naming qemu's description.
    pub fn execute(&mut self, cmd: &str, args: Value) -> Result<Value> {
        self.execute_fd(cmd, args, None)
    }

    /// As `execute`, with `fd` passed along (SCM_RIGHTS): `getfd`.
    pub fn execute_fd(&mut self, cmd: &str, args: Value, fd: Option<RawFd>) -> Result<Value> {
        self.write(&json!({"execute": cmd, "arguments": args}), fd)?;
        for _ in 0..MAX_EVENTS {
            let v = self.read_value()?;
            if let Some(r) = v.get("return") {
                return Ok(r.clone());
            }
            if let Some(e) = v.get("error") {
                let desc = e.get("desc").and_then(Value::as_str).unwrap_or("?");
                return Err(EngineError::internal(format!("qemu {cmd}: {desc}")));
            }
            // An event: not ours.
        }
        Err(err(cmd, "no reply among 1024 events"))
    }

    /// Polls `query-migrate` until it ends; `Ok` once it completed.
    pub fn wait_migration(&mut self, what: &str) -> Result<()> {
        loop {
            let r = self.execute("query-migrate", json!({}))?;
            match r.get("status").and_then(Value::as_str) {
                Some("completed") => return Ok(()),
                Some("failed") | Some("cancelled") => {
                    let why = r.get("error-desc").and_then(Value::as_str).unwrap_or("");
                    return Err(EngineError::internal(format!("{what} failed: {why}")));
                }
                _ => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    }
}

fn send_with_fd(sock: &UnixStream, bytes: &[u8], fd: RawFd) -> Result<()> {
    // SAFETY: a msghdr over local buffers, sized by CMSG_SPACE for one fd.
    unsafe {
        let mut iov = libc::iovec {
            iov_base: bytes.as_ptr() as *mut libc::c_void,
            iov_len: bytes.len(),
        };
        let space = libc::CMSG_SPACE(std::mem::size_of::<RawFd>() as u32) as usize;
        let mut cbuf = vec![0u8; space];
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cbuf.as_mut_ptr().cast();
        msg.msg_controllen = space;
        let c = libc::CMSG_FIRSTHDR(&msg);
        (*c).cmsg_level = libc::SOL_SOCKET;
        (*c).cmsg_type = libc::SCM_RIGHTS;
        (*c).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<RawFd>() as u32) as usize;
        std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<RawFd>(), fd);
        let n = libc::sendmsg(sock.as_raw_fd(), &msg, libc::MSG_NOSIGNAL);
        if n < 0 {
            return Err(err("sendmsg", io::Error::last_os_error()));
        }
        // The fd went with the first byte; the rest is plain.
        let mut s = sock;
        s.write_all(&bytes[n as usize..])
            .map_err(|e| err("write", e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader};
    use std::os::unix::net::UnixListener;

    /// A fake qemu: greets, answers qmp_capabilities, then runs `then`.
    fn fake(then: impl FnOnce(&mut UnixStream) + Send + 'static) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let l = UnixListener::bind(dir.path().join(SOCKET)).unwrap();
        std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            s.write_all(b"{\"QMP\": {\"version\": {}}}\r\n").unwrap();
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut line = String::new();
            r.read_line(&mut line).unwrap();
            s.write_all(b"{\"return\": {}}\r\n").unwrap();
            line.clear();
            let _ = r.read_line(&mut line);
            then(&mut s);
        });
        dir
    }

    #[test]
    fn events_are_skipped_and_errors_named() {
        let d = fake(|s| {
            s.write_all(b"{\"event\": \"STOP\"}\r\n{\"error\": {\"class\": \"GenericError\", \"desc\": \"no such thing\"}}\r\n")
                .unwrap();
        });
        let mut q = Qmp::connect(d.path(), Duration::from_secs(5)).unwrap();
        let e = q.execute("stop", json!({})).unwrap_err();
        assert!(e.message.contains("no such thing"), "{}", e.message);
    }

    #[test]
    fn a_line_past_the_bound_is_refused() {
        let d = fake(|s| {
            let _ = s.write_all(&vec![b'x'; 200 * 1024]);
        });
        let mut q = Qmp::connect(d.path(), Duration::from_secs(5)).unwrap();
        let e = q.execute("stop", json!({})).unwrap_err();
        assert!(e.message.contains("longer than 64 KiB"), "{}", e.message);
    }

    #[test]
    fn endless_events_end_the_wait() {
        let d = fake(|s| {
            for _ in 0..2000 {
                if s.write_all(b"{\"event\": \"X\"}\r\n").is_err() {
                    return;
                }
            }
        });
        let mut q = Qmp::connect(d.path(), Duration::from_secs(5)).unwrap();
        let e = q.execute("stop", json!({})).unwrap_err();
        assert!(
            e.message.contains("no reply among 1024 events"),
            "{}",
            e.message
        );
    }

    #[test]
    fn silence_times_out() {
        // The fake stays silent for 30 s: the 1 s timeout must end the call
        // well before (10 s leaves a loaded machine room; was 3 s and 2 s).
        let d = fake(|_| std::thread::sleep(Duration::from_secs(30)));
        let mut q = Qmp::connect(d.path(), Duration::from_secs(1)).unwrap();
        let t = Instant::now();
        let e = q.execute("stop", json!({})).unwrap_err();
        assert_eq!(
            e.code,
            lockbox_protocol::ErrorCode::Timeout,
            "{}",
            e.message
        );
        assert!(t.elapsed() < Duration::from_secs(10));
    }
}
