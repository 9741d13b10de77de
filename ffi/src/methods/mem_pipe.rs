//! An in-memory [`ByteStream`]: bytes written come out of read, with a
//! bounded buffer so writers feel backpressure. Backs `debug.pipe`.
use crate::error::ApiError;
use crate::stream::{BoxFuture, ByteStream};
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, SimplexStream, WriteHalf};
use tokio::sync::Mutex;

pub struct MemPipe {
    rd: Mutex<ReadHalf<SimplexStream>>,
    wr: Mutex<Option<WriteHalf<SimplexStream>>>,
}

impl MemPipe {
    pub fn new(capacity: usize) -> Self {
        let (rd, wr) = tokio::io::simplex(capacity);
        MemPipe {
            rd: Mutex::new(rd),
            wr: Mutex::new(Some(wr)),
        }
    }
}

fn io_err(e: std::io::Error) -> ApiError {
    ApiError::internal(format!("pipe: {e}"))
}

impl ByteStream for MemPipe {
    fn read<'a>(&'a self, buf: &'a mut [u8]) -> BoxFuture<'a, Result<usize, ApiError>> {
        Box::pin(async move { self.rd.lock().await.read(buf).await.map_err(io_err) })
    }

    fn write<'a>(&'a self, data: &'a [u8]) -> BoxFuture<'a, Result<(), ApiError>> {
        Box::pin(async move {
            let mut g = self.wr.lock().await;
            let w = g
                .as_mut()
                .ok_or_else(|| ApiError::invalid_argument("pipe: write side is closed"))?;
            w.write_all(data).await.map_err(io_err)
        })
    }

    fn close_write(&self) -> BoxFuture<'_, Result<(), ApiError>> {
        Box::pin(async move {
            if let Some(mut w) = self.wr.lock().await.take() {
                w.shutdown().await.map_err(io_err)?;
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_then_read_then_eof() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            let p = MemPipe::new(16);
            p.write(b"hello").await.unwrap();
            p.close_write().await.unwrap();
            let mut buf = [0u8; 8];
            let n = p.read(&mut buf).await.unwrap();
            assert_eq!(&buf[..n], b"hello");
            assert_eq!(p.read(&mut buf).await.unwrap(), 0, "EOF after close_write");
            assert!(p.write(b"x").await.is_err());
        });
    }
}
