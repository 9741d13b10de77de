// Command lockbox is the Lockbox side of bench/compare.py: it times
// sandbox operations through the public Go API and prints one JSON line
// per run.
//
// The harness starts it once per case with -stdin and sends one newline per
// run, so that Lockbox runs interleave with the peer tools' runs. Without
// -stdin it does -n runs back to back. Its first line says whether it is
// ready ({"ready":true,...}) or why not ({"ready":false,"error":...}).
//
// Cases:
//
//	echo    create a sandbox, run `echo hi`, remove it; timed to the first
//	        output byte (first_ns) and to the end of Remove (done_ns)
//	python  the same with `python3 -c 'print(6*7)'`
//	exec    Exec(`echo hi`) on one running sandbox; timed to Exec's return
package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"time"

	"lockbox.dev/lockbox"
)

// runLine is what the harness reads for one run.
type runLine struct {
	Run int  `json:"run"`
	OK  bool `json:"ok"`
	// CreateNs is when CreateSandbox returned (cold cases): where the time
	// to first output goes.
	CreateNs int64  `json:"create_ns,omitempty"`
	FirstNs  int64  `json:"first_ns,omitempty"`
	DoneNs   int64  `json:"done_ns,omitempty"`
	Error    string `json:"error,omitempty"`
}

type readyLine struct {
	Ready   bool   `json:"ready"`
	Version string `json:"version,omitempty"` // library version, commit, profile, path
	Error   string `json:"error,omitempty"`
	// What the engine reports it enforces on this machine, so that the
	// comparison describes Lockbox's isolation from facts, not claims.
	Enforced    []string              `json:"enforced,omitempty"`
	NotEnforced []lockbox.NotEnforced `json:"not_enforced,omitempty"`
}

// command is one case's guest command and the output it must print.
type command struct {
	args   []string
	expect string
}

var commands = map[string]command{
	"echo":   {[]string{"echo", "hi"}, "hi\n"},
	"exec":   {[]string{"echo", "hi"}, "hi\n"},
	"python": {[]string{"python3", "-c", "print(6*7)"}, "42\n"},
}

func main() {
	caseName := flag.String("case", "echo", "echo, exec or python")
	rootfs := flag.String("rootfs", "", "root filesystem directory (WithRootfs)")
	image := flag.String("image", "base", "image name, used when -rootfs is empty")
	n := flag.Int("n", 200, "number of runs when not driven through stdin")
	stepped := flag.Bool("stdin", false, "do one run per line read on stdin")
	flag.Parse()

	out := json.NewEncoder(os.Stdout)
	cmd, ok := commands[*caseName]
	if !ok {
		_ = out.Encode(readyLine{Error: fmt.Sprintf("unknown case %q", *caseName)})
		os.Exit(2)
	}
	var opts []lockbox.Option
	if *rootfs != "" {
		dir, err := filepath.Abs(*rootfs) // the engine wants absolute paths
		if err != nil {
			_ = out.Encode(readyLine{Error: err.Error()})
			os.Exit(2)
		}
		opts = append(opts, lockbox.WithRootfs(dir))
	} else {
		opts = append(opts, lockbox.WithImage(*image))
	}

	ctx := context.Background()
	b := &bench{opts: opts, cmd: cmd}
	run := b.cold
	if *caseName == "exec" {
		run = b.warm
	}
	// One untimed run proves the library loads and the case works, so that
	// the harness can report "not available" with the reason instead of
	// a column of failures.
	if err := b.prepare(ctx, *caseName == "exec"); err != nil {
		_ = out.Encode(readyLine{Error: err.Error()})
		os.Exit(1)
	}
	defer b.close(ctx)
	if _, err := run(ctx); err != nil {
		_ = out.Encode(readyLine{Error: err.Error()})
		b.close(ctx)
		os.Exit(1)
	}
	ready := readyLine{Ready: true, Version: lockbox.Version}
	if v, err := lockbox.LibraryVersion(ctx); err == nil {
		ready.Version = fmt.Sprintf("%s (commit %s, %s build, %s)", v.Version, v.GitCommit, v.Profile, v.Path)
	}
	if info, err := b.describe(ctx); err == nil {
		ready.Enforced, ready.NotEnforced = info.Enforced, info.NotEnforced
	}
	_ = out.Encode(ready)

	left := *n
	next := func() bool { left--; return left >= 0 }
	if *stepped {
		in := bufio.NewReader(os.Stdin)
		next = func() bool { _, err := in.ReadString('\n'); return err == nil }
	}
	for i := 1; next(); i++ {
		t, err := run(ctx)
		line := runLine{Run: i, OK: err == nil, CreateNs: t.created.Nanoseconds(),
			FirstNs: t.first.Nanoseconds(), DoneNs: t.done.Nanoseconds()}
		if err != nil {
			line.Error = err.Error()
		}
		if err := out.Encode(line); err != nil {
			return // the harness went away
		}
	}
}

