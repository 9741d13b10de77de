package tests

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"lockbox.dev/lockbox"
)

// The sandbox tests load the engine named by LOCKBOX_LIB (make test-escape
// sets it, with LOCKBOX_HOME pointing at a scratch state dir).
func needEngine(t *testing.T) {
	t.Helper()
	if os.Getenv("LOCKBOX_LIB") == "" {
		t.Skip("LOCKBOX_LIB is not set: run `make test-escape`")
	}
}

// probeBuild is one static probe program, built once per test binary.
type probeBuild struct {
	once sync.Once
	dir  string
	err  error
}

var probes sync.Map // program name -> *probeBuild

// staticProbe builds ./cmd/<name> (static, so it runs in any image) once
// into a directory of its own, or finds it prebuilt in
// LOCKBOX_ESCAPE_PROBE_DIR (the rootless run has no Go toolchain cache),
// and returns that directory.
func staticProbe(t *testing.T, name string) string {
	t.Helper()
	v, _ := probes.LoadOrStore(name, &probeBuild{})
	b := v.(*probeBuild)
	b.once.Do(func() {
		if d := os.Getenv("LOCKBOX_ESCAPE_PROBE_DIR"); d != "" {
			b.dir = d
			_, b.err = os.Stat(filepath.Join(d, name))
			return
		}
		b.dir, b.err = os.MkdirTemp("", "lockbox-"+name+"-")
		if b.err != nil {
			return
		}
		os.Chmod(b.dir, 0o755)
		cmd := exec.Command("go", "build", "-o", filepath.Join(b.dir, name), "./cmd/"+name)
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			b.err = fmt.Errorf("%v: %s", err, out)
		}
	})
	if b.err != nil {
		t.Fatalf("build %s: %v", name, b.err)
	}
	return b.dir
}

// escapeProbe is the directory holding cmd/escapeprobe, which the
// sandboxes mount read-only at /probe.
func escapeProbe(t *testing.T) string { return staticProbe(t, "escapeprobe") }

// hostMarker makes a host directory with a secret file in it and returns
// the dir, the file, and a check that both are exactly as made.
func hostMarker(t *testing.T) (dir, file string, unchanged func()) {
	t.Helper()
	dir, err := os.MkdirTemp("", "lockbox-marker-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	file = filepath.Join(dir, "marker.txt")
	const secret = "host-secret\n"
	if err := os.WriteFile(file, []byte(secret), 0o644); err != nil {
		t.Fatal(err)
	}
	unchanged = func() {
		t.Helper()
		b, err := os.ReadFile(file)
		if err != nil || string(b) != secret {
			t.Fatalf("HOST CHANGED: marker now %q (%v)", b, err)
		}
		ents, _ := os.ReadDir(dir)
		if len(ents) != 1 {
			var names []string
			for _, e := range ents {
				names = append(names, e.Name())
			}
			t.Fatalf("HOST CHANGED: marker dir now holds %v", names)
		}
	}
	return dir, file, unchanged
}

func newSandbox(t *testing.T, opts ...lockbox.Option) *lockbox.Sandbox {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	opts = append([]lockbox.Option{lockbox.WithVolume(escapeProbe(t), "/probe", true)}, opts...)
	sb, err := lockbox.CreateSandbox(ctx, opts...)
	if err != nil {
		t.Fatalf("CreateSandbox: %v", err)
	}
	t.Cleanup(func() { _ = sb.Remove(context.Background()) })
	return sb
}

// probe runs escapeprobe inside sb and returns its one line of output.
func probe(t *testing.T, sb *lockbox.Sandbox, args ...string) (string, *lockbox.ExecResult) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	res, err := sb.ExecArgs(ctx, append([]string{"/probe/escapeprobe"}, args...))
	if err != nil {
		t.Fatalf("probe %v: %v", args, err)
	}
	line := strings.TrimSpace(string(res.Stdout))
	t.Logf("probe %v -> %q (exit %d) %s", args, line, res.ExitCode, strings.TrimSpace(string(res.Stderr)))
	return line, res
}

// mustBlock asserts the probe reported BLOCKED.
func mustBlock(t *testing.T, sb *lockbox.Sandbox, args ...string) string {
	t.Helper()
	line, res := probe(t, sb, args...)
	if !strings.HasPrefix(line, "BLOCKED") || res.ExitCode != 0 {
		t.Fatalf("ESCAPE: probe %v: %q (exit %d)", args, line, res.ExitCode)
	}
	return line
}

func hasFeature(list []lockbox.NotEnforced, f string) (string, bool) {
	for _, n := range list {
		if n.Feature == f {
			return n.Reason, true
		}
	}
	return "", false
}
