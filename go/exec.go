package lockbox

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"sync"
	"syscall"
)

// ExecResult is what a finished process produced. A non-zero exit is a
// result, not an error.
type ExecResult struct {
	ExitCode int    // the exit code, or 128+signal when a signal ended it
	Signal   int    // the signal that ended it, or 0
	TimedOut bool   // killed by WithExecTimeout
	Stdout   []byte // what was written to stdout (up to the output limit)
	Stderr   []byte // what was written to stderr (up to the output limit)
}

// ExitStatus is how a process ended.
type ExitStatus struct {
	ExitCode int
	Signal   int
	TimedOut bool
}

// DefaultOutputLimit is how much of each output stream Exec, ExecArgs,
// Shell and Cmd.Output keep (CombinedOutput: both streams together)
// unless WithOutputLimit or Cmd.OutputLimit says otherwise. Whatever runs
// in the sandbox decides how much it writes; the cap keeps that from
// deciding how much memory your process uses.
const DefaultOutputLimit int64 = 16 << 20

// WithOutputLimit caps each collected output stream at n bytes (NoLimit:
// no cap). A process that writes more is killed, as if its context had
// ended, and the call returns what was collected (the first n bytes of
// that stream) together with an error matching ErrOutputLimit (and
// ErrResourceExhausted). ExecStream is not capped: its events are
// delivered as you read them.
func WithOutputLimit(n int64) ExecOption { return func(c *execConfig) { c.outputLimit = &n } }

// capBuffer keeps up to limit bytes (limit < 0: no cap). The write that
// passes the limit keeps what still fits and calls over once (which kills
// the process); later bytes are discarded, not refused, so the stream
// still drains to its end and the process's exit is still reported.
type capBuffer struct {
	mu    sync.Mutex
	b     bytes.Buffer
	limit int64
	over  func()
	hit   bool
}

func (c *capBuffer) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.hit {
		return len(p), nil
	}
	if c.limit >= 0 && int64(c.b.Len())+int64(len(p)) > c.limit {
		c.b.Write(p[:c.limit-int64(c.b.Len())])
		c.hit = true
		if c.over != nil {
			c.over()
		}
		return len(p), nil
	}
	return c.b.Write(p)
}

func (c *capBuffer) Bytes() []byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.b.Bytes()
}

func (c *capBuffer) exceeded() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.hit
}

func outputLimitError(op, what string, limit int64) *Error {
	return limitError(op, what+" passed the output limit of "+strconv.FormatInt(limit, 10)+
		" bytes; the process was killed", ErrOutputLimit)
}

// WithStdin feeds r to the process's standard input (then EOF). If reading
// r fails, the process gets EOF there, and when it otherwise succeeds the
// exec's error matches ErrStdin and r's error (as os/exec reports a failed
// stdin copy).
func WithStdin(r io.Reader) ExecOption { return func(c *execConfig) { c.stdin = r } }

// errReader remembers the error of the reader it wraps, so that a failure
// to read the caller's input is told apart from a failure to write it to a
// process that no longer reads (which, as in os/exec, is not an error).
type errReader struct {
	r   io.Reader
	err error
}

func (e *errReader) Read(p []byte) (int, error) {
	n, err := e.r.Read(p)
	if err != nil && err != io.EOF {
		e.err = err
	}
	return n, err
}

// feedStdin copies r to w, then closes w. The channel gets r's read
// error (nil if none) before w is closed, so it is there by the time the
// process has seen EOF and exited.
func feedStdin(w io.WriteCloser, r io.Reader) <-chan error {
	done := make(chan error, 1)
	go func() {
		src := &errReader{r: r}
		_, _ = io.Copy(w, src)
		var err error
		if src.err != nil {
			err = fmt.Errorf("lockbox: exec.stdin: %w: %w", ErrStdin, src.err)
		}
		done <- err
		_ = w.Close()
	}()
	return done
}

// stdinResult is feedStdin's error if the copy has ended. It does not
// wait: a process that exited without reading all of its input is not
// held up by a reader that blocks.
func stdinResult(c <-chan error) error {
	select {
	case err := <-c:
		return err
	default:
		return nil
	}
}

// process is a started exec: its handle and its stdio stream handles.
type process struct {
	ref    *handleRef
	pid    int
	stdin  *streamRef
	stdout *streamRef
	stderr *streamRef
}

type startReply struct {
	Exec   uint64  `json:"exec"`
	Pid    int     `json:"pid"`
	Stdin  *uint64 `json:"stdin"`
	Stdout *uint64 `json:"stdout"`
	Stderr *uint64 `json:"stderr"`
}

