//! The one error type at the C ABI edge: a stable code plus a message,
//! serialized as `{"code": "...", "message": "..."}`. Engine errors become
//! it in one place (the `From` below), keeping their code.
use lockbox_engine::EngineError;
use lockbox_engine::ErrorCode;
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
        #[derive(serde::Serialize)]
        struct Body<'a> {
            code: &'a str,
            message: &'a str,
        }
        let body = Body {
            code: self.code.as_str(),
            message: &self.message,
        };
        // Serializing two strings cannot fail.
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

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        ApiError::new(e.code, e.message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every engine error keeps its code and message at the edge, and the
    /// body is exactly the two documented keys.
    #[test]
    fn engine_errors_keep_their_code() {
        for code in [
            ErrorCode::NotFound,
            ErrorCode::AlreadyExists,
            ErrorCode::Unavailable,
            ErrorCode::ResourceExhausted,
            ErrorCode::PermissionDenied,
        ] {
            let e = ApiError::from(EngineError::new(code, "why"));
            assert_eq!((e.code, e.message.as_str()), (code, "why"));
            let body: serde_json::Value = serde_json::from_slice(&e.to_json()).unwrap();
            assert_eq!(
                body,
                serde_json::json!({"code": code.as_str(), "message": "why"})
            );
        }
    }
}
