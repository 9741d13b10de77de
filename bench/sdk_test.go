// Package bench measures what the Go SDK itself costs, through the public
// API only: a call that does nothing but cross into the engine and back, an
// Exec of `true` on a running sandbox, and a 1 MiB file written and read
// back through FS(). Run with `make bench-sdk` (allocations per op shown).
package bench

import (
	"bytes"
	"context"
	"errors"
	"os"
	"testing"

	"lockbox.dev/lockbox"
)

// loadOrSkip skips when the engine library cannot be loaded at all (no
// LOCKBOX_LIB, nothing installed): there is nothing to measure then. Any
// other error is a failure.
func loadOrSkip(b *testing.B) {
	b.Helper()
	if err := lockbox.Load(); err != nil {
		if errors.Is(err, lockbox.ErrLibraryNotLoaded) {
			b.Skipf("engine library not loadable (set LOCKBOX_LIB or install it): %v", err)
		}
		b.Fatal(err)
	}
}

// sandbox starts one sandbox for a benchmark and removes it afterwards.
func sandbox(b *testing.B) *lockbox.Sandbox {
	b.Helper()
	loadOrSkip(b)
	ctx := context.Background()
	opt := lockbox.WithImage("base")
	if dir := os.Getenv("LOCKBOX_BENCH_ROOTFS"); dir != "" {
		opt = lockbox.WithRootfs(dir)
	}
	sb, err := lockbox.CreateSandbox(ctx, opt)
	if err != nil {
		b.Fatalf("create sandbox: %v", err)
	}
	b.Cleanup(func() { _ = sb.Remove(context.Background()) })
	return sb
}

// BenchmarkNoopCall is the floor of every API call: JSON request, C ABI
// crossing, JSON response, no sandbox involved.
func BenchmarkNoopCall(b *testing.B) {
	loadOrSkip(b)
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := lockbox.LibraryVersion(ctx); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkExecTrue is an exec round trip on a running sandbox: request to
// the agent, process start and exit inside, result back.
func BenchmarkExecTrue(b *testing.B) {
	sb := sandbox(b)
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		res, err := sb.Exec(ctx, "true")
		if err != nil {
			b.Fatal(err)
		}
		if res.ExitCode != 0 {
			b.Fatalf("true exited %d", res.ExitCode)
		}
	}
}

// BenchmarkStatRoundTrip is an agent round trip that starts no process:
// the floor under BenchmarkExecTrue (what remains is the process itself).
func BenchmarkStatRoundTrip(b *testing.B) {
	sb := sandbox(b)
	ctx := context.Background()
	fs := sb.FS()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := fs.Stat(ctx, "/"); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkFSWriteRead1MiB writes 1 MiB into the sandbox and reads it back.
func BenchmarkFSWriteRead1MiB(b *testing.B) {
	sb := sandbox(b)
	ctx := context.Background()
	data := bytes.Repeat([]byte("lockbox!"), (1<<20)/8)
	fs := sb.FS()
	b.SetBytes(2 << 20) // counted both ways
	b.ReportAllocs()
	for b.Loop() {
		if err := fs.WriteFile(ctx, "/tmp/bench.bin", data, 0o644); err != nil {
			b.Fatal(err)
		}
		got, err := fs.ReadFile(ctx, "/tmp/bench.bin")
		if err != nil {
			b.Fatal(err)
		}
		if len(got) != len(data) {
			b.Fatalf("read %d bytes, wrote %d", len(got), len(data))
		}
	}
}
