//! Frame layout (all integers big-endian):
//!
//! ```text
//! u32 length of everything after this field (>= 6)
//! u8  kind      (FrameKind)
//! u8  stream    (protocol::stream::*; 0 for control frames)
//! u32 id        (operation id; 0 = the connection itself)
//! ..  payload
//! ```

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Bytes before the payload, the length field included.
pub const HEADER_LEN: usize = 10;
/// Upper bound for one payload; anything larger is a protocol violation,
/// which keeps a corrupt or hostile peer from making us allocate gigabytes.
pub const MAX_PAYLOAD: usize = 4 * 1024 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum FrameKind {
    /// JSON-encoded `Message`.
    Control = 1,
    /// Raw bytes of one stream of one operation.
    Data = 2,
    /// The sender will send no more data on this stream.
    Eof = 3,
    /// Payload is a u32: the receiver grants that many more bytes.
    Credit = 4,
}

impl FrameKind {
    fn from_u8(v: u8) -> Option<FrameKind> {
        Some(match v {
            1 => FrameKind::Control,
            2 => FrameKind::Data,
            3 => FrameKind::Eof,
            4 => FrameKind::Credit,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub kind: FrameKind,
    pub stream: u8,
    pub id: u32,
    pub payload: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("connection closed")]
    Closed,
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("protocol violation: {0}")]
    Protocol(String),
}

impl Frame {
    pub fn control(id: u32, msg: &crate::Message) -> Frame {
        Frame {
            kind: FrameKind::Control,
            stream: 0,
            id,
            // Serializing our own enum cannot fail.
            payload: serde_json::to_vec(msg).unwrap_or_default(),
        }
    }

    pub fn data(id: u32, stream: u8, payload: Vec<u8>) -> Frame {
        Frame {
            kind: FrameKind::Data,
            stream,
            id,
            payload,
        }
    }

    pub fn eof(id: u32, stream: u8) -> Frame {
        Frame {
            kind: FrameKind::Eof,
            stream,
            id,
            payload: Vec::new(),
        }
    }

    pub fn credit(id: u32, stream: u8, bytes: u32) -> Frame {
        Frame {
            kind: FrameKind::Credit,
            stream,
            id,
            payload: bytes.to_be_bytes().to_vec(),
        }
    }

    /// Decodes a control frame's JSON payload.
    pub fn message(&self) -> Result<crate::Message, FrameError> {
        serde_json::from_slice(&self.payload)
            .map_err(|e| FrameError::Protocol(format!("bad control message: {e}")))
    }

    /// Decodes a credit frame's grant.
    pub fn credit_bytes(&self) -> Result<u32, FrameError> {
        let b: [u8; 4] = self
            .payload
            .as_slice()
            .try_into()
            .map_err(|_| FrameError::Protocol("credit frame payload must be 4 bytes".into()))?;
        Ok(u32::from_be_bytes(b))
    }

    /// The header as bytes, for writers that send header and payload
    /// without copying them into one buffer.
    pub fn header(&self) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        let len = (self.payload.len() + HEADER_LEN - 4) as u32;
        h[0..4].copy_from_slice(&len.to_be_bytes());
        h[4] = self.kind as u8;
        h[5] = self.stream;
        h[6..10].copy_from_slice(&self.id.to_be_bytes());
        h
    }
}

/// Reads a frame header; returns it and the payload length. `Closed`
/// means a clean EOF between frames; a payload above `limit` (or a length
/// below the header) is broken framing.
async fn read_header<R: AsyncRead + Unpin>(
    r: &mut R,
    limit: usize,
) -> Result<([u8; HEADER_LEN], usize), FrameError> {
    let mut h = [0u8; HEADER_LEN];
    match r.read_exact(&mut h[..4]).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Err(FrameError::Closed),
        Err(e) => return Err(e.into()),
    }
    let len = u32::from_be_bytes([h[0], h[1], h[2], h[3]]) as usize;
    if len < HEADER_LEN - 4 || len - (HEADER_LEN - 4) > limit {
        return Err(FrameError::Protocol(format!("bad frame length {len}")));
    }
    r.read_exact(&mut h[4..]).await?;
    Ok((h, len - (HEADER_LEN - 4)))
}

/// Reads one frame. `Closed` means a clean EOF between frames.
pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> Result<Frame, FrameError> {
    let (h, plen) = read_header(r, MAX_PAYLOAD).await?;
    let kind = FrameKind::from_u8(h[4])
        .ok_or_else(|| FrameError::Protocol(format!("unknown frame kind {}", h[4])))?;
    let id = u32::from_be_bytes([h[6], h[7], h[8], h[9]]);
    let mut payload = vec![0u8; plen];
    r.read_exact(&mut payload).await?;
    Ok(Frame {
        kind,
        stream: h[5],
        id,
        payload,
    })
}

/// A frame whose header was sound but that cannot be accepted (payload
/// above `MAX_PAYLOAD`, unknown kind). Its payload has been read and
/// dropped, so the stream is still in step and the receiver can answer
/// the operation with an error instead of closing the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    pub kind: u8,
    pub stream: u8,
    pub id: u32,
    pub len: usize,
    pub reason: String,
}

