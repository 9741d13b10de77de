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
}

func newHandleRef(h uint64) *handleRef {
	r := &handleRef{h: h}
	runtime.SetFinalizer(r, func(r *handleRef) {
		if r.closed.CompareAndSwap(false, true) {
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
	return closeHandle(op, r.h)
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
