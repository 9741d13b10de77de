// Package abi is the SDK's transport to liblockbox.so: finding and loading
// the library with purego (no cgo), the JSON call path, the completion
// queue that lets waiting calls hold no OS thread, cancel ids tied to
// contexts, byte streams, and handle ownership with finalizers.
//
// It knows nothing of sandboxes or installs. Package lockbox configures it
// once (Configure: the SDK version for messages, where an installed
// library is) and converts its *Error into the public *lockbox.Error at
// the boundary (go/abi_glue.go). Call sequence of one JSON call:
//
//	Call -> lib (load.go) -> completer.call (completion.go, async methods)
//	     or invoke (call.go: blocking slot, arm cancel, lockbox_call, disarm)
//	     -> finish: decode the result or the error JSON into *Error
package abi