/// Payloads up to this size are read past (without buffering) when
/// rejected; a larger length is taken for corrupt framing and ends the
/// connection, since skipping it could stall the reader for gigabytes.
pub const MAX_SKIP: usize = 64 * 1024 * 1024;

/// Like `read_frame`, but a frame that is well delimited yet unacceptable
/// comes back as `Ok(Err(Rejected))` with the stream positioned at the
/// next frame. Only broken framing (a length below the header size or
/// above `MAX_SKIP`) and I/O errors are `Err`.
pub async fn read_frame_or_reject<R: AsyncRead + Unpin>(
    r: &mut R,
) -> Result<Result<Frame, Rejected>, FrameError> {
    let (h, plen) = read_header(r, MAX_SKIP).await?;
    let id = u32::from_be_bytes([h[6], h[7], h[8], h[9]]);
    let kind = FrameKind::from_u8(h[4]);
    let reason = match kind {
        None => Some(format!("unknown frame kind {}", h[4])),
        Some(_) if plen > MAX_PAYLOAD => Some(format!(
            "frame of {plen} bytes exceeds the {MAX_PAYLOAD}-byte limit"
        )),
        Some(_) => None,
    };
    if let Some(reason) = reason {
        let skipped = tokio::io::copy(&mut r.take(plen as u64), &mut tokio::io::sink()).await?;
        if skipped != plen as u64 {
            return Err(FrameError::Closed);
        }
        return Ok(Err(Rejected {
            kind: h[4],
            stream: h[5],
            id,
            len: plen,
            reason,
        }));
    }
    let mut payload = vec![0u8; plen];
    r.read_exact(&mut payload).await?;
    Ok(Ok(Frame {
        kind: kind.expect("checked above"),
        stream: h[5],
        id,
        payload,
    }))
}

/// Writes one frame (not flushed: callers batch and flush).
pub async fn write_frame<W: AsyncWrite + Unpin>(w: &mut W, f: &Frame) -> Result<(), FrameError> {
    if f.payload.len() > MAX_PAYLOAD {
        return Err(FrameError::Protocol("payload too large".into()));
    }
    w.write_all(&f.header()).await?;
    w.write_all(&f.payload).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn round_trip_and_rejects_garbage() {
        let frames = vec![
            Frame::data(7, crate::stream::STDOUT, b"hello".to_vec()),
            Frame::eof(7, 1),
            Frame::credit(9, 0, 4096),
            Frame::control(1, &crate::Message::Shutdown),
        ];
        let mut buf = Vec::new();
        for f in &frames {
            write_frame(&mut buf, f).await.unwrap();
        }
        let mut r = buf.as_slice();
        for f in &frames {
            assert_eq!(&read_frame(&mut r).await.unwrap(), f);
        }
        assert!(matches!(read_frame(&mut r).await, Err(FrameError::Closed)));

        let huge = [0xffu8, 0xff, 0xff, 0xff, 1, 0, 0, 0, 0, 0];
        assert!(matches!(
            read_frame(&mut &huge[..]).await,
            Err(FrameError::Protocol(_))
        ));
        let bad_kind = [0u8, 0, 0, 6, 99, 0, 0, 0, 0, 0];
        assert!(matches!(
            read_frame(&mut &bad_kind[..]).await,
            Err(FrameError::Protocol(_))
        ));
    }

    /// An oversized or unknown frame between two good ones is reported
    /// with its id, and the good frame after it still decodes.
    #[tokio::test]
    async fn rejected_frames_keep_the_stream_in_step() {
        let big = MAX_PAYLOAD + 1;
        let mut buf = Vec::new();
        buf.extend_from_slice(&((big + HEADER_LEN - 4) as u32).to_be_bytes());
        buf.extend_from_slice(&[FrameKind::Control as u8, 0, 0, 0, 0, 42]);
        buf.resize(buf.len() + big, b'x');
        buf.extend_from_slice(&[0u8, 0, 0, 9, 99, 0, 0, 0, 0, 43, 1, 2, 3]);
        let after = Frame::control(44, &crate::Message::Ping);
        write_frame(&mut buf, &after).await.unwrap();
        let mut r = buf.as_slice();
        let rej = read_frame_or_reject(&mut r).await.unwrap().unwrap_err();
        assert_eq!((rej.id, rej.len), (42, big));
        let rej = read_frame_or_reject(&mut r).await.unwrap().unwrap_err();
        assert_eq!((rej.id, rej.kind, rej.len), (43, 99, 3));
        assert_eq!(read_frame_or_reject(&mut r).await.unwrap().unwrap(), after);
        assert!(matches!(
            read_frame_or_reject(&mut r).await,
            Err(FrameError::Closed)
        ));
        // Beyond MAX_SKIP the length is not trusted at all.
        let huge = [0xffu8, 0xff, 0xff, 0xff, 1, 0, 0, 0, 0, 0];
        assert!(matches!(
            read_frame_or_reject(&mut &huge[..]).await,
            Err(FrameError::Protocol(_))
        ));
    }
}
