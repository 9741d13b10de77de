//! C ABI (see docs/abi.md).
