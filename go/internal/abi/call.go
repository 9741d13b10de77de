package abi

// The call path into liblockbox.so. Other files of this package use these
// helpers; they load the library on first use, honour ctx (cancel ids, see
// cancel.go) and return *Error values whose Op is the op argument:
//
//	Call(ctx, op, method, params, result) error
//	    JSON call; through the completion queue when the library has an
//	    async form of the method (completion.go). params: nil, json.RawMessage/[]byte (sent as is) or any
//	    value json.Marshal accepts. result: nil (ignored) or a pointer to
//	    json.Unmarshal into.
//	CallRaw(ctx, op, req []byte) ([]byte, error)
//	    A whole request as bytes; returns the result JSON (copied).
//	StreamRead(ctx, op, h, buf) (int, error)    // io.EOF at end of stream
//	StreamWrite(ctx, op, h, p) (int, error)     // writes all of p
//	StreamCloseWrite(ctx, op, h) error          // half-close
//	CloseHandle(op, h) error                    // closing twice is fine
//	NewHandleRef(h) *HandleRef                  // handle.go: owner with Close + finalizer
//
// Pointers passed to C must not move while C runs. Where the memory is the
// caller's (stream buffers), the uintptr(unsafe.Pointer(...)) conversion is
// written directly in purego.SyscallN's argument list: SyscallN carries the
// uintptrescapes directive, which moves those objects to the heap. That also puts
// the variadic argument slice on the heap (one allocation per call), so the
// hot JSON path instead passes a pooled, heap-allocated argument array
// (outParams.args) and only pointers to heap memory it owns (pooled request
// buffers, the pooled outParams itself, C memory); runtime.KeepAlive keeps
// them alive until SyscallN returns.

import (
	"context"
	"encoding/json"
	"runtime"
	"strconv"
	"sync"
	"unsafe"

	"github.com/ebitengine/purego"
)

const (
	statusOK      = 0
	statusErr     = 1
	statusBadArgs = 2
)

// outParams receives a library-allocated buffer (and a count for streams).
// Pooled and heap-allocated: C writes into it.
type outParams struct {
	ptr  *byte
	len  uintptr
	n    uintptr
	args [5]uintptr
}

var outPool = sync.Pool{New: func() any { return new(outParams) }}

// reqBuf holds a request being built.
type reqBuf struct{ b []byte }

var reqPool = sync.Pool{New: func() any { return &reqBuf{b: make([]byte, 0, 256)} }}

// take copies out the library buffer (if want) and frees it.
func (l *library) take(o *outParams, want bool) []byte {
	if o.ptr == nil {
		return nil
	}
	var b []byte
	if want {
		b = append([]byte(nil), unsafe.Slice(o.ptr, o.len)...)
	}
	o.args[0], o.args[1] = uintptr(unsafe.Pointer(o.ptr)), o.len
	purego.SyscallN(l.fnFree, o.args[:2]...)
	o.ptr, o.len = nil, 0
	return b
}

// errorFrom builds the *Error for a failed call from its error JSON.
func (l *library) errorFrom(ctx context.Context, op string, o *outParams, status uintptr) error {
	if status != statusErr {
		l.take(o, false)
		return &Error{Op: op, Code: CodeInternal, Message: "library returned unexpected status " + strconv.Itoa(int(int32(status)))}
	}
	var body struct {
		Code    Code   `json:"code"`
		Message string `json:"message"`
	}
	raw := unsafe.Slice(o.ptr, o.len)
	if o.ptr == nil || json.Unmarshal(raw, &body) != nil || body.Code == "" {
		msg := string(raw)
		l.take(o, false)
		return &Error{Op: op, Code: CodeInternal, Message: "malformed error from library: " + msg}
	}
	l.take(o, false)
	if body.Code == CodeCanceled {
		if cerr := ctx.Err(); cerr != nil {
			return CtxError(op, cerr)
		}
	}
	return &Error{Op: op, Code: body.Code, Message: body.Message}
}

// Call sends {"method": method, "params": params} and decodes the result.
func Call(ctx context.Context, op, method string, params, result any) error {
	var p []byte
	switch v := params.(type) {
	case nil:
	case json.RawMessage:
		p = v
	case []byte:
		p = v
	default:
		b, err := json.Marshal(params)
		if err != nil {
			return &Error{Op: op, Code: CodeInvalidArgument, Message: "encode params: " + err.Error()}
		}
		p = b
	}
	rb := reqPool.Get().(*reqBuf)
	rb.b = appendRequest(rb.b[:0], method, p)
	var err error
	handled := false
	// Methods that wait (exec.start, exec.wait) go through the completion
	// queue and hold no thread; the library says which (completion.go).
	if l, lerr := lib(); lerr == nil {
		if c := completions(l); c != nil {
			handled, err = c.call(ctx, op, method, rb, result, nil)
		}
	}
	if !handled {
		err = invoke(ctx, op, rb, result, nil)
	}
	putReq(rb)
	return err
}