func (s *Sandbox) start(ctx context.Context, cfg *execConfig) (*process, error) {
	if len(cfg.Argv) == 0 || cfg.Argv[0] == "" {
		return nil, &Error{Op: "exec.start", Code: CodeInvalidArgument, Message: "no program given"}
	}
	if k := cfg.badEnvKey; k != nil {
		return nil, &Error{Op: "exec.start", Code: CodeInvalidArgument,
			Message: fmt.Sprintf("WithExecEnv key %q: must be non-empty, without '=' or NUL", *k)}
	}
	if cfg.timeout > 0 {
		ms := cfg.timeout.Milliseconds()
		if ms == 0 {
			ms = 1
		}
		cfg.TimeoutMs = uint64(ms)
	}
	var r startReply
	err := s.ref.use("exec.start", func(h uint64) error {
		p := struct {
			Sandbox uint64 `json:"sandbox"`
			*execConfig
		}{h, cfg}
		return call(ctx, "exec.start", "exec.start", &p, &r)
	})
	if err != nil {
		return nil, err
	}
	ref := newChildRef(r.Exec, s.ref)
	return &process{
		ref:    ref,
		pid:    r.Pid,
		stdin:  newStreamRef(r.Stdin, ref),
		stdout: newStreamRef(r.Stdout, ref),
		stderr: newStreamRef(r.Stderr, ref),
	}, nil
}

func (p *process) wait(ctx context.Context) (ExitStatus, error) {
	var r struct {
		ExitCode int  `json:"exit_code"`
		Signal   *int `json:"signal"`
		TimedOut bool `json:"timed_out"`
	}
	err := p.ref.use("exec.wait", func(h uint64) error {
		return call(ctx, "exec.wait", "exec.wait", map[string]uint64{"exec": h}, &r)
	})
	if err != nil {
		return ExitStatus{}, err
	}
	st := ExitStatus{ExitCode: r.ExitCode, TimedOut: r.TimedOut}
	if r.Signal != nil {
		st.Signal = *r.Signal
	}
	return st, nil
}

func (p *process) signal(sig syscall.Signal) error {
	return p.ref.use("exec.signal", func(h uint64) error {
		return call(context.Background(), "exec.signal", "exec.signal", map[string]any{"exec": h, "signal": int(sig)}, nil)
	})
}

func (p *process) resize(rows, cols uint16) error {
	return p.ref.use("exec.resize", func(h uint64) error {
		return call(context.Background(), "exec.resize", "exec.resize", map[string]any{"exec": h, "rows": rows, "cols": cols}, nil)
	})
}

func (p *process) close() {
	_ = p.stdin.close()
	_ = p.stdout.close()
	_ = p.stderr.close()
	_ = p.ref.close("exec.close")
}

// Exec runs a program to completion and collects its output.
func (s *Sandbox) Exec(ctx context.Context, name string, args ...string) (*ExecResult, error) {
	return s.ExecArgs(ctx, append([]string{name}, args...))
}

// ExecArgs runs argv (argv[0] is looked up in PATH) with options.
//
// Each output stream is collected up to DefaultOutputLimit bytes (see
// WithOutputLimit); past it the process is killed and ExecArgs returns the
// result so far with an error matching ErrOutputLimit.
func (s *Sandbox) ExecArgs(ctx context.Context, argv []string, opts ...ExecOption) (*ExecResult, error) {
	cfg := &execConfig{Argv: argv}
	for _, o := range opts {
		o(cfg)
	}
	limit := DefaultOutputLimit
	if cfg.outputLimit != nil {
		limit = *cfg.outputLimit
	}
	in, _ := cfg.stdin.(io.Reader)
	cfg.Stdin = in != nil
	p, err := s.start(ctx, cfg)
	if err != nil {
		return nil, err
	}
	defer p.close()
	stop := context.AfterFunc(ctx, func() { _ = p.signal(syscall.SIGKILL) })
	defer stop()

	var wg sync.WaitGroup
	kill := func() { _ = p.signal(syscall.SIGKILL) }
	outBuf := &capBuffer{limit: limit, over: kill}
	errBuf := &capBuffer{limit: limit, over: kill}
	var outErr, errErr error
	wg.Add(2)
	go func() { defer wg.Done(); _, outErr = io.Copy(outBuf, p.stdout.reader(ctx, "exec.stdout")) }()
	go func() {
		defer wg.Done()
		if p.stderr != nil {
			_, errErr = io.Copy(errBuf, p.stderr.reader(ctx, "exec.stderr"))
		}
	}()
	var stdinErr <-chan error
	if in != nil && p.stdin != nil {
		stdinErr = feedStdin(p.stdin.writer(ctx, "exec.stdin"), in)
	}
	wg.Wait()
	st, err := p.wait(ctx)
	if err != nil {
		return nil, err
	}
	res := &ExecResult{ExitCode: st.ExitCode, Signal: st.Signal, TimedOut: st.TimedOut,
		Stdout: outBuf.Bytes(), Stderr: errBuf.Bytes()}
	if outBuf.exceeded() {
		return res, outputLimitError("exec", "stdout", limit)
	}
	if errBuf.exceeded() {
		return res, outputLimitError("exec", "stderr", limit)
	}
	if outErr != nil {
		return nil, outErr
	}
	if errErr != nil {
		return nil, errErr
	}
	if st.ExitCode == 0 && st.Signal == 0 && !st.TimedOut {
		if err := stdinResult(stdinErr); err != nil {
			return res, err
		}
	}
	return res, nil
}

