package lockbox

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"sync"
	"syscall"
	"time"

	"lockbox.dev/lockbox/internal/wire"
)

// Cmd is a command to run in a sandbox, shaped like os/exec.Cmd: set the
// fields, then Run, Output, CombinedOutput, or Start and Wait.
type Cmd struct {
	Path string   // the program (looked up in PATH inside the sandbox)
	Args []string // argv, including the program as Args[0]
	Env  []string // extra KEY=VALUE entries on top of the sandbox's env
	Dir  string   // working directory inside the sandbox
	User string   // "uid", "uid:gid" or a user name; default: the sandbox's

	Stdin  io.Reader
	Stdout io.Writer
	Stderr io.Writer

	// OutputLimit caps what Output and CombinedOutput collect: 0 means
	// DefaultOutputLimit, NoLimit none. Past it the process is killed and
	// the error matches ErrOutputLimit. Writers you set yourself are not
	// capped.
	OutputLimit int64

	// Process is set by Start.
	Process *Process
	// ProcessState is set by Wait.
	ProcessState *ProcessState

	sb  *Sandbox
	ctx context.Context
	// run holds what only the Sandbox conveniences set (from their
	// ExecOptions); zero for a Cmd made by Command.
	run execRun

	p         *process
	copies    sync.WaitGroup
	copyErr   error
	copyMu    sync.Mutex
	stopCtx   func() bool
	pipeOut   bool
	pipeErr   bool
	pipeIn    *streamWriter
	stdinW    *streamWriter // the stdin stream once started, if any
	waitDone  bool
	stdinErr  <-chan error
	closeOnce sync.Once
}

// execRun is what a command gets from ExecOptions beyond Cmd's fields.
type execRun struct {
	timeout   time.Duration // WithExecTimeout
	tty       bool          // WithTTY
	rows      uint16
	cols      uint16
	badEnvKey *string // a WithExecEnv key the engine would misread
	// openStdin asks for a stdin stream without Stdin or StdinPipe
	// (ExecStream hands it out).
	openStdin bool
	// boundIO ends output reads and the final wait with ctx (see
	// ioContext).
	boundIO bool
}

// Process is a started command's process.
type Process struct {
	Pid int // pid inside the sandbox's pid namespace
	p   *process
}

// Signal sends sig to the process (and its process group). Only
// syscall.Signal values are supported.
func (p *Process) Signal(sig os.Signal) error {
	s, ok := sig.(syscall.Signal)
	if !ok {
		return &Error{Op: "exec.signal", Code: CodeInvalidArgument, Message: "unsupported signal type"}
	}
	return p.p.signal(s)
}

// Kill sends SIGKILL.
func (p *Process) Kill() error { return p.p.signal(syscall.SIGKILL) }

// ProcessState is how a command ended.
type ProcessState struct {
	st ExitStatus
}

// ExitCode is the exit code, or -1 if a signal ended the process.
func (s *ProcessState) ExitCode() int {
	if s.st.Signal != 0 {
		return -1
	}
	return s.st.ExitCode
}

// Signal is the signal that ended the process, or 0.
func (s *ProcessState) Signal() syscall.Signal { return syscall.Signal(s.st.Signal) }

// TimedOut reports whether a timeout killed it.
func (s *ProcessState) TimedOut() bool { return s.st.TimedOut }

// Success reports a zero exit code.
func (s *ProcessState) Success() bool { return s.st.Signal == 0 && s.st.ExitCode == 0 }

func (s *ProcessState) String() string {
	if s.st.Signal != 0 {
		return "signal: " + syscall.Signal(s.st.Signal).String()
	}
	return "exit status " + strconv.Itoa(s.st.ExitCode)
}

// ExitError is returned by Run, Output, CombinedOutput and Wait when the
// command ran but did not exit with 0.
type ExitError struct {
	*ProcessState
	// Stderr holds the standard error output when Output collected it.
	Stderr []byte
}

func (e *ExitError) Error() string { return e.ProcessState.String() }

// Command returns a Cmd to run name with args in the sandbox.
func (s *Sandbox) Command(name string, args ...string) *Cmd {
	return s.CommandContext(context.Background(), name, args...)
}

// CommandContext is Command with a context: when ctx ends, the process is
// killed (as with os/exec.CommandContext).
func (s *Sandbox) CommandContext(ctx context.Context, name string, args ...string) *Cmd {
	return &Cmd{Path: name, Args: append([]string{name}, args...), sb: s, ctx: ctx}
}

// String is the command line, for messages.
func (c *Cmd) String() string {
	var b bytes.Buffer
	for i, a := range c.Args {
		if i > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(a)
	}
	return b.String()
}

