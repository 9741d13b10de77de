package lockbox

import (
	"context"
	"fmt"
	"io"
	"syscall"

	"lockbox.dev/lockbox/internal/wire"
)

// process is a started exec as the library sees it: the exec handle, its
// stdio stream handles (nil when absent) and the calls on them. Cmd is
// the only thing that starts one.
type process struct {
	ref    *handleRef
	pid    int
	stdin  *streamRef
	stdout *streamRef
	stderr *streamRef
}

// startProcess sends exec.start for p on sandbox s. The sandbox handle
// stays open while the process's handles are (they are its children).
func (s *Sandbox) startProcess(ctx context.Context, p *wire.ExecStartParams) (*process, error) {
	if len(p.Argv) == 0 || p.Argv[0] == "" {
		return nil, &Error{Op: "exec.start", Code: CodeInvalidArgument, Message: "no program given"}
	}
	var r wire.ExecStarted
	err := s.ref.use("exec.start", func(h uint64) error {
		p.Sandbox = h
		return callMethod(ctx, "exec.start", wire.ExecStart, p, &r)
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
	var r wire.ExecExit
	err := p.ref.use("exec.wait", func(h uint64) error {
		return callMethod(ctx, "exec.wait", wire.ExecWait, &wire.ExecParams{Exec: h}, &r)
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
		return callMethod(context.Background(), "exec.signal", wire.ExecSignal,
			&wire.ExecSignalParams{Exec: h, Signal: int(sig)}, nil)
	})
}

func (p *process) kill() { _ = p.signal(syscall.SIGKILL) }

func (p *process) resize(rows, cols uint16) error {
	return p.ref.use("exec.resize", func(h uint64) error {
		return callMethod(context.Background(), "exec.resize", wire.ExecResize,
			&wire.ExecResizeParams{Exec: h, Rows: rows, Cols: cols}, nil)
	})
}

func (p *process) close() {
	_ = p.stdin.close()
	_ = p.stdout.close()
	_ = p.stderr.close()
	_ = p.ref.close("exec.close")
}

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