// Shell runs script with /bin/sh -c.
func (s *Sandbox) Shell(ctx context.Context, script string, opts ...ExecOption) (*ExecResult, error) {
	return s.ExecArgs(ctx, []string{"/bin/sh", "-c", script}, opts...)
}

// EventKind says what an ExecEvent carries.
type EventKind int

const (
	EventStdout EventKind = iota + 1
	EventStderr
	EventExit
)

// ExecEvent is one piece of a streaming exec: a chunk of output, or the
// exit (always last).
type ExecEvent struct {
	Kind EventKind
	Data []byte     // for EventStdout / EventStderr
	Exit ExitStatus // for EventExit
	Err  error      // set on EventExit when the exec failed
}

// ExecStream is a running process whose output arrives as events, in the
// order each stream produced it.
type ExecStream struct {
	p      *process
	events chan ExecEvent
	stdin  io.WriteCloser
	once   sync.Once
	stop   func() bool
}

// ExecStream starts argv and delivers its output event by event. Read
// Events until it is closed; the last event is EventExit. Until then the
// stream keeps its sandbox open, even if the *Sandbox is dropped. Once
// ctx ends or the sandbox is closed, delivery no longer waits for a
// reader: output not yet read may be dropped, EventExit (with the error)
// still comes last, and nothing is left running for a stream never read.
func (s *Sandbox) ExecStream(ctx context.Context, argv []string, opts ...ExecOption) (*ExecStream, error) {
	cfg := &execConfig{Argv: argv, Stdin: true}
	for _, o := range opts {
		o(cfg)
	}
	p, err := s.start(ctx, cfg)
	if err != nil {
		return nil, err
	}
	es := &ExecStream{p: p, events: make(chan ExecEvent, 16)}
	var stdinErr <-chan error
	if p.stdin != nil {
		es.stdin = p.stdin.writer(ctx, "exec.stdin")
		if in, ok := cfg.stdin.(io.Reader); ok {
			stdinErr = feedStdin(es.stdin, in)
		}
	}
	es.stop = context.AfterFunc(ctx, func() { _ = p.signal(syscall.SIGKILL) })
	// send hands ev to the reader, or gives up once ctx has ended or the
	// sandbox is closed: a caller who stopped reading must not keep these
	// goroutines, and through them the sandbox, forever. A ready reader
	// is served first.
	gone := s.ref.done
	send := func(ev ExecEvent) bool {
		select {
		case es.events <- ev:
			return true
		default:
		}
		select {
		case es.events <- ev:
			return true
		case <-ctx.Done():
		case <-gone:
		}
		return false
	}
	var wg sync.WaitGroup
	pump := func(r *streamRef, kind EventKind, op string) {
		defer wg.Done()
		if r == nil {
			return
		}
		rd := r.reader(ctx, op)
		for {
			buf := make([]byte, 64<<10)
			n, err := rd.Read(buf)
			if n > 0 && !send(ExecEvent{Kind: kind, Data: buf[:n]}) {
				return
			}
			if err != nil {
				return
			}
		}
	}
	wg.Add(2)
	go pump(p.stdout, EventStdout, "exec.stdout")
	go pump(p.stderr, EventStderr, "exec.stderr")
	go func() {
		wg.Wait()
		st, err := p.wait(ctx)
		if err == nil && st.ExitCode == 0 && st.Signal == 0 && !st.TimedOut {
			err = stdinResult(stdinErr)
		}
		exit := ExecEvent{Kind: EventExit, Exit: st, Err: err}
		for !send(exit) {
			// The buffer is full and nobody reads: the oldest chunk makes
			// room, so that a late reader still ends on the exit. The
			// pumps are done, so the next send finds the room.
			select {
			case <-es.events:
			default:
			}
		}
		close(es.events)
		es.stop()
		p.close()
	}()
	return es, nil
}

// Events delivers output chunks and, last, the exit; then it is closed.
func (e *ExecStream) Events() <-chan ExecEvent { return e.events }

// Stdin is the process's standard input; Close it to send EOF.
func (e *ExecStream) Stdin() io.WriteCloser {
	if e.stdin == nil {
		return nopWriteCloser{}
	}
	return e.stdin
}

// Pid is the process id inside the sandbox.
func (e *ExecStream) Pid() int { return e.p.pid }

// Signal sends sig to the process (and its process group).
func (e *ExecStream) Signal(sig syscall.Signal) error { return e.p.signal(sig) }

// Resize changes the terminal size of a process started WithTTY.
func (e *ExecStream) Resize(rows, cols uint16) error { return e.p.resize(rows, cols) }

// Wait drains the remaining events and returns the exit status.
func (e *ExecStream) Wait() (ExitStatus, error) {
	var last ExecEvent
	for ev := range e.events {
		last = ev
	}
	if last.Kind != EventExit {
		return ExitStatus{}, errors.New("lockbox: exec stream already drained")
	}
	return last.Exit, last.Err
}

type nopWriteCloser struct{}

func (nopWriteCloser) Write(p []byte) (int, error) { return 0, io.ErrClosedPipe }
func (nopWriteCloser) Close() error                { return nil }
