package lockbox

import (
	"io/fs"
	"runtime"
	"sync/atomic"
)

// handleRef owns one library handle for a Go object (Sandbox, Exec, a
// stream reader, ...). Embed a *handleRef, not a handleRef: the finalizer
// sits on the handleRef, so it runs once the owning object (the only holder
// of the pointer) is unreachable, and releases a handle dropped without
// Close.
//
//	type Sandbox struct{ ref *handleRef; ... }
//	sb := &Sandbox{ref: newHandleRef(h)}
//	func (s *Sandbox) Close() error { return s.ref.close("sandbox.close") }
//	err := s.ref.use("sandbox.exec", func(h uint64) error { return call(ctx, ...) })
type handleRef struct {
	h      uint64
	closed atomic.Bool
	// parent is the handle this one was made from (an exec's or a
	// stream's sandbox). Nothing reads it: it is there so that the
	// parent's finalizer cannot close a sandbox (stopping and removing
	// it, when not detached) while an exec or stream from it is still in
	// use by someone who dropped the *Sandbox. Cleared on close.
	parent *handleRef
	// done is closed when the handle is closed (by Close or the
	// finalizer), so that goroutines serving it can stop waiting.
	done chan struct{}
}

func newHandleRef(h uint64) *handleRef { return newChildRef(h, nil) }

// newChildRef is newHandleRef for a handle made from parent's: parent
// stays open at least as long as this handle does.
func newChildRef(h uint64, parent *handleRef) *handleRef {
	r := &handleRef{h: h, parent: parent, done: make(chan struct{})}
	runtime.SetFinalizer(r, func(r *handleRef) {
		if r.closed.CompareAndSwap(false, true) {
			close(r.done)
			// Off the finalizer goroutine: releasing an engine object may
			// take a while (a sandbox tearing down), and one slow release
			// must not hold up every other finalizer in the program.
			go func(h uint64) { _ = closeHandle("finalize", h) }(r.h)
		}
	})
	return r
}

// close releases the handle once; later calls (from any goroutine) return
// nil.
func (r *handleRef) close(op string) error {
	if !r.closed.CompareAndSwap(false, true) {
		return nil
	}
	runtime.SetFinalizer(r, nil)
	close(r.done)
	err := closeHandle(op, r.h)
	// Only now: until the handle is released, its parent must stay.
	r.parent = nil
	return err
}

// use runs fn with the handle, keeping the owner alive (no finalizer can
// close it) until fn returns. After close it fails with ErrNotFound (and
// fs.ErrClosed).
func (r *handleRef) use(op string, fn func(h uint64) error) error {
	if r.closed.Load() {
		return &Error{Op: op, Code: CodeNotFound, Message: "already closed", cause: fs.ErrClosed}
	}
	err := fn(r.h)
	runtime.KeepAlive(r)
	return err
}

// id is the raw handle (for messages and tests).
func (r *handleRef) id() uint64 { return r.h }
