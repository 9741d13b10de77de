package lockbox

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"lockbox.dev/lockbox/internal/abi"
)

// osThreads is the process's thread count (Go's, the library's, all).
func osThreads(t testing.TB) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/task")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// peakRSS is the process's VmHWM line, for the log.
func peakRSS() string {
	b, _ := os.ReadFile("/proc/self/status")
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "VmHWM:") {
			return strings.Join(strings.Fields(l), " ")
		}
	}
	return "VmHWM: ?"
}

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

// asyncOrControl requires the completion queue, or with
// LOCKBOX_TEST_BLOCKING=1 turns it off for a control run (which must fail).
// The call path's own thread tests are in internal/abi/threads_test.go.
func asyncOrControl(t *testing.T) {
	t.Helper()
	if err := Load(); err != nil {
		t.Fatal(err)
	}
	if os.Getenv("LOCKBOX_TEST_BLOCKING") == "1" {
		abi.SetBlockingOnly(true)
		t.Cleanup(func() { abi.SetBlockingOnly(false) })
		return
	}
	if !abi.HasCompletionQueue() {
		t.Fatal("the library has no completion queue: every wait would hold a thread")
	}
}

// Thousands of execs in flight at once must not cost an OS thread each:
// waiting happens in the library's runtime and Go waits on the completion
// fd through its poller. Every exec sleeps a second, so all of them are in
// flight together; every output must come back exact.
//
// The detector: LOCKBOX_TEST_BLOCKING=1 runs the same load over the
// blocking exports (the old call model) and fails the bound (2,000 execs
// took the process to 1,525 threads, against 38; see docs/abi.md). Sizes:
// LOCKBOX_THREADS_EXECS, LOCKBOX_THREADS_SANDBOXES (make bench-threads runs
// 10,000 over 100).
func TestThousandsOfExecsHoldNoThreadEach(t *testing.T) {
	if testing.Short() {
		t.Skip("starts sandboxes")
	}
	def := 2000
	if raceEnabled {
		def = 500 // each exec is ~4 goroutines; the race detector's cap is 8128
	}
	execs := envInt("LOCKBOX_THREADS_EXECS", def)
	nsb := envInt("LOCKBOX_THREADS_SANDBOXES", 20)
	bound := envInt("LOCKBOX_THREADS_BOUND", 200)
	asyncOrControl(t)

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	sbs := make([]*Sandbox, nsb)
	var wg sync.WaitGroup
	errs := make(chan error, nsb)
	for i := range sbs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sb, err := CreateSandbox(ctx, WithPids(4096))
			if err != nil {
				errs <- err
				return
			}
			sbs[i] = sb
		}()
	}
	wg.Wait()
	defer func() {
		for _, sb := range sbs {
			if sb != nil {
				_ = sb.Remove(context.Background())
			}
		}
	}()
	close(errs)
	for err := range errs {
		t.Fatalf("CreateSandbox: %v", err)
	}

	before := osThreads(t)
	var peak atomic.Int64
	stop := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		for {
			if n := int64(osThreads(t)); n > peak.Load() {
				peak.Store(n)
			}
			select {
			case <-stop:
				return
			case <-tick.C:
			}
		}
	}()

	start := time.Now()
	var inFlight, peakInFlight atomic.Int64
	var bad atomic.Int64
	var firstErr sync.Once
	for i := 0; i < execs; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			n := inFlight.Add(1)
			for {
				p := peakInFlight.Load()
				if n <= p || peakInFlight.CompareAndSwap(p, n) {
					break
				}
			}
			r, err := sbs[i%nsb].Exec(ctx, "sh", "-c", fmt.Sprintf("sleep 1; echo %d; echo e%d >&2", i, i))
			inFlight.Add(-1)
			want, wantErr := fmt.Sprintf("%d\n", i), fmt.Sprintf("e%d\n", i)
			if err != nil || r.ExitCode != 0 || string(r.Stdout) != want || string(r.Stderr) != wantErr {
				bad.Add(1)
				firstErr.Do(func() {
					if err != nil {
						t.Errorf("exec %d: %v", i, err)
					} else {
						t.Errorf("exec %d: exit %d stdout %q stderr %q", i, r.ExitCode, r.Stdout, r.Stderr)
					}
				})
			}
		}()
	}
	wg.Wait()
	close(stop)
	<-sampled
	elapsed := time.Since(start)
	t.Logf("%d execs over %d sandboxes in %v (%d in flight at once): threads %d before, peak %d, bound %d; blocking=%v; %s",
		execs, nsb, elapsed.Round(time.Millisecond), peakInFlight.Load(), before, peak.Load(), bound, !abi.HasCompletionQueue(), peakRSS())
	if n := bad.Load(); n > 0 {
		t.Errorf("%d of %d execs came back wrong", n, execs)
	}
	if s := libStats(t); s.Completions != 0 {
		t.Errorf("%d submitted calls left in the library", s.Completions)
	}
	if peak.Load() > int64(bound) {
		t.Errorf("thread count peaked at %d with %d execs in flight; bound %d", peak.Load(), peakInFlight.Load(), bound)
	}
}
