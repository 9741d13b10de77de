package bench

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"

	"lockbox.dev/lockbox"
)

// idleSandboxes is how many sandboxes BenchmarkIdlePSS keeps up at once
// (issue 13 measures idle memory with 20).
const idleSandboxes = 20

// pssKiB is the proportional set size of pid, from smaps_rollup: shared
// pages (the helper's text, libc) count once across all the sandboxes.
func pssKiB(pid int) (int, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps_rollup", pid))
	if err != nil {
		return 0, err
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "Pss:" {
			return strconv.Atoi(f[1])
		}
	}
	return 0, fmt.Errorf("no Pss line for pid %d", pid)
}

// children lists the host pids whose parent is pid.
func children(pid int) ([]int, error) {
	tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		return nil, err
	}
	var out []int
	for _, t := range tasks {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/children", pid, t.Name()))
		if err != nil {
			return nil, err
		}
		for _, f := range strings.Fields(string(b)) {
			n, err := strconv.Atoi(f)
			if err != nil {
				return nil, err
			}
			out = append(out, n)
		}
	}
	return out, nil
}

// BenchmarkIdlePSS reports the memory an idle sandbox costs on the host:
// the PSS of its helper (the supervisor) and of everything the helper
// started (the agent), averaged over 20 sandboxes that each ran one exec.
// Kernel memory (page tables, mounts, namespaces) is not in it.
func BenchmarkIdlePSS(b *testing.B) {
	loadOrSkip(b)
	ctx := context.Background()
	opt := lockbox.WithImage("base")
	if dir := os.Getenv("LOCKBOX_BENCH_ROOTFS"); dir != "" {
		opt = lockbox.WithRootfs(dir)
	}
	for b.Loop() {
		var sbs []*lockbox.Sandbox
		for range idleSandboxes {
			sb, err := lockbox.CreateSandbox(ctx, opt)
			if err != nil {
				b.Fatalf("create sandbox: %v", err)
			}
			sbs = append(sbs, sb)
			if _, err := sb.Exec(ctx, "true"); err != nil {
				b.Fatal(err)
			}
		}
		total, procs := 0, 0
		for _, sb := range sbs {
			info, err := sb.Info(ctx)
			if err != nil {
				b.Fatal(err)
			}
			kids, err := children(info.HelperPID)
			if err != nil {
				b.Fatal(err)
			}
			if len(kids) == 0 {
				b.Fatalf("helper %d has no agent child", info.HelperPID)
			}
			for _, pid := range append([]int{info.HelperPID}, kids...) {
				kib, err := pssKiB(pid)
				if err != nil {
					b.Fatal(err)
				}
				total += kib
				procs++
			}
		}
		for _, sb := range sbs {
			_ = sb.Remove(ctx)
		}
		if total <= 0 {
			b.Fatalf("no memory measured over %d processes", procs)
		}
		b.ReportMetric(float64(total)/1024/idleSandboxes, "MiB-PSS/sandbox")
		b.ReportMetric(float64(procs)/idleSandboxes, "procs/sandbox")
	}
}
