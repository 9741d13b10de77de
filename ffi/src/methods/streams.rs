//! Stream handles over the engine's byte streams: exec stdio and file
//! contents.
use crate::error::ApiError;
use crate::stream::{BoxFuture, ByteStream};
use lockbox_engine::FileWriter;
use lockbox_engine::{StreamReader, StreamWriter};
use std::sync::Arc;

/// Read-only: exec stdout/stderr, an opened file.
pub(super) struct ReadStream(pub Arc<StreamReader>);

impl ByteStream for ReadStream {
    fn read<'a>(&'a self, buf: &'a mut [u8]) -> BoxFuture<'a, Result<usize, ApiError>> {
        Box::pin(async move { Ok(self.0.read(buf).await?) })
    }
}

/// Write-only: exec stdin.
pub(super) struct WriteStream(pub Arc<StreamWriter>);

impl ByteStream for WriteStream {
    fn write<'a>(&'a self, data: &'a [u8]) -> BoxFuture<'a, Result<(), ApiError>> {
        Box::pin(async move { Ok(self.0.write_all(data).await?) })
    }
    fn close_write(&self) -> BoxFuture<'_, Result<(), ApiError>> {
        Box::pin(async move { Ok(self.0.close_write().await?) })
    }
}

/// A file being written: close_write completes it and reports any error.
pub(super) struct CreateStream(pub FileWriter);

impl ByteStream for CreateStream {
    fn write<'a>(&'a self, data: &'a [u8]) -> BoxFuture<'a, Result<(), ApiError>> {
        Box::pin(async move { Ok(self.0.write_all(data).await?) })
    }
    fn close_write(&self) -> BoxFuture<'_, Result<(), ApiError>> {
        Box::pin(async move {
            self.0.finish().await?;
            Ok(())
        })
    }
}
