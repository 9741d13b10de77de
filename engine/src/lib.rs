//! The Lockbox engine.
