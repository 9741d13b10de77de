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
		`(?m)^\[stdout\] compiling$`, `(?m)^\[stderr\] warning: unused variable$`,
		`(?m)^\[stdout\] linked$`, `(?m)^\[exit\] code 2$`,
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
	{"branching", nil, []string{
		`(?m)^fix "answer=40": test exit 1$`, `(?m)^fix "answer=42": test exit 0$`,
		`(?m)^the parent still has: answer=41$`, `(?m)^winning fix: answer=42$`,
		`(?m)^a sandbox from the snapshot has: answer=42$`,
		`(?m)^exec while paused fails at once: true$`, `(?m)^after resume: running$`,
		`(?m)^pooled sandbox 2 says: ready$`,
	}},
}

// Examples run again as an unprivileged user (uid 65534) when the tests run
// as root: Lockbox must work rootless, reporting what it cannot enforce.
var rootless = []struct {
	name string
	want []string
}{
	{"quickstart", []string{`(?m)^stdout: hello from a sandbox$`, `(?m)^script exit code: 3$`}},
	{"files", []string{`(?m)^copied back b\.size: 7$`}},
	{"memory-limit", []string{
		// Without cgroup delegation the limit cannot be enforced: then the
		// example must say so, with the engine's reason.
		`(?s)memory limit enforced: true\n.*the allocation was stopped: |` +
			`memory limit enforced: false\n.*not enforced: memory \(`,
		`(?m)^afterwards the sandbox says: still alive$`,
	}},
	{"fanout", []string{`(?m)^20 sandboxes answered$`}},
}

const nobody = 65534

// needEngine skips (or, under make, fails) when no engine can be installed.
func needEngine(t *testing.T) {
	if os.Getenv("LOCKBOX_RELEASE_URL") == "" && os.Getenv("LOCKBOX_HOME") == "" {
		msg := "no engine to install: set LOCKBOX_RELEASE_URL (make test-examples does), " +
			"or LOCKBOX_HOME to a tree with the engine installed"
		if os.Getenv("LOCKBOX_EXAMPLES_REQUIRED") != "" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
}

// buildExamples builds every example into a directory anyone can read, so
// that the rootless run can execute them too.
func buildExamples(t *testing.T) string {
	bin, err := os.MkdirTemp("", "lockbox-examples-bin-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(bin) })
	if err := os.Chmod(bin, 0o755); err != nil {
		t.Fatal(err)
	}
	args := []string{"build", "-o", bin + string(filepath.Separator)}
	// make test-examples serves a release signed with this machine's
	// development key: the examples are linked to trust its pin (see
	// devPin in go/manifest_trust.go), as a user's build trusts the
	// committed one.
	if pin := os.Getenv("LOCKBOX_DEV_PIN"); pin != "" {
		args = append(args, "-ldflags", "-X lockbox.dev/lockbox.devPin="+pin)
	}
	build := exec.Command("go", append(args, "./...")...)
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build ./...: %v\n%s", err, out)
	}
	return bin
}

// runExample runs one example's processes in order (prefix: e.g. setpriv
// to drop privileges) and checks their combined stdout against want.
func runExample(t *testing.T, prefix []string, bin, name string, runs [][]string, env, want []string) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if runs == nil {
		runs = [][]string{nil}
	}
	var stdout, stderr bytes.Buffer
	for _, args := range runs {
		argv := append(append(append([]string{}, prefix...), filepath.Join(bin, name)), args...)
		cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
		cmd.Env = append(os.Environ(), env...)
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		if err := cmd.Run(); err != nil {
			t.Fatalf("%s: %v\nstdout:\n%s\nstderr:\n%s", strings.Join(argv, " "),
				err, stdout.String(), stderr.String())
		}
	}
	for _, w := range want {
		if !regexp.MustCompile(w).Match(stdout.Bytes()) {
			t.Errorf("%s: output does not match %q\nstdout:\n%s\nstderr:\n%s",
				name, w, stdout.String(), stderr.String())
		}
	}
}

// TestExamples builds every example and runs it as a user would: a fresh
// process, the engine from EnsureInstalled (LOCKBOX_RELEASE_URL, which
// `make test-examples` points at a release served on 127.0.0.1), state in
// a temporary LOCKBOX_HOME.
func TestExamples(t *testing.T) {
	needEngine(t)
	bin := buildExamples(t)
	home := os.Getenv("LOCKBOX_HOME")
	if home == "" {
		home = t.TempDir()
	}
	seen := map[string]bool{}
	for _, ex := range examples {
		seen[ex.name] = true
		t.Run(ex.name, func(t *testing.T) {
			runExample(t, nil, bin, ex.name, ex.runs, []string{"LOCKBOX_HOME=" + home}, ex.want)
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

// TestExamplesRootless runs some examples as uid 65534, installing the
// engine into that user's own LOCKBOX_HOME.
func TestExamplesRootless(t *testing.T) {
	needEngine(t)
	if os.Geteuid() != 0 {
		t.Skip("already unprivileged: TestExamples is the rootless run")
	}
	setpriv, err := exec.LookPath("setpriv")
	if err != nil {
		t.Skip("setpriv (util-linux) not found: cannot drop to an unprivileged user")
	}
	bin := buildExamples(t)
	home, err := os.MkdirTemp("", "lockbox-examples-nobody-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(home) })
	if err := os.Chown(home, nobody, nobody); err != nil {
		t.Fatal(err)
	}
	prefix := []string{setpriv, "--reuid=65534", "--regid=65534", "--clear-groups"}
	env := []string{"LOCKBOX_HOME=" + home, "HOME=" + home, "XDG_DATA_HOME=", "XDG_CACHE_HOME="}
	for _, ex := range rootless {
		t.Run(ex.name, func(t *testing.T) {
			runExample(t, prefix, bin, ex.name, nil, env, ex.want)
		})
	}
}
