package lockbox

import (
	"bufio"
	"context"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"lockbox.dev/lockbox/internal/wire"
)

// make bench-ffi runs these against the release library:
//   go test -run '^$' -bench . -benchtime 1x ./   (the Latency/Memory ones
//   measure their own fixed counts and report custom metrics)

func BenchmarkNoopCall(b *testing.B) {
	ctx := context.Background()
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		if err := callMethod(ctx, "bench", wire.Noop, nil, nil); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkHandleCreateClose(b *testing.B) {
	ctx := context.Background()
	b.ReportAllocs()
	var r wire.HandleResult
	for i := 0; i < b.N; i++ {
		if err := callMethod(ctx, "bench", wire.HandleCreate, nil, &r); err != nil {
			b.Fatal(err)
		}
		if err := closeHandle("bench", r.Handle); err != nil {
			b.Fatal(err)
		}
	}
}

const latencySamples = 200_000

// percentiles times each of n calls of fn and returns p50 and p90 in ns.
func percentiles(b *testing.B, n int, fn func() error) (p50, p90 float64) {
	d := make([]time.Duration, n)
	for i := range d {
		t0 := time.Now()
		if err := fn(); err != nil {
			b.Fatal(err)
		}
		d[i] = time.Since(t0)
	}
	slices.Sort(d)
	return float64(d[n/2]), float64(d[n*9/10])
}

func BenchmarkLatencyNoop(b *testing.B) {
	ctx := context.Background()
	for i := 0; i < b.N; i++ {
		p50, p90 := percentiles(b, latencySamples, func() error { return callMethod(ctx, "bench", wire.Noop, nil, nil) })
		b.ReportMetric(p50, "p50-ns/call")
		b.ReportMetric(p90, "p90-ns/call")
	}
}

func BenchmarkLatencyNoopCancelableCtx(b *testing.B) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	for i := 0; i < b.N; i++ {
		p50, p90 := percentiles(b, latencySamples, func() error { return callMethod(ctx, "bench", wire.Noop, nil, nil) })
		b.ReportMetric(p50, "p50-ns/call")
		b.ReportMetric(p90, "p90-ns/call")
	}
}

func BenchmarkLatencyHandleCreateClose(b *testing.B) {
	ctx := context.Background()
	var r wire.HandleResult
	for i := 0; i < b.N; i++ {
		p50, p90 := percentiles(b, latencySamples, func() error {
			if err := callMethod(ctx, "bench", wire.HandleCreate, nil, &r); err != nil {
				return err
			}
			return closeHandle("bench", r.Handle)
		})
		b.ReportMetric(p50, "p50-ns/pair")
		b.ReportMetric(p90, "p90-ns/pair")
	}
}

// rssKiB is this process's resident set size.
func rssKiB(b *testing.B) float64 {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		if rest, ok := strings.CutPrefix(s.Text(), "VmRSS:"); ok {
			v, err := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 64)
			if err != nil {
				b.Fatal(err)
			}
			return v
		}
	}
	b.Fatal("no VmRSS")
	return 0
}

// BenchmarkMemory: RSS before and after 1,000,000 calls (half no-op, half
// handle create+close), then after a second million. Flat means no leak on
// either side of the ABI: the second million must not grow it further.
func BenchmarkMemory(b *testing.B) {
	ctx := context.Background()
	var r wire.HandleResult
	mix := func(n int) {
		for j := 0; j < n; j++ {
			var err error
			if j%2 == 0 {
				err = callMethod(ctx, "bench", wire.Noop, nil, nil)
			} else if err = callMethod(ctx, "bench", wire.HandleCreate, nil, &r); err == nil {
				err = closeHandle("bench", r.Handle)
			}
			if err != nil {
				b.Fatal(err)
			}
		}
	}
	for i := 0; i < b.N; i++ {
		mix(100_000) // warm up pools, the Go heap and the C allocator
		runtime.GC()
		before := rssKiB(b)
		mix(1_000_000)
		runtime.GC()
		after1 := rssKiB(b)
		mix(1_000_000)
		runtime.GC()
		after2 := rssKiB(b)
		b.ReportMetric(before, "rss-before-KiB")
		b.ReportMetric(after1, "rss-after-1M-KiB")
		b.ReportMetric(after2, "rss-after-2M-KiB")
	}
}
