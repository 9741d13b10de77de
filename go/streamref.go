package lockbox

import (
	"context"
	"io"
	"sync"
)

// copyBufs are the buffers WriteTo reads into: one library call moves up
// to one agent data chunk (256 KiB), and execs should not allocate two of
// them each.
var copyBufs = sync.Pool{New: func() any { b := make([]byte, copyBufSize); return &b }}

const copyBufSize = 256 << 10

// streamRef owns a stream handle and adapts it to io.Reader / io.Writer.
type streamRef struct{ ref *handleRef }

// newStreamRef wraps a stream made from the sandbox (or exec) handle
// parent, which stays open while the stream is in use.
func newStreamRef(h *uint64, parent *handleRef) *streamRef {
	if h == nil || *h == 0 {
		return nil
	}
	return &streamRef{ref: newChildRef(*h, parent)}
}

func (s *streamRef) close() error {
	if s == nil {
		return nil
	}
	return s.ref.close("stream.close")
}

func (s *streamRef) read(ctx context.Context, op string, buf []byte) (int, error) {
	var n int
	err := s.ref.use(op, func(h uint64) error {
		var err error
		n, err = streamRead(ctx, op, h, buf)
		return err
	})
	return n, err
}

func (s *streamRef) write(ctx context.Context, op string, p []byte) (int, error) {
	var n int
	err := s.ref.use(op, func(h uint64) error {
		var err error
		n, err = streamWrite(ctx, op, h, p)
		return err
	})
	return n, err
}

func (s *streamRef) closeWrite(ctx context.Context, op string) error {
	return s.ref.use(op, func(h uint64) error { return streamCloseWrite(ctx, op, h) })
}

type streamReader struct {
	s   *streamRef
	ctx context.Context
	op  string
}

func (s *streamRef) reader(ctx context.Context, op string) *streamReader {
	return &streamReader{s: s, ctx: ctx, op: op}
}

func (r *streamReader) Read(p []byte) (int, error) { return r.s.read(r.ctx, r.op, p) }

// WriteTo lets io.Copy read in large chunks straight from the library.
func (r *streamReader) WriteTo(w io.Writer) (int64, error) {
	if c := asyncStreams(); c != nil {
		return r.writeToAsync(c, w)
	}
	bp := copyBufs.Get().(*[]byte)
	defer copyBufs.Put(bp)
	buf := *bp
	var total int64
	for {
		n, err := r.s.read(r.ctx, r.op, buf)
		if n > 0 {
			m, werr := w.Write(buf[:n])
			total += int64(m)
			if werr != nil {
				return total, werr
			}
		}
		if err == io.EOF {
			return total, nil
		}
		if err != nil {
			return total, err
		}
	}
}

type streamWriter struct {
	s   *streamRef
	ctx context.Context
	op  string
}

func (s *streamRef) writer(ctx context.Context, op string) *streamWriter {
	return &streamWriter{s: s, ctx: ctx, op: op}
}

func (w *streamWriter) Write(p []byte) (int, error) { return w.s.write(w.ctx, w.op, p) }

// Close half-closes the stream (the reader inside sees EOF).
func (w *streamWriter) Close() error { return w.s.closeWrite(w.ctx, w.op) }

// writeToAsync is WriteTo without a Go buffer: each chunk is written from
// library memory, so thousands of pumps on quiet streams cost no memory
// beyond their goroutines.
func (r *streamReader) writeToAsync(c *completer, w io.Writer) (int64, error) {
	var total int64
	write := func(b []byte) error {
		m, err := w.Write(b)
		total += int64(m)
		return err
	}
	for {
		err := r.s.ref.use(r.op, func(h uint64) error {
			return streamReadTo(r.ctx, c, r.op, h, copyBufSize, write)
		})
		if err == io.EOF {
			return total, nil
		}
		if err != nil {
			return total, err
		}
	}
}
