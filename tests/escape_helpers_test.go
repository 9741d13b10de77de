package tests

import (
	"context"
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

var (
	probeOnce sync.Once
	probeDir  string
	probeErr  error
)

// escapeProbe builds cmd/escapeprobe (static) into a directory that the
// sandboxes mount read-only at /probe.
func escapeProbe(t *testing.T) string {
	t.Helper()
	probeOnce.Do(func() {
		// A prebuilt probe (the rootless run has no Go toolchain cache).
		if d := os.Getenv("LOCKBOX_ESCAPE_PROBE_DIR"); d != "" {
			probeDir = d
			return
		}
		probeDir, probeErr = os.MkdirTemp("", "lockbox-probe-")
		if probeErr != nil {
			return
		}
		os.Chmod(probeDir, 0o755)
		cmd := exec.Command("go", "build", "-o", filepath.Join(probeDir, "escapeprobe"), "./cmd/escapeprobe")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		out, err := cmd.CombinedOutput()
		if err != nil {
			probeErr = err
			probeDir = string(out)
		}
	})
	if probeErr != nil {
		t.Fatalf("build escapeprobe: %v\n%s", probeErr, probeDir)
	}
	return probeDir
}

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
