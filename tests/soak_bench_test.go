package tests

import (
	"context"
	"fmt"
	"os"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"lockbox.dev/lockbox"
)

// TestSoakBench is the long variant of the reliability suite (make
// bench-soak): LOCKBOX_SOAK cycles of create, exec, remove, with 4 workers,
// then a burst of execs on running sandboxes. It prints what a production
// user watches: cycle and exec latency percentiles, execs/s, and the
// process's threads and RSS as the cycles go by. It asserts only that
// every cycle worked; timings are reported, never judged.
func TestSoakBench(t *testing.T) {
	needEngine(t)
	n, _ := strconv.Atoi(os.Getenv("LOCKBOX_SOAK"))
	if n <= 0 {
		t.Skip("set LOCKBOX_SOAK=<cycles> (make bench-soak)")
	}
	ctx := context.Background()
	report := func(format string, a ...any) { fmt.Printf("soak: "+format+"\n", a...) }
	if la, err := os.ReadFile("/proc/loadavg"); err == nil {
		report("load average at start: %s (%d CPUs)", strings.Join(strings.Fields(string(la))[:3], " "), runtime.NumCPU())
	}
	sample := func(label string) {
		report("%-14s threads %4d  rss %6.1f MiB  goroutines %d", label, soakThreads(), soakRSSMiB(), runtime.NumGoroutine())
	}
	sample("start")

	const workers = 4
	var mu sync.Mutex
	var cycles []time.Duration
	var failed error
	next := make(chan int)
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				t0 := time.Now()
				err := func() error {
					sb, err := lockbox.CreateSandbox(ctx)
					if err != nil {
						return err
					}
					defer sb.Remove(ctx)
					res, err := sb.ExecArgs(ctx, []string{"echo", strconv.Itoa(i)})
					if err != nil {
						return err
					}
					if got := strings.TrimSpace(string(res.Stdout)); got != strconv.Itoa(i) {
						return fmt.Errorf("cycle %d printed %q", i, got)
					}
					return nil
				}()
				mu.Lock()
				cycles = append(cycles, time.Since(t0))
				if err != nil && failed == nil {
					failed = err
				}
				mu.Unlock()
			}
		}()
	}
	start := time.Now()
	for i := 0; i < n; i++ {
		next <- i
		if (i+1)%(n/5+1) == 0 {
			sample(fmt.Sprintf("after %d", i+1))
		}
	}
	close(next)
	wg.Wait()
	if failed != nil {
		t.Fatal(failed)
	}
	report("%d create/exec/remove cycles in %v (%.1f cycles/s, %d workers): p50 %v p99 %v",
		n, time.Since(start).Round(time.Millisecond), float64(n)/time.Since(start).Seconds(), workers,
		soakPct(cycles, 50), soakPct(cycles, 99))
	sample("after cycles")

	// Exec throughput and latency on running sandboxes, 16 in flight.
	var sbs []*lockbox.Sandbox
	for i := 0; i < 8; i++ {
		sb, err := lockbox.CreateSandbox(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer sb.Remove(ctx)
		sbs = append(sbs, sb)
	}
	const execs, inflight = 2000, 16
	var lat []time.Duration
	sem := make(chan struct{}, inflight)
	start = time.Now()
	for i := 0; i < execs; i++ {
		sem <- struct{}{}
		wg.Add(1)
		go func(i int) {
			defer func() { <-sem; wg.Done() }()
			t0 := time.Now()
			_, err := sbs[i%len(sbs)].ExecArgs(ctx, []string{"true"})
			mu.Lock()
			lat = append(lat, time.Since(t0))
			if err != nil && failed == nil {
				failed = err
			}
			mu.Unlock()
		}(i)
	}
	wg.Wait()
	if failed != nil {
		t.Fatal(failed)
	}
	el := time.Since(start)
	report("%d execs, %d in flight over %d sandboxes: %.0f execs/s, p50 %v p99 %v",
		execs, inflight, len(sbs), float64(execs)/el.Seconds(), soakPct(lat, 50), soakPct(lat, 99))
	sample("end")
}

func soakPct(d []time.Duration, p int) time.Duration {
	s := append([]time.Duration(nil), d...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	if len(s) == 0 {
		return 0
	}
	return s[(len(s)-1)*p/100].Round(10 * time.Microsecond)
}

func soakThreads() int {
	ents, _ := os.ReadDir("/proc/self/task")
	return len(ents)
}

func soakRSSMiB() float64 {
	b, _ := os.ReadFile("/proc/self/status")
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "VmRSS:") {
			f := strings.Fields(l)
			if len(f) >= 2 {
				kb, _ := strconv.ParseFloat(f[1], 64)
				return kb / 1024
			}
		}
	}
	return 0
}
