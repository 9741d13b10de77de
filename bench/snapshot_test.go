package bench

import (
	"context"
	"fmt"
	"os"
	"slices"
	"testing"
	"time"

	"lockbox.dev/lockbox"
)

// Issue 13's figures through the public API: Pool.Get, fork of a sandbox
// that wrote 100 MiB, snapshot of 100 MiB of changes plus a create from
// it, and resume after pause. Each reports its median as p50-ms (a
// benchmark's ns/op is a mean). They need a store image ("base", found
// through LOCKBOX_IMAGES); without one they skip.

func storeSandbox(b *testing.B) *lockbox.Sandbox {
	b.Helper()
	loadOrSkip(b)
	sb, err := lockbox.CreateSandbox(context.Background(), lockbox.WithImage("base"))
	if err != nil {
		b.Skipf("no base image in the store (set LOCKBOX_IMAGES): %v", err)
	}
	b.Cleanup(func() { _ = sb.Remove(context.Background()) })
	return sb
}

func reportP50(b *testing.B, d []time.Duration) {
	if len(d) == 0 {
		return
	}
	slices.Sort(d)
	b.ReportMetric(float64(d[len(d)/2].Microseconds())/1000, "p50-ms")
	b.ReportMetric(0, "ns/op")
}

func wrote100MiB(b *testing.B, sb *lockbox.Sandbox) {
	b.Helper()
	res, err := sb.Shell(context.Background(), "mkdir -p /data && head -c 104857600 /dev/urandom > /data/blob")
	if err != nil || res.ExitCode != 0 {
		b.Fatalf("write 100 MiB: %v %s", err, res.Stderr)
	}
}

// BenchmarkPoolGet: Get from a pool kept full (each sandbox taken is
// removed outside the timed part, and the pool refilled first).
func BenchmarkPoolGet(b *testing.B) {
	storeSandbox(b)
	ctx := context.Background()
	pool, err := lockbox.NewPool(ctx, 4, lockbox.WithImage("base"))
	if err != nil {
		b.Fatal(err)
	}
	defer pool.Close()
	var d []time.Duration
	// The refill wait and Remove stay in b.Loop's clock (ns/op is not the
	// figure): stopped, a 3 µs Get made b.Loop run for minutes.
	for b.Loop() {
		for i := 0; i < 400 && pool.Ready() < 4; i++ {
			time.Sleep(5 * time.Millisecond)
		}
		t := time.Now()
		sb, err := pool.Get(ctx)
		d = append(d, time.Since(t))
		if err != nil {
			b.Fatal(err)
		}
		_ = sb.Remove(ctx)
	}
	reportP50(b, d)
}

// BenchmarkFork100MiB: one child of a sandbox that wrote 100 MiB (the
// copy of those changes, the create, the fresh identity). Its writable
// layer is the default tmpfs, so the copy to the store is a real one
// whatever the store's filesystem.
func BenchmarkFork100MiB(b *testing.B) {
	forkBench(b)
}

// BenchmarkFork100MiBDiskLayer: the same with WithDisk(0): the writable
// layer is on the store's filesystem, so where that filesystem reflinks
// (xfs with reflink=1, btrfs) the copy shares extents instead. make
// bench-compare runs it on this disk and on a loop-mounted xfs.
func BenchmarkFork100MiBDiskLayer(b *testing.B) {
	forkBench(b, lockbox.WithDisk(0))
}

// forkBench reports the first fork after the write apart (on a reflink
// filesystem it waits for the just-written data to reach the disk) and
// the median of all of them. Cleanup is timed too (ns/op is not the
// figure): excluded, a fast fork would make b.Loop run for minutes.
func forkBench(b *testing.B, opts ...lockbox.Option) {
	loadOrSkip(b)
	ctx := context.Background()
	sb, err := lockbox.CreateSandbox(ctx, append([]lockbox.Option{lockbox.WithImage("base")}, opts...)...)
	if err != nil {
		b.Skipf("no base image in the store (set LOCKBOX_IMAGES): %v", err)
	}
	b.Cleanup(func() { _ = sb.Remove(context.Background()) })
	wrote100MiB(b, sb)
	var d []time.Duration
	for b.Loop() {
		t := time.Now()
		kids, err := sb.Fork(ctx, 1)
		d = append(d, time.Since(t))
		if err != nil {
			b.Fatal(err)
		}
		_ = kids[0].Remove(ctx)
		_, _ = lockbox.Images().Prune(ctx)
	}
	b.ReportMetric(float64(d[0].Microseconds())/1000, "first-ms")
	reportP50(b, d)
}

// BenchmarkSnapshot100MiBAndCreate: Snapshot of 100 MiB of changes, then a
// sandbox created from it answering an exec.
func BenchmarkSnapshot100MiBAndCreate(b *testing.B) {
	sb := storeSandbox(b)
	wrote100MiB(b, sb)
	ctx := context.Background()
	var snap, create []time.Duration
	i := 0
	for b.Loop() {
		// A new byte each time: a new image, not the stored one again.
		i++
		b.StopTimer()
		if _, err := sb.Shell(ctx, fmt.Sprintf("echo %d > /data/n", i)); err != nil {
			b.Fatal(err)
		}
		name := fmt.Sprintf("bench-snap-%d-%d", os.Getpid(), i)
		b.StartTimer()
		t := time.Now()
		img, err := sb.Snapshot(ctx, name)
		snap = append(snap, time.Since(t))
		if err != nil {
			b.Fatal(err)
		}
		t = time.Now()
		c, err := lockbox.CreateSandbox(ctx, lockbox.WithImage(name))
		if err == nil {
			_, err = c.Shell(ctx, "true")
		}
		create = append(create, time.Since(t))
		if err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		_ = c.Remove(ctx)
		_ = lockbox.Images().Remove(ctx, img.Digest)
		b.StartTimer()
	}
	slices.Sort(snap)
	slices.Sort(create)
	b.ReportMetric(float64(snap[len(snap)/2].Microseconds())/1000, "snapshot-p50-ms")
	b.ReportMetric(float64(create[len(create)/2].Microseconds())/1000, "create-from-it-p50-ms")
	b.ReportMetric(0, "ns/op")
}

// BenchmarkResumeAfterPause: Resume of a paused sandbox until an exec
// answers again.
func BenchmarkResumeAfterPause(b *testing.B) {
	sb := storeSandbox(b)
	ctx := context.Background()
	var resume, toExec []time.Duration
	for b.Loop() {
		b.StopTimer()
		if err := sb.Pause(ctx); err != nil {
			b.Skipf("pause: %v", err)
		}
		b.StartTimer()
		t := time.Now()
		if err := sb.Resume(ctx); err != nil {
			b.Fatal(err)
		}
		resume = append(resume, time.Since(t))
		if _, err := sb.Shell(ctx, "true"); err != nil {
			b.Fatal(err)
		}
		toExec = append(toExec, time.Since(t))
	}
	slices.Sort(resume)
	slices.Sort(toExec)
	b.ReportMetric(float64(resume[len(resume)/2].Microseconds())/1000, "resume-p50-ms")
	b.ReportMetric(float64(toExec[len(toExec)/2].Microseconds())/1000, "resume+exec-p50-ms")
	b.ReportMetric(0, "ns/op")
}
