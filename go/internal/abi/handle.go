package abi

import (
	"io/fs"
	"runtime"
	"sync/atomic"
)

// HandleRef owns one library handle for a Go object (Sandbox, Exec, a
// stream reader, ...). Hold a *HandleRef, not a HandleRef: the finalizer
// sits on the HandleRef, so it runs once the owning object (the only holder
// of the pointer) is unreachable, and releases a handle dropped without
// Close.
//
//	type Sandbox struct{ ref *HandleRef; ... }
//	sb := &Sandbox{ref: NewHandleRef(h)}
//	func (s *Sandbox) Close() error { return s.ref.Close("sandbox.close") }
//	err := s.ref.Use("sandbox.exec", func(h uint64) error { return Call(ctx, ...) })
type HandleRef struct {
	h      uint64
	closed atomic.Bool
	// parent is the handle this one was made from (an exec's or a
	// stream's sandbox). Nothing reads it: it is there so that the
	// parent's finalizer cannot close a sandbox (stopping and removing
	// it, when not detached) while an exec or stream from it is still in
	// use by someone who dropped the *Sandbox. Cleared on close.
	parent *HandleRef
	// done is closed when the handle is closed (by Close or the
	// finalizer), so that goroutines serving it can stop waiting.
	done chan struct{}
}

// NewHandleRef takes ownership of handle h.
func NewHandleRef(h uint64) *HandleRef { return NewChildRef(h, nil) }

// NewChildRef is NewHandleRef for a handle made from parent's: parent
// stays open at least as long as this handle does.
func NewChildRef(h uint64, parent *HandleRef) *HandleRef {
	r := &HandleRef{h: h, parent: parent, done: make(chan struct{})}
	runtime.SetFinalizer(r, func(r *HandleRef) {
		if r.closed.CompareAndSwap(false, true) {
			close(r.done)
			// Off the finalizer goroutine: releasing an engine object may
			// take a while (a sandbox tearing down), and one slow release
			// must not hold up every other finalizer in the program.
			go func(h uint64) { _ = CloseHandle("finalize", h) }(r.h)
		}
	})
	return r
}

// Close releases the handle once; later calls (from any goroutine) return
// nil.
func (r *HandleRef) Close(op string) error {
	if !r.closed.CompareAndSwap(false, true) {
		return nil
	}
	runtime.SetFinalizer(r, nil)
	close(r.done)
	err := CloseHandle(op, r.h)
	// Only now: until the handle is released, its parent must stay.
	r.parent = nil
	return err
}

// Use runs fn with the handle, keeping the owner alive (no finalizer can
// close it) until fn returns. After close it fails with ErrNotFound (and
// fs.ErrClosed).
func (r *HandleRef) Use(op string, fn func(h uint64) error) error {
	if r.closed.Load() {
		return &Error{Op: op, Code: CodeNotFound, Message: "already closed", Cause: fs.ErrClosed}
	}
	err := fn(r.h)
	runtime.KeepAlive(r)
	return err
}

// ID is the raw handle (for messages and tests).
func (r *HandleRef) ID() uint64 { return r.h }

// Done is closed when the handle is closed (by Close or the finalizer).
func (r *HandleRef) Done() <-chan struct{} { return r.done }
