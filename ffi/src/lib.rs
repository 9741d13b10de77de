//! liblockbox: the C ABI over the Lockbox engine (see docs/abi.md).
//!
//! Layout: [`abi`] holds the exports; [`methods`] the method table (one
//! enum, one dispatch) and its handlers; [`wire`] every method's params
//! and result types; [`registry`] the handle registry; [`stream`] the
//! byte-stream trait behind stream handles; [`cancel`] cancel ids;
//! [`completion`] the queue behind submitted calls; [`runtime`] the one
//! tokio runtime; [`panic`] keeps panics from crossing the boundary;
//! [`log`] the library log.
//!
//! Nothing is public but the `extern "C"` exports: the modules are private
//! so the compiler reports what no export reaches.
mod abi;
mod cancel;
mod completion;
mod error;
mod log;
mod methods;
mod panic;
mod registry;
mod runtime;
mod stream;
mod wire;