type bench struct {
	opts    []lockbox.Option
	cmd     command
	running *lockbox.Sandbox // the sandbox of the exec case
}

// prepare creates the long-lived sandbox of the exec case.
func (b *bench) prepare(ctx context.Context, warm bool) error {
	if !warm {
		return nil
	}
	sb, err := lockbox.CreateSandbox(ctx, b.opts...)
	if err != nil {
		return fmt.Errorf("create sandbox: %w", err)
	}
	b.running = sb
	return nil
}

// describe reports what a sandbox made with the case's options enforces.
func (b *bench) describe(ctx context.Context) (*lockbox.SandboxInfo, error) {
	sb := b.running
	if sb == nil {
		var err error
		if sb, err = lockbox.CreateSandbox(ctx, b.opts...); err != nil {
			return nil, err
		}
		defer sb.Remove(ctx)
	}
	return sb.Info(ctx)
}

func (b *bench) close(ctx context.Context) {
	if b.running != nil {
		_ = b.running.Remove(ctx)
		b.running = nil
	}
}

// timings are offsets from the start of one run.
type timings struct {
	created, first, done time.Duration
}

// cold creates a sandbox, runs the command and removes the sandbox.
func (b *bench) cold(ctx context.Context) (timings, error) {
	start := time.Now()
	sb, err := lockbox.CreateSandbox(ctx, b.opts...)
	if err != nil {
		return timings{}, fmt.Errorf("create sandbox: %w", err)
	}
	created := time.Since(start)
	stdout := &firstByteClock{start: start}
	var stderr bytes.Buffer
	c := sb.CommandContext(ctx, b.cmd.args[0], b.cmd.args[1:]...)
	c.Stdout, c.Stderr = stdout, &stderr
	runErr := c.Run()
	rmErr := sb.Remove(ctx)
	done := time.Since(start)
	if err := errors.Join(runErr, rmErr); err != nil {
		return timings{}, fmt.Errorf("%w (stderr %q)", err, stderr.String())
	}
	first, got := stdout.result()
	if got != b.cmd.expect {
		return timings{}, fmt.Errorf("stdout %q, want %q (stderr %q)", got, b.cmd.expect, stderr.String())
	}
	return timings{created, first, done}, nil
}

// warm runs the command in the sandbox made by prepare.
func (b *bench) warm(ctx context.Context) (timings, error) {
	start := time.Now()
	res, err := b.running.Exec(ctx, b.cmd.args[0], b.cmd.args[1:]...)
	done := time.Since(start)
	if err != nil {
		return timings{}, err
	}
	if res.ExitCode != 0 || string(res.Stdout) != b.cmd.expect {
		return timings{}, fmt.Errorf("exit %d, stdout %q, stderr %q", res.ExitCode, res.Stdout, res.Stderr)
	}
	// Exec returns the whole result at once: its first byte and its end
	// reach the caller at the same moment.
	return timings{first: done, done: done}, nil
}

// firstByteClock is a stdout sink that remembers when the first byte came.
// Cmd may call Write from its own goroutine, hence the mutex.
type firstByteClock struct {
	start time.Time
	mu    sync.Mutex
	first time.Duration
	buf   bytes.Buffer
}

var _ io.Writer = (*firstByteClock)(nil)

func (w *firstByteClock) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.buf.Len() == 0 && len(p) > 0 {
		w.first = time.Since(w.start)
	}
	return w.buf.Write(p)
}

func (w *firstByteClock) result() (time.Duration, string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.first, w.buf.String()
}
