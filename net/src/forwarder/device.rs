//! The smoltcp device: two queues of Ethernet frames. The forwarder fills
//! `rx` from the tap fd (after deciding on each frame) and writes `tx` to
//! it, so every frame passes through the forwarder's own code first.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

use smoltcp::phy::{self, Device, DeviceCapabilities, Medium};
use smoltcp::time::Instant;

/// The tap's MTU, which the sandbox side must set too: as large as a tap
/// takes (as pasta does), so one frame and one system call carry up to
/// 64 KiB instead of 1.5 KiB.
pub const MTU: usize = 65520;
/// Ethernet header plus the MTU.
pub const MAX_FRAME: usize = MTU + 14;

/// Frame buffers kept for reuse: enough for a burst of full frames
/// without an allocation (and its zeroing) for each.
const SPARE: usize = 16;

#[derive(Default)]
pub struct Queues {
    pub rx: VecDeque<Vec<u8>>,
    pub tx: VecDeque<Vec<u8>>,
    spare: Vec<Vec<u8>>,
}

impl Queues {
    /// Gives back a frame written to the tap, for the next transmit.
    pub fn recycle(&mut self, mut f: Vec<u8>) {
        if self.spare.len() < SPARE {
            f.clear();
            self.spare.push(f);
        }
    }
}

pub struct RxToken(Vec<u8>);
pub struct TxToken<'a> {
    tx: &'a mut VecDeque<Vec<u8>>,
    spare: &'a mut Vec<Vec<u8>>,
}

impl phy::RxToken for RxToken {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

impl phy::TxToken for TxToken<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        // Zeroed again: smoltcp may leave padding bytes (TCP options after
        // End of List) unwritten, and they must not be an older frame's.
        let mut buf = self.spare.pop().unwrap_or_default();
        buf.resize(len, 0);
        let r = f(&mut buf);
        self.tx.push_back(buf);
        r
    }
}

impl Device for Queues {
    type RxToken<'a> = RxToken;
    type TxToken<'a> = TxToken<'a>;

    fn receive(&mut self, _: Instant) -> Option<(RxToken, TxToken<'_>)> {
        let f = self.rx.pop_front()?;
        let tx = TxToken {
            tx: &mut self.tx,
            spare: &mut self.spare,
        };
        Some((RxToken(f), tx))
    }

    fn transmit(&mut self, _: Instant) -> Option<TxToken<'_>> {
        Some(TxToken {
            tx: &mut self.tx,
            spare: &mut self.spare,
        })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut c = DeviceCapabilities::default();
        c.medium = Medium::Ethernet;
        c.max_transmission_unit = MAX_FRAME;
        c
    }
}

/// One frame from the tap fd (non-blocking); Ok(None) when none is there.
pub fn read_frame(tap: &OwnedFd, buf: &mut [u8]) -> io::Result<Option<usize>> {
    // SAFETY: reading into a buffer valid for its length.
    let n = unsafe { libc::read(tap.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        let e = io::Error::last_os_error();
        return match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(None),
            _ => Err(e),
        };
    }
    Ok(Some(n as usize))
}

/// Writes one frame; a frame the kernel cannot take now is dropped, as a
/// wire would (TCP retransmits).
pub fn write_frame(tap: &OwnedFd, frame: &[u8]) {
    // SAFETY: writing from a buffer valid for its length.
    unsafe { libc::write(tap.as_raw_fd(), frame.as_ptr().cast(), frame.len()) };
}

pub fn set_nonblocking(fd: &OwnedFd) -> io::Result<()> {
    // SAFETY: plain fcntl on an fd we own.
    let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) };
    if flags < 0
        || unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0
    {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
