package bench

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"lockbox.dev/lockbox"
)

// BenchmarkIdlePSS20: host memory of 20 idle sandboxes, each counted as
// the PSS of every host process it has (its helper and the helper's
// descendants: the sandbox's PID 1 and agent). Reports the median per
// sandbox in MiB; PSS shares a page between the processes mapping it, so
// the helper's code pages are not counted 20 times.
func BenchmarkIdlePSS20(b *testing.B) {
	loadOrSkip(b)
	ctx := context.Background()
	const n = 20
	var pss []float64
	for b.Loop() {
		var sbs []*lockbox.Sandbox
		for i := 0; i < n; i++ {
			sb, err := lockbox.CreateSandbox(ctx, lockbox.WithImage("base"))
			if err != nil {
				b.Skipf("no base image in the store (set LOCKBOX_IMAGES): %v", err)
			}
			sbs = append(sbs, sb)
		}
		time.Sleep(500 * time.Millisecond)
		for _, sb := range sbs {
			info, err := sb.Info(ctx)
			if err != nil {
				b.Fatal(err)
			}
			pss = append(pss, float64(treePSS(info.HelperPID))/1024)
		}
		for _, sb := range sbs {
			_ = sb.Remove(ctx)
		}
	}
	slices.Sort(pss)
	b.ReportMetric(pss[len(pss)/2], "pss-p50-MiB")
	b.ReportMetric(0, "ns/op")
}

// treePSS sums the PSS (KiB) of pid and all its descendants.
func treePSS(pid int) int {
	children := map[int][]int{}
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		p, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		st, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		s := string(st)
		f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
		if len(f) > 1 {
			pp, _ := strconv.Atoi(f[1])
			children[pp] = append(children[pp], p)
		}
	}
	total := 0
	for stack := []int{pid}; len(stack) > 0; {
		p := stack[len(stack)-1]
		stack = append(stack[:len(stack)-1], children[p]...)
		roll, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps_rollup", p))
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(roll), "\n") {
			if f := strings.Fields(line); len(f) >= 2 && f[0] == "Pss:" {
				n, _ := strconv.Atoi(f[1])
				total += n
			}
		}
	}
	return total
}
