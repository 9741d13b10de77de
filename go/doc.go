// Package lockbox runs untrusted code in sandboxes from Go.
//
// The engine is a Rust shared library (liblockbox.so) that this package
// downloads, verifies and loads at run time without cgo. Call
// EnsureInstalled first, then CreateSandbox.
package lockbox
