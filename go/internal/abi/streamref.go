package abi

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

// StreamRef owns a stream handle and adapts it to io.Reader / io.Writer.
type StreamRef struct{ ref *HandleRef }

// NewStreamRef wraps a stream made from the sandbox (or exec) handle
// parent, which stays open while the stream is in use; nil when h is nil
// or 0 (the process has no such stream).
func NewStreamRef(h *uint64, parent *HandleRef) *StreamRef {
	if h == nil || *h == 0 {
		return nil
	}
	return &StreamRef{ref: NewChildRef(*h, parent)}
}

// Close releases the stream handle; nil-safe, and closing twice is fine.
func (s *StreamRef) Close() error {
	if s == nil {
		return nil
	}
	return s.ref.Close("stream.close")
}

// Read reads into buf: at least one byte, or io.EOF at the end.
func (s *StreamRef) Read(ctx context.Context, op string, buf []byte) (int, error) {
	var n int
	err := s.ref.Use(op, func(h uint64) error {
		var err error
		n, err = StreamRead(ctx, op, h, buf)
		return err
	})
	return n, err
}

// Write writes all of p.
func (s *StreamRef) Write(ctx context.Context, op string, p []byte) (int, error) {
	var n int
	err := s.ref.Use(op, func(h uint64) error {
		var err error
		n, err = StreamWrite(ctx, op, h, p)
		return err
	})
	return n, err
}

// CloseWrite half-closes the stream: its reader sees EOF.
func (s *StreamRef) CloseWrite(ctx context.Context, op string) error {
	return s.ref.Use(op, func(h uint64) error { return StreamCloseWrite(ctx, op, h) })
}

// StreamReader is a StreamRef as an io.Reader bound to ctx and op.
type StreamReader struct {
	s   *StreamRef
	ctx context.Context
	op  string
}

// Reader adapts the stream to io.Reader (and io.WriterTo).
func (s *StreamRef) Reader(ctx context.Context, op string) *StreamReader {
	return &StreamReader{s: s, ctx: ctx, op: op}
}

func (r *StreamReader) Read(p []byte) (int, error) { return r.s.Read(r.ctx, r.op, p) }

// WriteTo lets io.Copy read in large chunks straight from the library.
func (r *StreamReader) WriteTo(w io.Writer) (int64, error) {
	if c := asyncStreams(); c != nil {
		return r.writeToAsync(c, w)
	}
	bp := copyBufs.Get().(*[]byte)
	defer copyBufs.Put(bp)
	buf := *bp
	var total int64
	for {
		n, err := r.s.Read(r.ctx, r.op, buf)
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

// StreamWriter is a StreamRef as an io.WriteCloser bound to ctx and op.
type StreamWriter struct {
	s   *StreamRef
	ctx context.Context
	op  string
}

// Writer adapts the stream to io.WriteCloser.
func (s *StreamRef) Writer(ctx context.Context, op string) *StreamWriter {
	return &StreamWriter{s: s, ctx: ctx, op: op}
}

func (w *StreamWriter) Write(p []byte) (int, error) { return w.s.Write(w.ctx, w.op, p) }

// Close half-closes the stream (the reader inside sees EOF).
func (w *StreamWriter) Close() error { return w.s.CloseWrite(w.ctx, w.op) }

// writeToAsync is WriteTo without a Go buffer: each chunk is written from
// library memory, so thousands of pumps on quiet streams cost no memory
// beyond their goroutines.
func (r *StreamReader) writeToAsync(c *completer, w io.Writer) (int64, error) {
	var total int64
	write := func(b []byte) error {
		m, err := w.Write(b)
		total += int64(m)
		return err
	}
	for {
		err := r.s.ref.Use(r.op, func(h uint64) error {
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
