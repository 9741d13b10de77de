package abi

// Calls that wait without an OS thread (docs/abi.md, "Asynchronous calls").
//
// purego.SyscallN runs C on the calling goroutine's thread; a library call
// that waits (exec.wait, a stream read) keeps that thread for as long as
// it waits, and Go starts a new thread for every other goroutine meanwhile.
// Ten thousand waiting execs meant tens of thousands of threads and a crash
// at Go's 10,000 limit. Instead, waiting work is submitted: the library
// runs it on its own runtime and, when it is done, queues its token and
// signals an eventfd. One goroutine here reads that fd through Go's
// netpoller (no thread parked in a read), drains the finished tokens and
// wakes the goroutines waiting for them on channels. Every library call
// left on the Go side returns without waiting.
//
// A library without these exports (an older one) keeps the blocking path.

import (
	"context"
	"os"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"github.com/ebitengine/purego"
)

// Statuses of the submit exports besides statusOK / statusBadArgs.
const statusSyncOnly = 3

type completer struct {
	l                                       *library
	fnSubmit, fnReadSubmit, fnWriteSubmit   uintptr
	fnCompletions, fnTake, fnForget, fnFdFn uintptr

	mu      sync.Mutex
	waiters map[uint64]chan struct{}

	lastToken atomic.Uint64
	// Methods the library said have no async form: asking again would
	// only cost a second parse per call.
	syncOnly sync.Map
}

var (
	compOnce sync.Once
	comp     *completer
	// forceBlocking makes every call take the blocking path; for the
	// control runs of the thread-count tests.
	forceBlocking bool
)

// completions returns the completion machinery, or nil when the library
// lacks it (then callers use the blocking exports).
func completions(l *library) *completer {
	if forceBlocking {
		return nil
	}
	compOnce.Do(func() {
		if c := resolveCompleter(l); c != nil && c.start() {
			comp = c
		}
	})
	return comp
}

// resolveCompleter finds the async exports; nil if any is missing.
func resolveCompleter(l *library) *completer {
	c := &completer{l: l, waiters: make(map[uint64]chan struct{})}
	for _, s := range []struct {
		name string
		dst  *uintptr
	}{
		{"lockbox_completion_fd", &c.fnFdFn},
		{"lockbox_submit", &c.fnSubmit},
		{"lockbox_stream_read_submit", &c.fnReadSubmit},
		{"lockbox_stream_write_submit", &c.fnWriteSubmit},
		{"lockbox_completions", &c.fnCompletions},
		{"lockbox_take", &c.fnTake},
		{"lockbox_forget", &c.fnForget},
	} {
		p, err := dlsym(l.dl, s.name)
		if err != nil || p == 0 {
			return nil
		}
		*s.dst = p
	}
	return c
}

// start begins watching the completion fd; false if it cannot. Once per
// process: two readers of the one eventfd would steal each other's wakeups.
func (c *completer) start() bool {
	r, _, _ := purego.SyscallN(c.fnFdFn)
	fd := int(int32(r))
	if fd < 0 {
		return false
	}
	// A copy of the descriptor: the os.File closes what it owns when it
	// is collected, and the library's fd must outlive anything here.
	dup, _, errno := syscall.Syscall(syscall.SYS_FCNTL, uintptr(fd), syscall.F_DUPFD_CLOEXEC, 0)
	if errno != 0 {
		return false
	}
	if err := syscall.SetNonblock(int(dup), true); err != nil {
		syscall.Close(int(dup))
		return false
	}
	// Non-blocking, so os.NewFile puts it on the netpoller.
	f := os.NewFile(dup, "lockbox-completions")
	go c.loop(f)
	return true
}

// dlsym looks up an optional symbol; dlerror is per thread.
func dlsym(dl uintptr, name string) (uintptr, error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	return purego.Dlsym(dl, name)
}

// loop wakes the waiter of every finished token. The fd is read before the
// queue is drained, and the library signals after queueing, so a token
// queued at any moment is drained by this pass or the next.
func (c *completer) loop(f *os.File) {
	var cnt [8]byte
	toks := make([]uint64, 256)
	for {
		if _, err := f.Read(cnt[:]); err != nil {
			// Not expected (an eventfd read fails only with EAGAIN, which
			// the poller absorbs); degrade to polling rather than hang.
			time.Sleep(time.Millisecond)
		}
		for {
			r, _, _ := purego.SyscallN(c.fnCompletions, uintptr(unsafe.Pointer(&toks[0])), uintptr(len(toks)))
			n := int(r)
			c.mu.Lock()
			for _, t := range toks[:n] {
				if ch, ok := c.waiters[t]; ok {
					delete(c.waiters, t)
					ch <- struct{}{}
				}
			}
			c.mu.Unlock()
			if n < len(toks) {
				break
			}
		}
	}
}