// Run starts the command and waits for it.
func (c *Cmd) Run() error {
	if err := c.Start(); err != nil {
		return err
	}
	return c.Wait()
}

// limit is the effective OutputLimit.
func (c *Cmd) limit() int64 {
	if c.OutputLimit == 0 {
		return DefaultOutputLimit
	}
	return c.OutputLimit
}

// capped is a buffer of at most OutputLimit bytes that kills the process
// when it fills.
func (c *Cmd) capped() *capBuffer {
	return &capBuffer{limit: c.limit(), over: c.kill}
}

// Output runs the command and returns its stdout (at most OutputLimit
// bytes). On a non-zero exit the error is an *ExitError holding stderr.
func (c *Cmd) Output() ([]byte, error) {
	if c.Stdout != nil {
		return nil, usageError("exec.output", "Stdout already set", nil)
	}
	out, errb := c.capped(), c.capped()
	c.Stdout = out
	captureErr := c.Stderr == nil
	if captureErr {
		c.Stderr = errb
	}
	err := c.Run()
	if out.exceeded() {
		return out.Bytes(), outputLimitError("exec.output", "stdout", c.limit())
	}
	if errb.exceeded() {
		return out.Bytes(), outputLimitError("exec.output", "stderr", c.limit())
	}
	var ee *ExitError
	if err != nil && captureErr && errors.As(err, &ee) {
		ee.Stderr = errb.Bytes()
	}
	return out.Bytes(), err
}

// CombinedOutput runs the command and returns stdout and stderr together
// (at most OutputLimit bytes in all).
func (c *Cmd) CombinedOutput() ([]byte, error) {
	if c.Stdout != nil || c.Stderr != nil {
		return nil, usageError("exec.combined_output", "Stdout or Stderr already set", nil)
	}
	b := c.capped()
	c.Stdout, c.Stderr = b, b
	err := c.Run()
	if b.exceeded() {
		return b.Bytes(), outputLimitError("exec.combined_output", "output", c.limit())
	}
	return b.Bytes(), err
}

// StdinPipe returns a pipe to the command's stdin; Close sends EOF.
func (c *Cmd) StdinPipe() (io.WriteCloser, error) {
	if c.Stdin != nil || c.pipeIn != nil {
		return nil, usageError("exec.stdin_pipe", "Stdin already set", nil)
	}
	if c.p != nil {
		return nil, usageError("exec.stdin_pipe", "StdinPipe after Start", ErrAlreadyStarted)
	}
	c.pipeIn = &streamWriter{}
	return &lazyWriter{c: c}, nil
}

// StdoutPipe returns a reader of the command's stdout. Read it to EOF
// before Wait.
func (c *Cmd) StdoutPipe() (io.ReadCloser, error) {
	if c.Stdout != nil || c.pipeOut {
		return nil, usageError("exec.stdout_pipe", "Stdout already set", nil)
	}
	if c.p != nil {
		return nil, usageError("exec.stdout_pipe", "StdoutPipe after Start", ErrAlreadyStarted)
	}
	c.pipeOut = true
	return &lazyReader{c: c, stderr: false}, nil
}

// StderrPipe returns a reader of the command's stderr.
func (c *Cmd) StderrPipe() (io.ReadCloser, error) {
	if c.Stderr != nil || c.pipeErr {
		return nil, usageError("exec.stderr_pipe", "Stderr already set", nil)
	}
	if c.p != nil {
		return nil, usageError("exec.stderr_pipe", "StderrPipe after Start", ErrAlreadyStarted)
	}
	c.pipeErr = true
	return &lazyReader{c: c, stderr: true}, nil
}

// Start starts the command without waiting for it.
func (c *Cmd) Start() error {
	if c.p != nil {
		return usageError("exec.start", "Cmd already started", ErrAlreadyStarted)
	}
	if c.sb == nil {
		return usageError("exec.start", "Cmd not made by Sandbox.Command", nil)
	}
	if c.ctx == nil {
		c.ctx = context.Background()
	}
	if k := c.run.badEnvKey; k != nil {
		return &Error{Op: "exec.start", Code: CodeInvalidArgument,
			Message: fmt.Sprintf("WithExecEnv key %q: must be non-empty, without '=' or NUL", *k)}
	}
	p, err := c.sb.startProcess(c.ctx, c.startParams())
	if err != nil {
		return err
	}
	c.p = p
	c.Process = &Process{Pid: p.pid, p: p}
	c.stopCtx = context.AfterFunc(c.ctx, p.kill)
	rctx := c.ioContext()
	if c.Stdout != nil {
		c.copy(c.Stdout, p.stdout.reader(rctx, "exec.stdout"))
	} else if !c.pipeOut {
		c.copy(io.Discard, p.stdout.reader(rctx, "exec.stdout"))
	}
	if p.stderr != nil {
		if c.Stderr != nil {
			c.copy(c.Stderr, p.stderr.reader(rctx, "exec.stderr"))
		} else if !c.pipeErr {
			c.copy(io.Discard, p.stderr.reader(rctx, "exec.stderr"))
		}
	}
	if p.stdin != nil {
		c.stdinW = p.stdin.writer(c.ctx, "exec.stdin")
		if c.pipeIn != nil {
			*c.pipeIn = *c.stdinW
		} else if c.Stdin != nil {
			c.stdinErr = feedStdin(c.stdinW, c.Stdin)
		}
	}
	return nil
}

