package lockbox

import (
	"errors"

	"lockbox.dev/lockbox/internal/abi"
)

// Code is a stable error code. The library (C ABI) returns the first ten;
// the last two come from the Go side (finding and loading the library).
type Code string

// Error codes. They are stable: match on them, or better, use errors.Is
// with the sentinels below.
const (
	CodeNotFound          Code = "not_found"
	CodeAlreadyExists     Code = "already_exists"
	CodeInvalidArgument   Code = "invalid_argument"
	CodeTimeout           Code = "timeout"
	CodeCanceled          Code = "canceled"
	CodeUnsupported       Code = "unsupported"
	CodePermissionDenied  Code = "permission_denied"
	CodeUnavailable       Code = "unavailable"
	CodeResourceExhausted Code = "resource_exhausted"
	CodeInternal          Code = "internal"

	// CodeNotInstalled: no library was found (no option, no LOCKBOX_LIB,
	// nothing installed by EnsureInstalled).
	CodeNotInstalled Code = "not_installed"
	// CodeLibraryNotLoaded: a library was found but could not be loaded
	// (missing file, wrong architecture, missing symbol, ABI mismatch, ...).
	CodeLibraryNotLoaded Code = "library_not_loaded"
)

// Sentinel errors for errors.Is. Errors from the engine and the loader are
// an *Error whose Code selects one of these; EnsureInstalled's errors wrap
// ErrVerification, ErrReleaseNotFound, ErrDownload, ErrNoReleaseURL or
// ErrNotInstalled (and the context's error when it ended the install).
//
// The code sentinels are the call path's own (internal/abi), so an error
// matches them whichever layer made it.
var (
	ErrNotFound          = abi.ErrNotFound          // "lockbox: not found"
	ErrAlreadyExists     = abi.ErrAlreadyExists     // "lockbox: already exists"
	ErrInvalidArgument   = abi.ErrInvalidArgument   // "lockbox: invalid argument"
	ErrTimeout           = abi.ErrTimeout           // "lockbox: timeout"
	ErrCanceled          = abi.ErrCanceled          // "lockbox: canceled"
	ErrUnsupported       = abi.ErrUnsupported       // "lockbox: unsupported"
	ErrPermission        = abi.ErrPermission        // "lockbox: permission denied"
	ErrUnavailable       = abi.ErrUnavailable       // "lockbox: unavailable"
	ErrResourceExhausted = abi.ErrResourceExhausted // "lockbox: resource exhausted"
	ErrInternal          = abi.ErrInternal          // "lockbox: internal error"
	// ErrNotInstalled also matches ErrLibraryNotLoaded.
	ErrNotInstalled     = abi.ErrNotInstalled     // "lockbox: engine not installed"
	ErrLibraryNotLoaded = abi.ErrLibraryNotLoaded // "lockbox: library not loaded"

	// ErrOutputLimit: a process wrote more than the output limit to a
	// stream that Exec, Shell, Output or CombinedOutput collects (see
	// WithOutputLimit). The error also matches ErrResourceExhausted.
	ErrOutputLimit = errors.New("lockbox: output limit exceeded")
	// ErrSizeLimit: ReadFile or CopyToHost would pass its byte cap (see
	// WithMaxBytes). The error also matches ErrResourceExhausted.
	ErrSizeLimit = errors.New("lockbox: size limit exceeded")

	// ErrAlreadyStarted: Start (or Run, Output, CombinedOutput) was called
	// on a Cmd that was already started. The error is an *Error that also
	// matches ErrInvalidArgument.
	ErrAlreadyStarted = errors.New("lockbox: already started")
	// ErrStdin: reading the caller's stdin reader (WithStdin, Cmd.Stdin)
	// failed. As with os/exec, the process got EOF at that point, and the
	// error is returned when the process otherwise succeeded (exit 0); it
	// also matches the reader's own error.
	ErrStdin = errors.New("lockbox: reading stdin failed")
)

// usageError is an invalid_argument *Error for an API misuse; cause, when
// not nil, is a sentinel it also matches.
func usageError(op, msg string, cause error) *Error {
	return &Error{Op: op, Code: CodeInvalidArgument, Message: msg, cause: cause}
}

// limitError is a resource_exhausted *Error that also matches sentinel.
func limitError(op, msg string, sentinel error) *Error {
	return &Error{Op: op, Code: CodeResourceExhausted, Message: msg, cause: sentinel}
}

// NoLimit, given to WithOutputLimit or WithMaxBytes, removes the cap.
const NoLimit int64 = -1

// Error is the error type of this package.
//
// A call canceled through its context has Code canceled (or timeout when
// the deadline passed) and also matches context.Canceled (or
// context.DeadlineExceeded) with errors.Is.
type Error struct {
	Op      string // what was being done, e.g. "load", "sandbox.create"
	Code    Code
	Message string
	cause   error // a context error or an OS error behind this one
}

// Error and Is are the call path's own (internal/abi): one rendering and
// one code-to-sentinel table for both layers.
func (e *Error) core() abi.Error {
	return abi.Error{Op: e.Op, Code: abi.Code(e.Code), Message: e.Message}
}

func (e *Error) Error() string {
	c := e.core()
	return c.Error()
}

// Is matches the sentinel for the error's code; not_installed also
// matches ErrLibraryNotLoaded.
func (e *Error) Is(target error) bool {
	c := e.core()
	return c.Is(target)
}

// Unwrap returns the cause: a context error for canceled calls, an OS
// error for load failures, else nil.
func (e *Error) Unwrap() error { return e.cause }

// ctxError is the error of a call whose context ended.
func ctxError(op string, err error) *Error { return publicError(abi.CtxError(op, err)) }