// do submits one piece of work and waits for it without holding a thread:
// submit gets a fresh token and the call's cancel id. On statusSyncOnly it
// returns false and nothing happened. Otherwise take's out-parameters hold
// the result (status in st) for onDone, which must consume them.
func (c *completer) do(ctx context.Context, op string, submit func(token, cid uint64) uintptr,
	onDone func(o *outParams, st uintptr) error) (bool, error) {
	if err := ctx.Err(); err != nil {
		return true, CtxError(op, err)
	}
	token := c.lastToken.Add(1)
	ch := make(chan struct{}, 1)
	c.mu.Lock()
	c.waiters[token] = ch
	c.mu.Unlock()
	// A cancel makes the library end the work promptly and still complete
	// the token, so waiting for the completion alone is enough.
	cn := c.l.arm(ctx)
	st := submit(token, cn.id())
	if int32(st) != statusOK {
		c.mu.Lock()
		delete(c.waiters, token)
		c.mu.Unlock()
		c.l.disarm(cn)
		if int32(st) == statusSyncOnly {
			return false, nil
		}
		return true, &Error{Op: op, Code: CodeInternal, Message: "library refused a submit with status " + strconv.Itoa(int(int32(st)))}
	}
	<-ch
	c.l.disarm(cn)
	o := outPool.Get().(*outParams)
	o.args[0], o.args[1], o.args[2] = uintptr(token), uintptr(unsafe.Pointer(&o.ptr)), uintptr(unsafe.Pointer(&o.len))
	r, _, _ := purego.SyscallN(c.fnTake, o.args[:3]...)
	err := onDone(o, r)
	runtime.KeepAlive(o)
	outPool.Put(o)
	return true, err
}

// call runs a JSON call through lockbox_submit. False: the method has no
// async form, use lockbox_call.
func (c *completer) call(ctx context.Context, op, method string, rb *reqBuf, result any, raw *[]byte) (bool, error) {
	if _, ok := c.syncOnly.Load(method); ok {
		return false, nil
	}
	req := rb.b
	if len(req) == 0 {
		return false, nil
	}
	handled, err := c.do(ctx, op, func(token, cid uint64) uintptr {
		st, _, _ := purego.SyscallN(c.fnSubmit, uintptr(unsafe.Pointer(&req[0])), uintptr(len(req)), uintptr(cid), uintptr(token))
		runtime.KeepAlive(rb)
		return st
	}, func(o *outParams, st uintptr) error {
		return c.l.finish(ctx, op, o, st, result, raw)
	})
	if !handled {
		c.syncOnly.Store(method, struct{}{})
	}
	return handled, err
}

// read reads up to cap bytes of stream h and passes them to use (library
// memory, valid only during use; empty at end of stream).
func (c *completer) read(ctx context.Context, op string, h uint64, capacity int, use func([]byte)) error {
	_, err := c.do(ctx, op, func(token, cid uint64) uintptr {
		st, _, _ := purego.SyscallN(c.fnReadSubmit, uintptr(h), uintptr(capacity), uintptr(cid), uintptr(token))
		return st
	}, func(o *outParams, st uintptr) error {
		if int32(st) != statusOK {
			return c.l.errorFrom(ctx, op, o, st)
		}
		if o.ptr == nil {
			use(nil)
			return nil
		}
		use(unsafe.Slice(o.ptr, o.len))
		c.l.take(o, false)
		return nil
	})
	return err
}

// write writes all of p to stream h (the library copies p at once).
func (c *completer) write(ctx context.Context, op string, h uint64, p []byte) error {
	_, err := c.do(ctx, op, func(token, cid uint64) uintptr {
		st, _, _ := purego.SyscallN(c.fnWriteSubmit, uintptr(h), uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)), uintptr(cid), uintptr(token))
		runtime.KeepAlive(p)
		return st
	}, func(o *outParams, st uintptr) error {
		if int32(st) != statusOK {
			return c.l.errorFrom(ctx, op, o, st)
		}
		c.l.take(o, false)
		return nil
	})
	return err
}

// SetBlockingOnly turns the completion queue off (true) or back on, for
// the control runs of the thread-count tests: with it off, every call
// takes the blocking path and holds a thread while it waits.
func SetBlockingOnly(on bool) { forceBlocking = on }

// HasCompletionQueue reports whether calls that wait hold no thread: the
// library has the async exports and SetBlockingOnly is off.
func HasCompletionQueue() bool { return asyncStreams() != nil }
