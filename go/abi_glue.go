package lockbox

// The seam between the public API and internal/abi, the call path into
// liblockbox.so. The other files of this package reach the library only
// through these helpers:
//
//	call(ctx, op, method, params, result) error
//	closeHandle(op, h) error
//	newHandleRef(h), newChildRef(h, parent) *handleRef   // use, close, done
//	newStreamRef(h, parent) *streamRef                   // read, reader, writer, close
//
// and every error that comes up through them leaves as this package's
// *Error (fromABI), so callers match it with errors.As and the sentinels
// whatever layer made it.

import (
	"context"
	"io"

	"lockbox.dev/lockbox/internal/abi"
	"lockbox.dev/lockbox/internal/install"
)

// The layers below learn, once, what they need from this one: the version
// this SDK pins and speaks, the development pin the linker may have set
// (install.go), and where an installed library is found.
func init() {
	install.Configure(install.Host{Version: Version, DevPin: devPin})
	abi.Configure(abi.Host{SDKVersion: Version, Installed: installedLibrary})
}

// fromABI turns the call path's *abi.Error into a *Error with the same
// op, code, message and cause; any other error (io.EOF, a caller's own
// error passed back through handleRef.use) is returned as is.
func fromABI(err error) error {
	if e, ok := err.(*abi.Error); ok {
		return publicError(e)
	}
	return err
}

func publicError(e *abi.Error) *Error {
	return &Error{Op: e.Op, Code: Code(e.Code), Message: e.Message, cause: e.Cause}
}

// call sends {"method": method, "params": params} and decodes the result
// into result (nil: ignored). params: nil, json.RawMessage/[]byte (sent as
// is) or any value json.Marshal accepts.
func call(ctx context.Context, op, method string, params, result any) error {
	return fromABI(abi.Call(ctx, op, method, params, result))
}

// closeHandle releases handle h (any kind). Closing twice is fine.
func closeHandle(op string, h uint64) error { return fromABI(abi.CloseHandle(op, h)) }

// handleRef owns one library handle for a Go object; the finalizer that
// releases a handle dropped without close sits on the abi.HandleRef it
// holds, which nothing else references.
type handleRef struct {
	r *abi.HandleRef
	// done is closed when the handle is closed (by close or the
	// finalizer), so that goroutines serving it can stop waiting.
	done <-chan struct{}
}

func wrapRef(r *abi.HandleRef) *handleRef { return &handleRef{r: r, done: r.Done()} }

func newHandleRef(h uint64) *handleRef { return wrapRef(abi.NewHandleRef(h)) }

// newChildRef is newHandleRef for a handle made from parent's: parent
// stays open at least as long as this handle does.
func newChildRef(h uint64, parent *handleRef) *handleRef {
	return wrapRef(abi.NewChildRef(h, parent.abiRef()))
}

func (r *handleRef) abiRef() *abi.HandleRef {
	if r == nil {
		return nil
	}
	return r.r
}

// close releases the handle once; later calls return nil.
func (r *handleRef) close(op string) error { return fromABI(r.r.Close(op)) }

// use runs fn with the handle, keeping it open until fn returns. After
// close it fails with ErrNotFound (and fs.ErrClosed).
func (r *handleRef) use(op string, fn func(h uint64) error) error {
	return fromABI(r.r.Use(op, fn))
}

// streamRef owns a stream handle (an exec's stdio, a file being read or
// written).
type streamRef struct{ s *abi.StreamRef }

// newStreamRef wraps a stream made from parent's handle, which stays open
// while the stream is in use; nil when h is nil or 0.
func newStreamRef(h *uint64, parent *handleRef) *streamRef {
	s := abi.NewStreamRef(h, parent.abiRef())
	if s == nil {
		return nil
	}
	return &streamRef{s}
}

func (s *streamRef) close() error {
	if s == nil {
		return nil
	}
	return fromABI(s.s.Close())
}

// read reads into buf: at least one byte, or io.EOF at the end.
func (s *streamRef) read(ctx context.Context, op string, buf []byte) (int, error) {
	n, err := s.s.Read(ctx, op, buf)
	return n, fromABI(err)
}

func (s *streamRef) reader(ctx context.Context, op string) *streamReader {
	return &streamReader{s.s.Reader(ctx, op)}
}

func (s *streamRef) writer(ctx context.Context, op string) *streamWriter {
	return &streamWriter{s.s.Writer(ctx, op)}
}

// streamReader is a stream as an io.Reader; WriteTo lets io.Copy take
// large chunks straight from library memory.
type streamReader struct{ r *abi.StreamReader }

func (r *streamReader) Read(p []byte) (int, error) {
	n, err := r.r.Read(p)
	return n, fromABI(err)
}

func (r *streamReader) WriteTo(w io.Writer) (int64, error) {
	n, err := r.r.WriteTo(w)
	return n, fromABI(err)
}

// streamWriter is a stream as an io.WriteCloser; Close half-closes it
// (the reader inside sees EOF). The zero value has s == nil: not started.
type streamWriter struct{ s *abi.StreamWriter }

func (w *streamWriter) Write(p []byte) (int, error) {
	n, err := w.s.Write(p)
	return n, fromABI(err)
}

func (w *streamWriter) Close() error { return fromABI(w.s.Close()) }
