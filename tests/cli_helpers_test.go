package tests

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// cliBin is the lockbox CLI: LOCKBOX_CLI when make built it, else built
// once per test binary from ../go.
var cliBin struct {
	once sync.Once
	path string
	err  error
}

func lockboxCLI(t *testing.T) string {
	t.Helper()
	needEngine(t)
	cliBin.once.Do(func() {
		if p := os.Getenv("LOCKBOX_CLI"); p != "" {
			cliBin.path = p
			_, cliBin.err = os.Stat(p)
			return
		}
		dir, err := os.MkdirTemp("", "lockbox-cli-")
		if err != nil {
			cliBin.err = err
			return
		}
		cliBin.path = filepath.Join(dir, "lockbox")
		cmd := exec.Command("go", "build", "-o", cliBin.path, "./cmd/lockbox")
		cmd.Dir = "../go"
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			cliBin.err = fmt.Errorf("%v: %s", err, out)
		}
	})
	if cliBin.err != nil {
		t.Fatalf("lockbox CLI: %v", cliBin.err)
	}
	return cliBin.path
}

// cliResult is one run of the CLI.
type cliResult struct {
	stdout, stderr string
	code           int
}

func (r cliResult) String() string {
	return fmt.Sprintf("exit %d\nstdout: %q\nstderr: %q", r.code, r.stdout, r.stderr)
}

// runCLI runs the CLI with this process's environment (LOCKBOX_LIB,
// LOCKBOX_HOME, ...) plus extraEnv, and stdin as given.
func runCLI(t *testing.T, stdin string, extraEnv []string, args ...string) cliResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, lockboxCLI(t), args...)
	cmd.Env = append(os.Environ(), extraEnv...)
	cmd.Stdin = strings.NewReader(stdin)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	r := cliResult{stdout: out.String(), stderr: errb.String(), code: cmd.ProcessState.ExitCode()}
	if err != nil && cmd.ProcessState == nil {
		t.Fatalf("lockbox %v: %v", args, err)
	}
	if ctx.Err() != nil {
		t.Fatalf("lockbox %v timed out: %v", args, r)
	}
	return r
}

// cli runs the CLI and fails the test unless it exits with want.
func cli(t *testing.T, want int, args ...string) cliResult {
	t.Helper()
	r := runCLI(t, "", nil, args...)
	if r.code != want {
		t.Fatalf("lockbox %s: want exit %d, got %v", strings.Join(args, " "), want, r)
	}
	return r
}
