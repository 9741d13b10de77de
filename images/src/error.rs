//! Typed errors at the crate edge. `code()` gives the stable ABI code
//! (docs/abi.md) so the engine can pass errors through unchanged.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("image not found: {0}")]
    NotFound(String),
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The image content itself is unacceptable: an unsafe layer entry,
    /// a bad manifest, an unsupported format.
    #[error("invalid image: {0}")]
    InvalidImage(String),
    #[error("digest mismatch for {what}: expected {expected}, got {actual}")]
    DigestMismatch {
        what: String,
        expected: String,
        actual: String,
    },
    #[error("image exceeds its unpack budget: {0}")]
    TooLarge(String),
    #[error("image {0} is in use by a sandbox")]
    InUse(String),
    /// A name the image carries (an OCI ref-name annotation, a RepoTag)
    /// already names another image. Only the caller's own choice of name
    /// may move a name: an image can come from a sandbox's output.
    #[error("image name {0:?} (from the image's own metadata) already names another image; choose the name explicitly to replace it")]
    NameTaken(String),
    #[error("canceled")]
    Canceled,
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl ImageError {
    /// The stable error code from docs/abi.md.
    pub fn code(&self) -> &'static str {
        match self {
            ImageError::NotFound(_) => "not_found",
            ImageError::InvalidArgument(_)
            | ImageError::InvalidImage(_)
            | ImageError::DigestMismatch { .. } => "invalid_argument",
            ImageError::TooLarge(_) => "resource_exhausted",
            ImageError::InUse(_) => "unavailable",
            ImageError::NameTaken(_) => "already_exists",
            ImageError::Canceled => "canceled",
            ImageError::Io { source, .. } => match source.kind() {
                std::io::ErrorKind::PermissionDenied => "permission_denied",
                std::io::ErrorKind::NotFound => "not_found",
                _ => "internal",
            },
        }
    }

    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        ImageError::Io {
            op,
            path: path.into(),
            source,
        }
    }

    pub(crate) fn invalid_image(msg: impl Into<String>) -> Self {
        ImageError::InvalidImage(msg.into())
    }
}

pub type Result<T, E = ImageError> = std::result::Result<T, E>;

/// Attaches an operation and a path to io errors.
pub(crate) trait IoContext<T> {
    fn ctx(self, op: &'static str, path: &std::path::Path) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn ctx(self, op: &'static str, path: &std::path::Path) -> Result<T> {
        self.map_err(|e| ImageError::io(op, path, e))
    }
}
