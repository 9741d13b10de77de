//! The one error type at the C ABI edge: a stable code plus a message,
//! serialized as `{"code": "...", "message": "..."}`.
use lockbox_protocol::{ErrorCode, WireError};
use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError {
            code,
            message: message.into(),
        }
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::NotFound, message)
    }
    pub fn invalid_argument(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidArgument, message)
    }
    pub fn unsupported(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Unsupported, message)
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Internal, message)
    }
    pub fn canceled() -> Self {
        Self::new(ErrorCode::Canceled, "the call was canceled")
    }

    /// The JSON body returned through the ABI.
    pub fn to_json(&self) -> Vec<u8> {
        let body = serde_json::json!({
            "code": self.code.as_str(),
            "message": self.message,
        });
        // Serializing a map of two strings cannot fail.
        serde_json::to_vec(&body).unwrap_or_else(|_| {
            br#"{"code":"internal","message":"error serialization failed"}"#.to_vec()
        })
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for ApiError {}

impl From<WireError> for ApiError {
    fn from(e: WireError) -> Self {
        ApiError::new(e.code, e.message)
    }
}

/// Errors from inside the engine that carry no code of their own become
/// `internal`, with the full context chain in the message.
impl From<anyhow::Error> for ApiError {
    fn from(e: anyhow::Error) -> Self {
        if let Some(api) = e.downcast_ref::<ApiError>() {
            return api.clone();
        }
        if let Some(w) = e.downcast_ref::<WireError>() {
            return ApiError::from(w.clone());
        }
        ApiError::internal(format!("{e:#}"))
    }
}

/// Parameter decoding failures are the caller's fault.
impl From<serde_json::Error> for ApiError {
    fn from(e: serde_json::Error) -> Self {
        ApiError::invalid_argument(format!("bad params: {e}"))
    }
}
