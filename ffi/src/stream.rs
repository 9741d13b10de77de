//! Byte streams behind stream handles. Exec stdin/stdout/stderr and file
//! contents implement [`ByteStream`]; `lockbox_stream_read/write/close_write`
//! drive it. Bulk bytes never go through JSON.
use crate::error::ApiError;
use std::future::Future;
use std::pin::Pin;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Implementations synchronize internally: a reader and a writer may be in
/// their calls at the same time, from different threads. Futures must be
/// cancel-safe (dropped when the caller cancels, losing no bytes that were
/// not yet reported as read or written).
pub trait ByteStream: Send + Sync {
    /// Waits for at least one byte, copies up to `buf.len()` bytes, returns
    /// how many. `Ok(0)` means end of stream.
    fn read<'a>(&'a self, buf: &'a mut [u8]) -> BoxFuture<'a, Result<usize, ApiError>> {
        let _ = buf;
        Box::pin(async { Err(ApiError::unsupported("this stream cannot be read")) })
    }

    /// Writes all of `data`, waiting for backpressure.
    fn write<'a>(&'a self, data: &'a [u8]) -> BoxFuture<'a, Result<(), ApiError>> {
        let _ = data;
        Box::pin(async { Err(ApiError::unsupported("this stream cannot be written")) })
    }

    /// Half-close: the reader on the other side sees end of stream.
    fn close_write(&self) -> BoxFuture<'_, Result<(), ApiError>> {
        Box::pin(async { Err(ApiError::unsupported("this stream cannot be written")) })
    }
}
