package tests

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"lockbox.dev/lockbox"
)

// TestEngineBench measures the engine (make bench-engine). It asserts
// nothing about timing; it prints medians. Off unless LOCKBOX_ENGINE_BENCH=1.
func TestEngineBench(t *testing.T) {
	needEngine(t)
	if os.Getenv("LOCKBOX_ENGINE_BENCH") != "1" {
		t.Skip("set LOCKBOX_ENGINE_BENCH=1 (make bench-engine)")
	}
	ctx := context.Background()
	report := func(format string, a ...any) { fmt.Printf("bench: "+format+"\n", a...) }

	// Timings on a shared machine depend on what else runs: say so.
	if la, err := os.ReadFile("/proc/loadavg"); err == nil {
		report("load average at start: %s (%d CPUs)", strings.Join(strings.Fields(string(la))[:3], " "), runtime.NumCPU())
	}
	defer func() {
		if la, err := os.ReadFile("/proc/loadavg"); err == nil {
			report("load average at end: %s", strings.Join(strings.Fields(string(la))[:3], " "))
		}
	}()

	// Warm the library, engine and page cache.
	if sb, err := lockbox.CreateSandbox(ctx); err == nil {
		sb.Exec(ctx, "true")
		sb.Remove(ctx)
	}

	// 1. Create to first byte of `echo` output.
	var first []time.Duration
	for i := 0; i < 50; i++ {
		t0 := time.Now()
		sb, err := lockbox.CreateSandbox(ctx)
		if err != nil {
			t.Fatal(err)
		}
		cmd := sb.CommandContext(ctx, "echo", "hi")
		out, _ := cmd.StdoutPipe()
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		b := make([]byte, 1)
		if _, err := io.ReadFull(out, b); err != nil {
			t.Fatal(err)
		}
		first = append(first, time.Since(t0))
		io.Copy(io.Discard, out)
		cmd.Wait()
		sb.Remove(ctx)
	}
	report("create-to-first-output (echo) p50 %v  p90 %v  (n=%d)", pct(first, 50), pct(first, 90), len(first))

	// 2. Exec round trip on a running sandbox.
	sb, err := lockbox.CreateSandbox(ctx, lockbox.WithTmpfs("/scratch", 600))
	if err != nil {
		t.Fatal(err)
	}
	defer sb.Remove(ctx)
	var rt []time.Duration
	for i := 0; i < 500; i++ {
		t0 := time.Now()
		res, err := sb.Exec(ctx, "echo", "x")
		if err != nil || string(res.Stdout) != "x\n" {
			t.Fatalf("exec: %v", err)
		}
		rt = append(rt, time.Since(t0))
	}
	report("exec round trip (echo x) p50 %v  p90 %v  (n=%d)", pct(rt, 50), pct(rt, 90), len(rt))

	// 3. 256 MiB through the FS streams (to a tmpfs inside the sandbox, so
	// the figure is the engine's path, not the disk).
	const size = 256 << 20
	chunk := make([]byte, 1<<20)
	for i := range chunk {
		chunk[i] = byte(i)
	}
	var wr, rd []float64
	for r := 0; r < 5; r++ {
		t0 := time.Now()
		w, err := sb.FS().Create(ctx, "/scratch/big")
		if err != nil {
			t.Fatal(err)
		}
		for n := 0; n < size; n += len(chunk) {
			if _, err := w.Write(chunk); err != nil {
				t.Fatal(err)
			}
		}
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
		wr = append(wr, float64(size)/time.Since(t0).Seconds()/1e9)
		t0 = time.Now()
		f, err := sb.FS().Open(ctx, "/scratch/big")
		if err != nil {
			t.Fatal(err)
		}
		n, err := io.Copy(io.Discard, f)
		f.Close()
		if err != nil || n != size {
			t.Fatalf("read %d: %v", n, err)
		}
		rd = append(rd, float64(size)/time.Since(t0).Seconds()/1e9)
	}
	report("FS 256 MiB write p50 %.2f GB/s, read p50 %.2f GB/s (n=%d, to tmpfs in the sandbox)", fmed(wr), fmed(rd), len(wr))

	// 4. Host memory per idle sandbox: every host process a sandbox has
	// (helper + its PID 1), RSS and PSS.
	const idle = 20
	var idles []*lockbox.Sandbox
	for i := 0; i < idle; i++ {
		s, err := lockbox.CreateSandbox(ctx)
		if err != nil {
			t.Fatal(err)
		}
		idles = append(idles, s)
	}
	time.Sleep(500 * time.Millisecond)
	var rss, pss []float64
	for _, s := range idles {
		info, err := s.Info(ctx)
		if err != nil {
			t.Fatal(err)
		}
		r, p := treeMemory(info.HelperPID)
		rss = append(rss, float64(r)/1024)
		pss = append(pss, float64(p)/1024)
	}
	report("host memory per idle sandbox: RSS p50 %.2f MiB, PSS p50 %.2f MiB (helper + sandbox PID 1, n=%d)", fmed(rss), fmed(pss), idle)
	for _, s := range idles {
		s.Remove(ctx)
	}

	// 5. Most sandboxes at once (each proven alive by an exec).
	ceiling := 300
	if v, err := strconv.Atoi(os.Getenv("LOCKBOX_BENCH_MAX_SANDBOXES")); err == nil && v > 0 {
		ceiling = v
	}
	var many []*lockbox.Sandbox
	var stop error
	for len(many) < ceiling {
		s, err := lockbox.CreateSandbox(ctx)
		if err != nil {
			stop = err
			break
		}
		many = append(many, s)
	}
	alive := 0
	for _, s := range many {
		if res, err := s.Exec(ctx, "true"); err == nil && res.ExitCode == 0 {
			alive++
		}
	}
	why := "the ceiling of this benchmark"
	if stop != nil {
		why = stop.Error()
	}
	report("most sandboxes at once: %d running, all answering exec: %d (stopped by %s)", len(many), alive, why)
	for _, s := range many {
		s.Remove(ctx)
	}
}

func pct(d []time.Duration, p int) time.Duration {
	s := append([]time.Duration(nil), d...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[(len(s)-1)*p/100].Round(10 * time.Microsecond)
}

func fmed(v []float64) float64 {
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	return s[len(s)/2]
}

// treeMemory sums RSS and PSS (KiB) of pid and all its descendants.
func treeMemory(pid int) (rss, pss int) {
	children := map[int][]int{}
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		p, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		s := string(b)
		f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
		if len(f) > 1 {
			pp, _ := strconv.Atoi(f[1])
			children[pp] = append(children[pp], p)
		}
	}
	stack := []int{pid}
	for len(stack) > 0 {
		p := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		stack = append(stack, children[p]...)
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps_rollup", p))
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(b), "\n") {
			f := strings.Fields(line)
			if len(f) >= 2 {
				n, _ := strconv.Atoi(f[1])
				switch f[0] {
				case "Rss:":
					rss += n
				case "Pss:":
					pss += n
				}
			}
		}
	}
	return rss, pss
}
