package abi

import (
	"context"
	"errors"
)

// Code is a stable error code: the library's (the first ten) and the
// loader's (not_installed, library_not_loaded). Package lockbox shows the
// same strings as its public Code constants.
type Code string

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
	CodeNotInstalled      Code = "not_installed"
	CodeLibraryNotLoaded  Code = "library_not_loaded"
)

// The sentinels errors.Is matches for each code. They live here, below
// both the loader and the installer (which wraps ErrNotInstalled), and
// package lockbox re-exports these very values, so a sentinel is the same
// whichever layer made the error.
var (
	ErrNotFound          = errors.New("lockbox: not found")
	ErrAlreadyExists     = errors.New("lockbox: already exists")
	ErrInvalidArgument   = errors.New("lockbox: invalid argument")
	ErrTimeout           = errors.New("lockbox: timeout")
	ErrCanceled          = errors.New("lockbox: canceled")
	ErrUnsupported       = errors.New("lockbox: unsupported")
	ErrPermission        = errors.New("lockbox: permission denied")
	ErrUnavailable       = errors.New("lockbox: unavailable")
	ErrResourceExhausted = errors.New("lockbox: resource exhausted")
	ErrInternal          = errors.New("lockbox: internal error")
	ErrNotInstalled      = errors.New("lockbox: engine not installed")
	ErrLibraryNotLoaded  = errors.New("lockbox: library not loaded")
)

// Sentinels maps every code to its sentinel.
var Sentinels = map[Code]error{
	CodeNotFound:          ErrNotFound,
	CodeAlreadyExists:     ErrAlreadyExists,
	CodeInvalidArgument:   ErrInvalidArgument,
	CodeTimeout:           ErrTimeout,
	CodeCanceled:          ErrCanceled,
	CodeUnsupported:       ErrUnsupported,
	CodePermissionDenied:  ErrPermission,
	CodeUnavailable:       ErrUnavailable,
	CodeResourceExhausted: ErrResourceExhausted,
	CodeInternal:          ErrInternal,
	CodeNotInstalled:      ErrNotInstalled,
	CodeLibraryNotLoaded:  ErrLibraryNotLoaded,
}

// Error is what every call, stream and load failure of this package
// returns. Package lockbox turns it into its public *Error at its
// boundary; it matches the same sentinels, so a path that forgot the
// conversion still answers errors.Is correctly.
type Error struct {
	Op      string
	Code    Code
	Message string
	Cause   error // a context error or an OS error behind this one
}

func (e *Error) Error() string {
	s := "lockbox: "
	if e.Op != "" {
		s += e.Op + ": "
	}
	return s + e.Message + " (" + string(e.Code) + ")"
}

// Is matches the sentinel for the error's code; not_installed also
// matches ErrLibraryNotLoaded.
func (e *Error) Is(target error) bool {
	if s, ok := Sentinels[e.Code]; ok && s == target {
		return true
	}
	return e.Code == CodeNotInstalled && target == ErrLibraryNotLoaded
}

func (e *Error) Unwrap() error { return e.Cause }

// CtxError is the error of a call whose context ended: timeout for a
// passed deadline, canceled otherwise, wrapping the context's error.
func CtxError(op string, err error) *Error {
	code := CodeCanceled
	if errors.Is(err, context.DeadlineExceeded) {
		code = CodeTimeout
	}
	return &Error{Op: op, Code: code, Message: err.Error(), Cause: err}
}

// withOp names the operation on a load error.
func withOp(err error, op string) error {
	if e, ok := err.(*Error); ok && e.Op == "load" && op != "" {
		cp := *e
		cp.Op = op + ": load"
		return &cp
	}
	return err
}
