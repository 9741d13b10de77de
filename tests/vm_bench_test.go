package tests

import (
	"context"
	"os"
	"sort"
	"testing"
	"time"

	"lockbox.dev/lockbox"
)

// TestVMBenchFigures (LOCKBOX_VM_BENCH=1, `make bench-vm-backend`): create
// to first output and the exec round trip, microVM beside native in one
// run, labelled with the acceleration; and the VMM's memory (its cgroup)
// beside the native sandbox's right after the first exec.
func TestVMBenchFigures(t *testing.T) {
	if os.Getenv("LOCKBOX_VM_BENCH") == "" {
		t.Skip("set LOCKBOX_VM_BENCH=1 (make bench-vm-backend)")
	}
	for _, b := range backends(t) {
		skipUnlessBackend(t, b)
		label := b.name
		if b.iso == lockbox.IsolationMicroVM {
			label += " (" + os.Getenv("LOCKBOX_VM_ACCEL") + ")"
		}
		cold := 5
		if b.iso == lockbox.IsolationMicroVM {
			cold = 3
		}
		var firsts, rtts []time.Duration
		var mem uint64
		for i := 0; i < cold; i++ {
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
			t0 := time.Now()
			sb, err := lockbox.CreateSandbox(ctx, lockbox.WithIsolation(b.iso), lockbox.WithMemory(256))
			if err != nil {
				cancel()
				t.Fatalf("%s: %v", label, err)
			}
			res, err := sb.Exec(ctx, "echo", "hi")
			if err != nil || string(res.Stdout) != "hi\n" {
				t.Fatalf("%s: echo: %v %+v", label, err, res)
			}
			firsts = append(firsts, time.Since(t0))
			if i == 0 {
				if m, err := sb.Metrics(ctx); err == nil {
					mem = m.MemoryBytes
				}
				for j := 0; j < 20; j++ {
					t1 := time.Now()
					if _, err := sb.Exec(ctx, "true"); err != nil {
						t.Fatal(err)
					}
					rtts = append(rtts, time.Since(t1))
				}
			}
			_ = sb.Remove(ctx)
			cancel()
		}
		t.Logf("BENCH %-16s create->first output: median %v %v", label, median(firsts), firsts)
		t.Logf("BENCH %-16s exec round trip (true): median %v min %v max %v", label, median(rtts), rtts[0], rtts[len(rtts)-1])
		t.Logf("BENCH %-16s memory after first exec: %.1f MiB", label, float64(mem)/(1<<20))
	}
}

func median(d []time.Duration) time.Duration {
	s := append([]time.Duration(nil), d...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	for i := range d {
		d[i] = s[i]
	}
	return s[len(s)/2]
}
