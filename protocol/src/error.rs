use serde::{Deserialize, Serialize};

/// The stable set of error codes shared by the agent, the engine, the C ABI
/// and the Go SDK (which maps each to a sentinel error). Adding a code is a
/// compatible change; renaming one is not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    NotFound,
    AlreadyExists,
    InvalidArgument,
    Timeout,
    Canceled,
    Unsupported,
    PermissionDenied,
    /// The sandbox (or its agent) is gone or not running.
    Unavailable,
    /// A limit (memory, pids, disk budget) was reached.
    ResourceExhausted,
    Internal,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::NotFound => "not_found",
            ErrorCode::AlreadyExists => "already_exists",
            ErrorCode::InvalidArgument => "invalid_argument",
            ErrorCode::Timeout => "timeout",
            ErrorCode::Canceled => "canceled",
            ErrorCode::Unsupported => "unsupported",
            ErrorCode::PermissionDenied => "permission_denied",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::ResourceExhausted => "resource_exhausted",
            ErrorCode::Internal => "internal",
        }
    }

    /// Maps an errno from a file or process operation to a code.
    pub fn from_errno(errno: i32) -> ErrorCode {
        match errno {
            libc_errno::ENOENT | libc_errno::ENOTDIR => ErrorCode::NotFound,
            libc_errno::EEXIST | libc_errno::ENOTEMPTY => ErrorCode::AlreadyExists,
            libc_errno::EACCES | libc_errno::EPERM | libc_errno::EROFS => {
                ErrorCode::PermissionDenied
            }
            // E2BIG: argv/env over the kernel's limits; ENAMETOOLONG: a path
            // or name component too long; ENXIO: a FIFO or device that
            // cannot be opened the way asked. All are the caller's input.
            libc_errno::EINVAL
            | libc_errno::EISDIR
            | libc_errno::ELOOP
            | libc_errno::EXDEV
            | libc_errno::E2BIG
            | libc_errno::ENAMETOOLONG
            | libc_errno::ENXIO => ErrorCode::InvalidArgument,
            libc_errno::ENOSPC | libc_errno::EDQUOT | libc_errno::ENOMEM | libc_errno::EAGAIN => {
                ErrorCode::ResourceExhausted
            }
            _ => ErrorCode::Internal,
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Linux errno values used above; spelled out so this crate needs no libc.
mod libc_errno {
    pub const EPERM: i32 = 1;
    pub const ENOENT: i32 = 2;
    pub const ENXIO: i32 = 6;
    pub const E2BIG: i32 = 7;
    pub const EAGAIN: i32 = 11;
    pub const ENOMEM: i32 = 12;
    pub const EACCES: i32 = 13;
    pub const EEXIST: i32 = 17;
    pub const EXDEV: i32 = 18;
    pub const ENOTDIR: i32 = 20;
    pub const EISDIR: i32 = 21;
    pub const EINVAL: i32 = 22;
    pub const ENOSPC: i32 = 28;
    pub const EROFS: i32 = 30;
    pub const ENOTEMPTY: i32 = 39;
    pub const ENAMETOOLONG: i32 = 36;
    pub const ELOOP: i32 = 40;
    pub const EDQUOT: i32 = 122;
}

/// An error as it travels in a reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{code}: {message}")]
pub struct WireError {
    pub code: ErrorCode,
    pub message: String,
}

impl WireError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        WireError {
            code,
            message: message.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caller_input_errnos_are_invalid_argument() {
        for e in [7, 36, 6, 22, 40] {
            assert_eq!(ErrorCode::from_errno(e), ErrorCode::InvalidArgument, "{e}");
        }
        assert_eq!(ErrorCode::from_errno(13), ErrorCode::PermissionDenied);
        assert_eq!(ErrorCode::from_errno(5), ErrorCode::Internal);
    }
}
