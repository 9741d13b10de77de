package lockbox

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"
)

// seqOutput is what `seq 1 n` prints.
func seqOutput(n int) []byte {
	var b bytes.Buffer
	for i := 1; i <= n; i++ {
		fmt.Fprintf(&b, "%d\n", i)
	}
	return b.Bytes()
}

// filePattern is content no prefix or shifted copy of which matches.
func filePattern(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7 + i/251)
	}
	return b
}

// gcHard runs the collector and finalizers several times: a *Sandbox
// that nothing keeps alive is closed (and, not detached, removed) by now.
func gcHard() {
	for range 5 {
		runtime.GC()
		time.Sleep(60 * time.Millisecond)
	}
}

// sandboxListed reports whether ListSandboxes shows name.
func sandboxListed(t *testing.T, name string) bool {
	t.Helper()
	list, err := ListSandboxes(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range list {
		if s.Name == name {
			return true
		}
	}
	return false
}

// derivedUse starts something derived from a fresh non-detached sandbox
// and returns only a function that finishes using it: nothing returned
// refers to the *Sandbox itself.
type derivedUse func(t *testing.T, ctx context.Context, name string) func() error

var derivedKinds = map[string]derivedUse{
	// Output comes after the collections: the process is alive (and its
	// sandbox must be) all through them.
	"ExecStream": func(t *testing.T, ctx context.Context, name string) func() error {
		sb, err := CreateSandbox(ctx, WithName(name), WithReplace())
		if err != nil {
			t.Fatal(err)
		}
		es, err := sb.ExecStream(ctx, []string{"sh", "-c", "sleep 1.5; seq 1 200000; exit 7"})
		if err != nil {
			t.Fatal(err)
		}
		return func() error {
			var out []byte
			var last ExecEvent
			for ev := range es.Events() {
				if ev.Kind == EventStdout {
					out = append(out, ev.Data...)
				}
				last = ev
			}
			if last.Kind != EventExit || last.Err != nil || last.Exit.ExitCode != 7 {
				return fmt.Errorf("exit event %+v", last)
			}
			if !bytes.Equal(out, seqOutput(200000)) {
				return fmt.Errorf("stdout: %d bytes, want %d", len(out), len(seqOutput(200000)))
			}
			return nil
		}
	},
	"Cmd": func(t *testing.T, ctx context.Context, name string) func() error {
		sb, err := CreateSandbox(ctx, WithName(name), WithReplace())
		if err != nil {
			t.Fatal(err)
		}
		cmd := sb.CommandContext(ctx, "sh", "-c", "sleep 1.5; seq 1 200000; exit 3")
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		return func() error {
			b, err := io.ReadAll(out)
			if err != nil {
				return fmt.Errorf("stdout pipe: %w", err)
			}
			if !bytes.Equal(b, seqOutput(200000)) {
				return fmt.Errorf("stdout: %d bytes, want %d", len(b), len(seqOutput(200000)))
			}
			var ee *ExitError
			if err := cmd.Wait(); !errors.As(err, &ee) || ee.ExitCode() != 3 {
				return fmt.Errorf("Wait: %v", err)
			}
			return nil
		}
	},
	"FS.Open": func(t *testing.T, ctx context.Context, name string) func() error {
		sb, err := CreateSandbox(ctx, WithName(name), WithReplace())
		if err != nil {
			t.Fatal(err)
		}
		want := filePattern(8 << 20)
		if err := sb.FS().WriteFile(ctx, "/tmp/f", want, 0o644); err != nil {
			t.Fatal(err)
		}
		r, err := sb.FS().Open(ctx, "/tmp/f")
		if err != nil {
			t.Fatal(err)
		}
		return func() error {
			defer r.Close()
			got, err := io.ReadAll(r)
			if err != nil {
				return fmt.Errorf("read: %w", err)
			}
			if !bytes.Equal(got, want) {
				return fmt.Errorf("read %d bytes, want %d (equal prefix: %v)", len(got), len(want), bytes.HasPrefix(want, got))
			}
			return nil
		}
	},
	// The file lands in a host directory bound as a volume: checking it
	// needs no second handle on the sandbox.
	"FS.Create": func(t *testing.T, ctx context.Context, name string) func() error {
		dir := t.TempDir()
		// Written by the sandbox's root, which is not the host user.
		if err := os.Chmod(dir, 0o777); err != nil {
			t.Fatal(err)
		}
		sb, err := CreateSandbox(ctx, WithName(name), WithReplace(), WithVolume(dir, "/data", false))
		if err != nil {
			t.Fatal(err)
		}
		w, err := sb.FS().Create(ctx, "/data/f")
		if err != nil {
			t.Fatal(err)
		}
		return func() error {
			want := filePattern(8 << 20)
			if _, err := w.Write(want); err != nil {
				return fmt.Errorf("write: %w", err)
			}
			if err := w.Close(); err != nil {
				return fmt.Errorf("close: %w", err)
			}
			got, err := os.ReadFile(filepath.Join(dir, "f"))
			if err != nil || !bytes.Equal(got, want) {
				return fmt.Errorf("host copy: %d bytes, want %d, %v", len(got), len(want), err)
			}
			return nil
		}
	},
}

// A *Sandbox dropped while something made from it is still in use is not
// closed by its finalizer: every byte and the exit arrive after the
// collections. The control: once the derived object is dropped too, the
// finalizer does close the sandbox (it leaves ListSandboxes), so the test
// would see a sandbox closed under live work.
func TestReliabilityDerivedObjectsKeepSandboxAlive(t *testing.T) {
	for kind, start := range derivedKinds {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			name := "keepalive-" + strings.ToLower(strings.ReplaceAll(kind, ".", "-"))
			t.Cleanup(func() { _ = RemoveSandbox(context.Background(), name) })
			use := start(t, ctx, name)
			gcHard()
			if !sandboxListed(t, name) {
				t.Fatalf("%s: sandbox removed while the derived object was in use", kind)
			}
			if err := use(); err != nil {
				t.Fatalf("%s after GC: %v", kind, err)
			}
			use = nil
			deadline := time.Now().Add(20 * time.Second)
			for sandboxListed(t, name) {
				if time.Now().After(deadline) {
					t.Fatalf("%s: control failed: the dropped sandbox was never finalized", kind)
				}
				gcHard()
			}
		})
	}
}

// The control on its own: a sandbox whose only derived object (an open
// file stream) was dropped unused is finalized, closed and removed, by
// the collector.
func TestReliabilityDroppedSandboxIsFinalized(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	const name = "keepalive-dropped"
	t.Cleanup(func() { _ = RemoveSandbox(context.Background(), name) })
	_ = derivedKinds["FS.Open"](t, ctx, name)
	if !sandboxListed(t, name) {
		t.Fatal("sandbox not listed after create")
	}
	deadline := time.Now().Add(20 * time.Second)
	for sandboxListed(t, name) {
		if time.Now().After(deadline) {
			t.Fatal("dropped sandbox never finalized")
		}
		gcHard()
	}
}