func putReq(rb *reqBuf) {
	if cap(rb.b) <= 64<<10 {
		reqPool.Put(rb)
	}
}

// CallRaw sends a complete request and returns the result JSON.
func CallRaw(ctx context.Context, op string, req []byte) ([]byte, error) {
	var out []byte
	rb := reqPool.Get().(*reqBuf)
	rb.b = append(rb.b[:0], req...)
	err := invoke(ctx, op, rb, nil, &out)
	putReq(rb)
	return out, err
}

// appendRequest writes {"method":M[,"params":P]} without reflection.
func appendRequest(b []byte, method string, params []byte) []byte {
	b = append(b, `{"method":`...)
	if plainMethod(method) {
		b = append(b, '"')
		b = append(b, method...)
		b = append(b, '"')
	} else {
		q, _ := json.Marshal(method) // a string always encodes
		b = append(b, q...)
	}
	if len(params) > 0 {
		b = append(b, `,"params":`...)
		b = append(b, params...)
	}
	return append(b, '}')
}

func plainMethod(m string) bool {
	for i := 0; i < len(m); i++ {
		c := m[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '.' || c == '_') {
			return false
		}
	}
	return true
}

// invoke runs one lockbox_call with the request in rb (pooled, so on the
// heap). On success it decodes into result (if not nil) or copies the bytes
// into *raw (if not nil).
func invoke(ctx context.Context, op string, rb *reqBuf, result any, raw *[]byte) error {
	req := rb.b
	l, err := lib()
	if err != nil {
		return withOp(err, op)
	}
	if err := ctx.Err(); err != nil {
		return CtxError(op, err)
	}
	if len(req) == 0 {
		return &Error{Op: op, Code: CodeInvalidArgument, Message: "empty request"}
	}
	if err := acquireBlockingSlot(ctx, op); err != nil {
		return err
	}
	defer releaseBlockingSlot()
	o := outPool.Get().(*outParams)
	c := l.arm(ctx)
	o.args = [5]uintptr{uintptr(unsafe.Pointer(&req[0])), uintptr(len(req)), uintptr(c.id()),
		uintptr(unsafe.Pointer(&o.ptr)), uintptr(unsafe.Pointer(&o.len))}
	st, _, _ := purego.SyscallN(l.fnCall, o.args[:]...)
	runtime.KeepAlive(rb)
	l.disarm(c)
	err = l.finish(ctx, op, o, st, result, raw)
	runtime.KeepAlive(o)
	outPool.Put(o)
	return err
}

// finish turns a call's status and out-parameters into its error or its
// decoded result, and frees the library buffer.
func (l *library) finish(ctx context.Context, op string, o *outParams, st uintptr, result any, raw *[]byte) error {
	if int32(st) != statusOK {
		return l.errorFrom(ctx, op, o, st)
	}
	var err error
	switch {
	case raw != nil:
		*raw = l.take(o, true)
	case result != nil && o.ptr != nil:
		if jerr := json.Unmarshal(unsafe.Slice(o.ptr, o.len), result); jerr != nil {
			err = &Error{Op: op, Code: CodeInternal, Message: "decode result: " + jerr.Error()}
		}
		l.take(o, false)
	default:
		l.take(o, false)
	}
	return err
}

// maxBlockingCalls bounds the lockbox_call calls in flight. Each one holds
// an OS thread until it returns, and calls without an async form (create,
// remove, file operations...) can wait for seconds: 500 concurrent creates
// left 500 threads behind, and Go dies at 10,000. Goroutines beyond the
// bound wait on a channel, which holds no thread. No blocking call waits
// for another one to start, so the bound cannot deadlock; it is high
// enough that quick calls rarely queue behind slow ones.
const maxBlockingCalls = 256

var blockingSlots = make(chan struct{}, maxBlockingCalls)

// unboundedBlocking lifts the bound; for the control run of its test.
var unboundedBlocking bool

func acquireBlockingSlot(ctx context.Context, op string) error {
	if unboundedBlocking {
		return nil
	}
	select {
	case blockingSlots <- struct{}{}:
		return nil
	default:
	}
	select {
	case blockingSlots <- struct{}{}:
		return nil
	case <-ctx.Done():
		return CtxError(op, ctx.Err())
	}
}

func releaseBlockingSlot() {
	if !unboundedBlocking {
		<-blockingSlots
	}
}
