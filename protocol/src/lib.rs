//! The wire protocol between the Lockbox engine (host side) and the agent
//! that runs as PID 1 inside every sandbox.
//!
//! One byte stream carries many operations at once. Every operation is
//! identified by a `u32` id that the engine picks; control messages are JSON
//! (small, versionable), bulk bytes travel in `Data` frames so a 256 MiB file
//! is never base64-encoded. Each data direction is flow-controlled by credits
//! so a slow reader applies backpressure instead of growing buffers.
//!
//! See `docs/protocol.md` for the full description.

mod error;
mod frame;
mod launch;
mod message;
pub mod reset;

pub use error::{ErrorCode, WireError};
pub use frame::{
    read_frame, read_frame_or_reject, write_frame, Frame, FrameError, FrameKind, Rejected,
    HEADER_LEN, MAX_PAYLOAD, MAX_SKIP,
};
pub use launch::*;
pub use message::*;

/// Bumped on any incompatible change; checked in the Hello handshake.
pub const PROTOCOL_VERSION: u32 = 1;

/// Bytes a sender may have in flight on one (id, stream) before it must
/// wait for a `Credit` frame.
pub const INITIAL_WINDOW: u32 = 8 * 1024 * 1024;

/// Data frame payloads are cut to at most this size.
pub const DATA_CHUNK: usize = 256 * 1024;

/// Stream numbers inside an operation.
pub mod stream {
    /// Bytes flowing into the sandbox: exec stdin, file contents being written.
    pub const STDIN: u8 = 0;
    /// Bytes flowing out: exec stdout, file contents being read.
    pub const STDOUT: u8 = 1;
    /// Exec stderr.
    pub const STDERR: u8 = 2;
}
