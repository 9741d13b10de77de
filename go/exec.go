package lockbox

import (
	"bytes"
	"context"
	"errors"
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

func (s ExitStatus) success() bool { return s.ExitCode == 0 && s.Signal == 0 && !s.TimedOut }

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
	c, cfg := s.command(ctx, argv, opts)
	limit := DefaultOutputLimit
	if cfg.outputLimit != nil {
		limit = *cfg.outputLimit
	}
	out := &capBuffer{limit: limit, over: c.kill}
	errb := &capBuffer{limit: limit, over: c.kill}
	c.Stdout, c.Stderr = out, errb
	if err := c.Start(); err != nil {
		return nil, err
	}
	st, err := c.await()
	c.release()
	if err != nil {
		return nil, err
	}
	res := &ExecResult{ExitCode: st.ExitCode, Signal: st.Signal, TimedOut: st.TimedOut,
		Stdout: out.Bytes(), Stderr: errb.Bytes()}
	if out.exceeded() {
		return res, outputLimitError("exec", "stdout", limit)
	}
	if errb.exceeded() {
		return res, outputLimitError("exec", "stderr", limit)
	}
	if c.copyErr != nil {
		return nil, c.copyErr
	}
	if st.success() {
		if err := stdinResult(c.stdinErr); err != nil {
			return res, err
		}
	}
	return res, nil
}

// command is the Cmd behind Exec, ExecArgs, Shell and ExecStream: argv
// with opts applied, its output reads bound to ctx.
func (s *Sandbox) command(ctx context.Context, argv []string, opts []ExecOption) (*Cmd, *execConfig) {
	cfg := &execConfig{}
	for _, o := range opts {
		o(cfg)
	}
	cfg.run.boundIO = true
	c := &Cmd{Args: argv, Env: cfg.env, Dir: cfg.dir, User: cfg.user, Stdin: cfg.stdin,
		sb: s, ctx: ctx, run: cfg.run}
	if len(argv) > 0 {
		c.Path = argv[0]
	}
	return c, cfg
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
	c      *Cmd
	events chan ExecEvent
	// gone is closed with the sandbox's handle: delivery stops waiting
	// for a reader then, as it does once ctx ends.
	gone <-chan struct{}
}

// ExecStream starts argv and delivers its output event by event. Read
// Events until it is closed; the last event is EventExit. Until then the
// stream keeps its sandbox open, even if the *Sandbox is dropped. Once
// ctx ends or the sandbox is closed, delivery no longer waits for a
// reader: output not yet read may be dropped, EventExit (with the error)
// still comes last, and nothing is left running for a stream never read.
func (s *Sandbox) ExecStream(ctx context.Context, argv []string, opts ...ExecOption) (*ExecStream, error) {
	c, _ := s.command(ctx, argv, opts)
	c.run.openStdin = true
	es := &ExecStream{c: c, events: make(chan ExecEvent, 16), gone: s.ref.done}
	c.Stdout = eventWriter{es, EventStdout}
	c.Stderr = eventWriter{es, EventStderr}
	if err := c.Start(); err != nil {
		return nil, err
	}
	go es.finish()
	return es, nil
}

// finish sends the exit once the output is delivered, then closes Events
// and releases the process.
func (e *ExecStream) finish() {
	st, err := e.c.await()
	if err == nil && st.success() {
		err = stdinResult(e.c.stdinErr)
	}
	exit := ExecEvent{Kind: EventExit, Exit: st, Err: err}
	for !e.send(exit) {
		// The buffer is full and nobody reads: the oldest chunk makes
		// room, so that a late reader still ends on the exit. The
		// copies are done, so the next send finds the room.
		select {
		case <-e.events:
		default:
		}
	}
	close(e.events)
	e.c.release()
}

// send hands ev to the reader, or gives up once ctx has ended or the
// sandbox is closed: a caller who stopped reading must not keep the
// copies, and through them the sandbox, forever. A ready reader is served
// first.
func (e *ExecStream) send(ev ExecEvent) bool {
	select {
	case e.events <- ev:
		return true
	default:
	}
	select {
	case e.events <- ev:
		return true
	case <-e.c.ctx.Done():
	case <-e.gone:
	}
	return false
}

// errUnread ends an output copy whose events nobody will read.
var errUnread = errors.New("lockbox: exec stream no longer read")

// eventWriter turns one output stream's writes into events. The bytes are
// copied: the stream hands them out of library memory.
type eventWriter struct {
	e    *ExecStream
	kind EventKind
}

func (w eventWriter) Write(p []byte) (int, error) {
	if !w.e.send(ExecEvent{Kind: w.kind, Data: bytes.Clone(p)}) {
		return 0, errUnread
	}
	return len(p), nil
}

// Events delivers output chunks and, last, the exit; then it is closed.
func (e *ExecStream) Events() <-chan ExecEvent { return e.events }

// Stdin is the process's standard input; Close it to send EOF.
func (e *ExecStream) Stdin() io.WriteCloser {
	if e.c.stdinW == nil {
		return nopWriteCloser{}
	}
	return e.c.stdinW
}

// Pid is the process id inside the sandbox.
func (e *ExecStream) Pid() int { return e.c.p.pid }

// Signal sends sig to the process (and its process group).
func (e *ExecStream) Signal(sig syscall.Signal) error { return e.c.p.signal(sig) }

// Resize changes the terminal size of a process started WithTTY.
func (e *ExecStream) Resize(rows, cols uint16) error { return e.c.p.resize(rows, cols) }

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
