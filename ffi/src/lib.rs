//! liblockbox: the C ABI over the Lockbox engine (see docs/abi.md).
//!
//! Layout: [`abi`] holds the exports; [`methods`] the JSON method table;
//! [`registry`] the handle registry; [`stream`] the byte-stream trait behind
//! stream handles; [`cancel`] cancel ids; [`completion`] the queue behind submitted calls; [`runtime`] the one tokio runtime;
//! [`panic`] keeps panics from crossing the boundary; [`log`] the library log.
pub mod abi;
pub mod cancel;
pub mod completion;
pub mod error;
pub mod log;
pub mod methods;
pub mod panic;
pub mod registry;
pub mod runtime;
pub mod stream;

pub use error::ApiError;
pub use methods::{CallCtx, Table};
