package abi

import (
	"context"
	"io"
	"runtime"
	"unsafe"

	"github.com/ebitengine/purego"
)

// StreamRead reads into buf from stream handle h: at least one byte, or
// io.EOF at the end of the stream.
func StreamRead(ctx context.Context, op string, h uint64, buf []byte) (int, error) {
	if len(buf) > 0 {
		if c := asyncStreams(); c != nil {
			var n int
			err := c.read(ctx, op, h, len(buf), func(b []byte) { n = copy(buf, b) })
			if err == nil && n == 0 {
				return 0, io.EOF
			}
			return n, err
		}
	}
	n, err := streamIO(ctx, op, h, buf, func(l *library) uintptr { return l.fnStreamRead })
	if err == nil && n == 0 && len(buf) > 0 {
		return 0, io.EOF
	}
	return n, err
}

// StreamWrite writes all of p to stream handle h.
func StreamWrite(ctx context.Context, op string, h uint64, p []byte) (int, error) {
	if len(p) > 0 {
		if c := asyncStreams(); c != nil {
			if err := c.write(ctx, op, h, p); err != nil {
				return 0, err
			}
			return len(p), nil
		}
	}
	return streamIO(ctx, op, h, p, func(l *library) uintptr { return l.fnStreamWrite })
}

// streamReadTo reads up to capacity bytes from stream h through the
// completion queue c and hands them to use, straight from library memory:
// a pump waiting on a quiet stream holds no buffer of its own. io.EOF at
// the end of the stream.
func streamReadTo(ctx context.Context, c *completer, op string, h uint64, capacity int, use func([]byte) error) error {
	var uerr error
	got := false
	err := c.read(ctx, op, h, capacity, func(b []byte) {
		got = len(b) > 0
		if got {
			uerr = use(b)
		}
	})
	if err != nil {
		return err
	}
	if !got {
		return io.EOF
	}
	return uerr
}

// asyncStreams is the completion queue if the library has one.
func asyncStreams() *completer {
	l, err := lib()
	if err != nil {
		return nil
	}
	return completions(l)
}

// streamIO makes one lockbox_stream_read or lockbox_stream_write call: both
// take (handle, buf, len, cancel id, *n, *err, *err_len).
func streamIO(ctx context.Context, op string, h uint64, p []byte, fn func(*library) uintptr) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	l, err := lib()
	if err != nil {
		return 0, withOp(err, op)
	}
	if err := ctx.Err(); err != nil {
		return 0, CtxError(op, err)
	}
	o := outPool.Get().(*outParams)
	defer outPool.Put(o)
	c := l.arm(ctx)
	st, _, _ := purego.SyscallN(fn(l), uintptr(h),
		uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)), uintptr(c.id()),
		uintptr(unsafe.Pointer(&o.n)), uintptr(unsafe.Pointer(&o.ptr)), uintptr(unsafe.Pointer(&o.len)))
	runtime.KeepAlive(p)
	l.disarm(c)
	if int32(st) != statusOK {
		return 0, l.errorFrom(ctx, op, o, st)
	}
	n := int(o.n)
	o.n = 0
	return n, nil
}

// StreamCloseWrite half-closes stream handle h: its reader sees EOF.
func StreamCloseWrite(ctx context.Context, op string, h uint64) error {
	l, err := lib()
	if err != nil {
		return withOp(err, op)
	}
	if err := ctx.Err(); err != nil {
		return CtxError(op, err)
	}
	o := outPool.Get().(*outParams)
	defer outPool.Put(o)
	c := l.arm(ctx)
	st, _, _ := purego.SyscallN(l.fnStreamCloseWrite, uintptr(h), uintptr(c.id()),
		uintptr(unsafe.Pointer(&o.ptr)), uintptr(unsafe.Pointer(&o.len)))
	l.disarm(c)
	if int32(st) != statusOK {
		return l.errorFrom(ctx, op, o, st)
	}
	return nil
}

// CloseHandle releases handle h (any kind). Closing twice is fine.
func CloseHandle(op string, h uint64) error {
	l, err := lib()
	if err != nil {
		return withOp(err, op)
	}
	o := outPool.Get().(*outParams)
	defer outPool.Put(o)
	o.args[0], o.args[1], o.args[2] = uintptr(h), uintptr(unsafe.Pointer(&o.ptr)), uintptr(unsafe.Pointer(&o.len))
	st, _, _ := purego.SyscallN(l.fnClose, o.args[:3]...)
	runtime.KeepAlive(o)
	if int32(st) != statusOK {
		return l.errorFrom(context.Background(), op, o, st)
	}
	return nil
}
