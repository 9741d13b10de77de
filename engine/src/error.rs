//! The engine's typed error: every failure carries one of the stable
//! `ErrorCode`s so the C ABI and the Go SDK can map it without parsing text.

use lockbox_protocol::{ErrorCode, FrameError, WireError};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct EngineError {
    pub code: ErrorCode,
    pub message: String,
}

pub type Result<T> = std::result::Result<T, EngineError>;

impl EngineError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        EngineError {
            code,
            message: message.into(),
        }
    }

    pub fn not_found(m: impl Into<String>) -> Self {
        Self::new(ErrorCode::NotFound, m)
    }
    pub fn already_exists(m: impl Into<String>) -> Self {
        Self::new(ErrorCode::AlreadyExists, m)
    }
    pub fn invalid(m: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidArgument, m)
    }
    pub fn unavailable(m: impl Into<String>) -> Self {
        Self::new(ErrorCode::Unavailable, m)
    }
    pub fn internal(m: impl Into<String>) -> Self {
        Self::new(ErrorCode::Internal, m)
    }
    pub fn unsupported(m: impl Into<String>) -> Self {
        Self::new(ErrorCode::Unsupported, m)
    }

    /// An I/O error with what we were doing, mapped to a code by errno.
    pub fn io(context: impl std::fmt::Display, e: std::io::Error) -> Self {
        let code = e
            .raw_os_error()
            .map(ErrorCode::from_errno)
            .unwrap_or(match e.kind() {
                std::io::ErrorKind::NotFound => ErrorCode::NotFound,
                std::io::ErrorKind::PermissionDenied => ErrorCode::PermissionDenied,
                std::io::ErrorKind::AlreadyExists => ErrorCode::AlreadyExists,
                std::io::ErrorKind::TimedOut => ErrorCode::Timeout,
                _ => ErrorCode::Internal,
            });
        Self::new(code, format!("{context}: {e}"))
    }

    /// Prefixes the message with context, keeping the code.
    pub fn context(mut self, c: impl std::fmt::Display) -> Self {
        self.message = format!("{c}: {}", self.message);
        self
    }
}

impl From<WireError> for EngineError {
    fn from(e: WireError) -> Self {
        EngineError::new(e.code, e.message)
    }
}

impl From<FrameError> for EngineError {
    fn from(e: FrameError) -> Self {
        match e {
            FrameError::Closed => {
                EngineError::unavailable("the sandbox agent closed the connection")
            }
            FrameError::Io(e) => EngineError::unavailable(format!("sandbox agent connection: {e}")),
            FrameError::Protocol(m) => {
                EngineError::internal(format!("agent protocol violation: {m}"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_errors_map_by_errno() {
        let e = EngineError::io("open x", std::io::Error::from_raw_os_error(2));
        assert_eq!(e.code, ErrorCode::NotFound);
        assert!(e.message.starts_with("open x: "));
        let e = EngineError::io("w", std::io::Error::from_raw_os_error(30));
        assert_eq!(e.code, ErrorCode::PermissionDenied);
    }
}
