//! The typed error of the installer library and its mapping to CLI exit codes.

use std::io;
use std::path::Path;

/// Exit codes of `lockbox-installer` (documented in installer/README.md).
pub mod exit {
    pub const OK: i32 = 0;
    pub const OTHER: i32 = 1;
    pub const USAGE: i32 = 2;
    pub const VERIFICATION: i32 = 3;
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Content did not match what was signed or pinned: fail closed.
    #[error("verification failed: {0}")]
    Verification(String),
    /// A file of the release directory could be changed by another user
    /// or is not a regular file: its content proves nothing.
    #[error("unsafe release file: {0}")]
    Unsafe(String),
    /// Bad arguments or missing configuration.
    #[error("{0}")]
    Usage(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
}

impl Error {
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Verification(_) | Error::Unsafe(_) => exit::VERIFICATION,
            Error::Usage(_) => exit::USAGE,
            Error::Io { .. } => exit::OTHER,
        }
    }

    pub fn io(context: impl Into<String>, source: io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    pub fn io_at(what: &str, path: &Path, source: io::Error) -> Self {
        Error::io(format!("{what} {}", path.display()), source)
    }
}

pub type Result<T> = std::result::Result<T, Error>;
