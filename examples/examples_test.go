package examples

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// Each example, and what its output must show. The patterns check what the
// example claims to demonstrate (the right output, exit codes, the limit
// hit, the data still there), never how long anything took.
var examples = []struct {
	name string
	runs [][]string // argument lists, one process each, in order; nil: one run, no arguments
	want []string   // regular expressions, each must match the runs' stdout
}{
	{"quickstart", nil, []string{
		`(?m)^exit code: 0$`,
		`(?m)^stdout: hello from a sandbox$`,
		`(?m)^script said: running as 0 on \S+$`,
		`(?m)^script exit code: 3$`,
	}},
	{"streaming", nil, []string{
		`(?m)^tick 1$`, `(?m)^tick 5$`, `(?m)^done$`,
		`(?m)^output arrived in ([2-9]|\d\d+) separate writes$`,
	}},
	{"cmd-stdin", nil, []string{
		`(?m)^tr said: UNTRUSTED INPUT, SHOUTED BACK$`,
		`(?m)^wc counted 3 lines$`,
		`(?m)^the command failed with exit code 3$`,
	}},
	{"files", nil, []string{
		`(?m)^sorted in the sandbox:\nalice\nbob\ncarol$`,
		`(?m)^copied back a\.size: 6$`,
		`(?m)^copied back b\.size: 7$`,
	}},
	{"volume", nil, []string{
		`(?m)^the reader sees: written by \S+$`,
		`(?m)^a write from the read-only side exits with [1-9]\d*$`,
		`(?m)^a later sandbox still sees: written by \S+$`,
	}},
	{"memory-limit", nil, []string{
		`(?m)^memory limit enforced: true$`,
		`(?m)^the allocation was stopped: `,
		`(?m)^afterwards the sandbox says: still alive$`,
	}},
	{"detach", [][]string{{"create"}, {"attach"}}, []string{
		`(?m)^created example-detached; this process now exits and leaves it running$`,
		`(?m)^reattached to example-detached from another process, it still has: remembered$`,
		`(?m)^after Remove, GetSandbox reports not found: true$`,
	}},
	{"fanout", nil, []string{
		`(?m)^task-00 0$`, `(?m)^task-07 49$`, `(?m)^task-19 361$`,
		`(?m)^20 sandboxes answered$`,
	}},
}

// TestExamples builds every example and runs it as a user would: a fresh
// process, the engine from EnsureInstalled (LOCKBOX_RELEASE_URL, which
// `make test-examples` points at a release served on 127.0.0.1), state in
// a temporary LOCKBOX_HOME.
func TestExamples(t *testing.T) {
	if os.Getenv("LOCKBOX_RELEASE_URL") == "" && os.Getenv("LOCKBOX_HOME") == "" {
		msg := "no engine to install: set LOCKBOX_RELEASE_URL (make test-examples does), " +
			"or LOCKBOX_HOME to a tree with the engine installed"
		if os.Getenv("LOCKBOX_EXAMPLES_REQUIRED") != "" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	bin := t.TempDir()
	build := exec.Command("go", "build", "-o", bin+string(filepath.Separator), "./...")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build ./...: %v\n%s", err, out)
	}
	home := os.Getenv("LOCKBOX_HOME")
	if home == "" {
		home = t.TempDir()
	}

	seen := map[string]bool{}
	for _, ex := range examples {
		seen[ex.name] = true
		t.Run(ex.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
			defer cancel()
			runs := ex.runs
			if runs == nil {
				runs = [][]string{nil}
			}
			var stdout, stderr bytes.Buffer
			for _, args := range runs {
				cmd := exec.CommandContext(ctx, filepath.Join(bin, ex.name), args...)
				cmd.Env = append(os.Environ(), "LOCKBOX_HOME="+home)
				cmd.Stdout, cmd.Stderr = &stdout, &stderr
				if err := cmd.Run(); err != nil {
					t.Fatalf("%s %s: %v\nstdout:\n%s\nstderr:\n%s", ex.name, strings.Join(args, " "),
						err, stdout.String(), stderr.String())
				}
			}
			for _, w := range ex.want {
				if !regexp.MustCompile(w).Match(stdout.Bytes()) {
					t.Errorf("%s: output does not match %q\nstdout:\n%s\nstderr:\n%s",
						ex.name, w, stdout.String(), stderr.String())
				}
			}
		})
	}

	// An example added without a test would rot unseen.
	dirs, err := os.ReadDir(".")
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range dirs {
		if d.IsDir() && !strings.HasPrefix(d.Name(), ".") && !seen[d.Name()] {
			if _, err := os.Stat(filepath.Join(d.Name(), "main.go")); err == nil {
				t.Errorf("example %s has no entry in examples_test.go", d.Name())
			}
		}
	}
}
