//! The host side of a VM's session reset (lockbox_protocol::reset,
//! docs/microvm.md "Reattach"). A virtio-serial port has no connection
//! boundary: a new connection to `agent.sock` can receive what the guest
//! wrote for an earlier one (an engine that was killed, a handle that was
//! closed, a VM restored mid-session). So every connection first sends a
//! marker with a fresh random token and discards what the guest sends
//! until the echo of that token; the guest has then ended the old agent
//! session and opened a new one. The ordinary Hello handshake follows.
//!
//! Every byte from the port is the guest's, and the guest may be hostile:
//! the discarding reads one fixed buffer at a time and gives up after
//! `MAX_DISCARD` bytes; the caller bounds the time.

use std::path::Path;

use lockbox_protocol::reset::{encode, Finder, Found, Token, ECHO_MAGIC, MARKER_MAGIC};
use lockbox_protocol::ErrorCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::client::connect_socket;
use crate::error::{EngineError, Result};

/// What an earlier session can leave in flight is a few of the agent's
/// flow-control windows (8 MiB each) at most; a guest that sends more
/// without echoing is not resetting.
pub(super) const MAX_DISCARD: u64 = 64 << 20;
const CHUNK: usize = 64 * 1024;

/// Connects to the VM's port and resets its session; returns the socket,
/// positioned where the new session's bytes start. Not bounded in time:
/// a first connection waits for the boot (the caller's timeout).
pub(super) async fn reset(dir: &Path) -> Result<std::os::unix::net::UnixStream> {
    let std_sock = connect_socket(dir)?;
    std_sock
        .set_nonblocking(true)
        .map_err(|e| EngineError::io("agent socket", e))?;
    let mut sock = tokio::net::UnixStream::from_std(std_sock)
        .map_err(|e| EngineError::io("agent socket", e))?;
    let mut token: Token = [0; 16];
    getrandom::fill(&mut token).map_err(|e| EngineError::internal(format!("getrandom: {e}")))?;
    sock.write_all(&encode(&MARKER_MAGIC, &token))
        .await
        .map_err(|e| EngineError::io("microvm session reset: write", e))?;
    let mut finder = Finder::new(ECHO_MAGIC);
    let mut buf = vec![0u8; CHUNK];
    let mut discarded: u64 = 0;
    loop {
        let n = sock
            .read(&mut buf)
            .await
            .map_err(|e| EngineError::io("microvm session reset: read", e))?;
        if n == 0 {
            return Err(EngineError::new(
                ErrorCode::Unavailable,
                "microvm: the VM's port closed before the guest answered the session reset",
            ));
        }
        let mut rest = &buf[..n];
        loop {
            match finder.feed(rest) {
                Found::Nothing => {
                    discarded += rest.len() as u64;
                    break;
                }
                Found::Token { token: t, end, .. } if t == token => {
                    // The new agent session speaks only after our Hello.
                    if end != rest.len() {
                        return Err(EngineError::internal(format!(
                            "microvm: the guest sent {} bytes after the session reset's echo, before the handshake",
                            rest.len() - end
                        )));
                    }
                    return sock
                        .into_std()
                        .map_err(|e| EngineError::io("agent socket", e));
                }
                // The echo of an earlier connection's marker: stale too.
                Found::Token { end, .. } => {
                    discarded += end as u64;
                    rest = &rest[end..];
                }
            }
        }
        if discarded > MAX_DISCARD {
            return Err(EngineError::new(
                ErrorCode::Unavailable,
                format!(
                    "microvm: the guest sent over {} MiB without echoing the session reset (a broken or hostile guest)",
                    MAX_DISCARD >> 20
                ),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::unix::net::UnixListener;

    /// A fake guest on `<dir>/agent.sock`: reads the marker, then writes
    /// `junk` bytes (never a magic's first byte), then, if `echo`, an echo
    /// of an older token, the echo of the host's token and, once the host
    /// writes a byte, "after". Returns how many bytes it got written.
    fn fake_guest(dir: &Path, junk: u64, echo: bool) -> std::thread::JoinHandle<u64> {
        let l = UnixListener::bind(dir.join("agent.sock")).unwrap();
        std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut m = [0u8; 32];
            s.read_exact(&mut m).unwrap();
            assert_eq!(m[..16], MARKER_MAGIC);
            let token: Token = m[16..].try_into().unwrap();
            let chunk = vec![b'x'; 64 * 1024];
            let mut sent = 0u64;
            while sent < junk {
                match s.write(&chunk) {
                    Ok(n) => sent += n as u64,
                    Err(_) => return sent,
                }
            }
            if echo {
                s.write_all(&encode(&ECHO_MAGIC, &[0; 16])).unwrap();
                s.write_all(b"stale").unwrap();
                s.write_all(&encode(&ECHO_MAGIC, &token)).unwrap();
                let mut b = [0u8; 1];
                s.read_exact(&mut b).unwrap();
                s.write_all(b"after").unwrap();
            }
            sent
        })
    }

    #[tokio::test]
    async fn stale_bytes_before_the_echo_are_discarded() {
        let dir = tempfile::tempdir().unwrap();
        let guest = fake_guest(dir.path(), 1 << 20, true);
        let mut s = reset(dir.path()).await.unwrap();
        s.set_nonblocking(false).unwrap();
        s.write_all(b"h").unwrap();
        let mut b = [0u8; 5];
        s.read_exact(&mut b).unwrap();
        assert_eq!(
            &b, b"after",
            "the first byte after the reset is the new session's"
        );
        assert_eq!(guest.join().unwrap(), 1 << 20);
    }

    /// A guest that never echoes is cut off after MAX_DISCARD bytes, not
    /// read (or held) without end; the control above gets through 1 MiB.
    #[tokio::test]
    async fn a_guest_that_never_echoes_is_cut_off() {
        let dir = tempfile::tempdir().unwrap();
        let guest = fake_guest(dir.path(), 4 * MAX_DISCARD, false);
        let e = reset(dir.path()).await.unwrap_err();
        assert_eq!(e.code, ErrorCode::Unavailable, "{e}");
        assert!(e.message.contains("without echoing"), "{e}");
        let sent = guest.join().unwrap();
        assert!(
            sent > MAX_DISCARD && sent < MAX_DISCARD + (16 << 20),
            "the guest wrote {sent} bytes: the host read past its bound"
        );
    }
}