// startParams is the exec.start request for the command as configured.
func (c *Cmd) startParams() *wire.ExecStartParams {
	argv := c.Args
	if len(argv) == 0 {
		argv = []string{c.Path}
	} else if c.Path != "" && c.Path != argv[0] {
		argv = append([]string{c.Path}, argv[1:]...)
	}
	p := &wire.ExecStartParams{Argv: argv, Env: c.Env, Cwd: c.Dir, User: c.User,
		Stdin: c.Stdin != nil || c.pipeIn != nil || c.run.openStdin,
		TTY:   c.run.tty, Rows: c.run.rows, Cols: c.run.cols}
	if c.run.timeout > 0 {
		p.TimeoutMs = max(uint64(c.run.timeout.Milliseconds()), 1)
	}
	return p
}

// ioContext is what output reads and the final wait end with: for a Cmd,
// never (what the process wrote before it was killed is still delivered
// up to EOF); for the Sandbox conveniences, their ctx, so that they return
// once it ends even if something still holds the output open.
func (c *Cmd) ioContext() context.Context {
	if c.run.boundIO {
		return c.ctx
	}
	return context.Background()
}

// kill ends the started process; the output limit's response.
func (c *Cmd) kill() {
	if c.p != nil {
		c.p.kill()
	}
}

func (c *Cmd) copy(dst io.Writer, src io.Reader) {
	c.copies.Add(1)
	go func() {
		defer c.copies.Done()
		if _, err := io.Copy(dst, src); err != nil {
			c.copyMu.Lock()
			if c.copyErr == nil {
				c.copyErr = err
			}
			c.copyMu.Unlock()
		}
	}()
}

// await waits for the output copies, then for the process's exit. It is
// Wait without the verdict: a non-zero exit is a status here, not an
// error, which is what ExecArgs and ExecStream report.
func (c *Cmd) await() (ExitStatus, error) {
	c.copies.Wait()
	return c.p.wait(c.ioContext())
}

// release drops the context watch and every handle of the process.
func (c *Cmd) release() {
	c.stopCtx()
	c.closeOnce.Do(c.p.close)
}

// Wait waits for the command to exit and for its output to be copied.
func (c *Cmd) Wait() error {
	if c.p == nil {
		return usageError("exec.wait", "Cmd not started", nil)
	}
	if c.waitDone {
		return usageError("exec.wait", "Wait was already called", nil)
	}
	c.waitDone = true
	st, err := c.await()
	c.release()
	if err != nil {
		return err
	}
	c.ProcessState = &ProcessState{st: st}
	if cerr := c.ctx.Err(); cerr != nil && !c.ProcessState.Success() {
		return ctxError("exec", cerr)
	}
	if !c.ProcessState.Success() {
		return &ExitError{ProcessState: c.ProcessState}
	}
	if err := stdinResult(c.stdinErr); err != nil {
		return err
	}
	return c.copyErr
}

// lazyReader reads a pipe whose stream exists only after Start.
type lazyReader struct {
	c      *Cmd
	stderr bool
}

func (r *lazyReader) Read(p []byte) (int, error) {
	if r.c.p == nil {
		return 0, usageError("exec.pipe", "read from pipe before Start", nil)
	}
	s := r.c.p.stdout
	if r.stderr {
		s = r.c.p.stderr
	}
	if s == nil {
		return 0, io.EOF
	}
	return s.read(context.Background(), "exec.pipe", p)
}

func (r *lazyReader) Close() error { return nil }

type lazyWriter struct{ c *Cmd }

func (w *lazyWriter) Write(p []byte) (int, error) {
	if w.c.pipeIn == nil || w.c.pipeIn.s == nil {
		return 0, usageError("exec.pipe", "write to pipe before Start", nil)
	}
	return w.c.pipeIn.Write(p)
}

func (w *lazyWriter) Close() error {
	if w.c.pipeIn == nil || w.c.pipeIn.s == nil {
		return nil
	}
	return w.c.pipeIn.Close()
}
