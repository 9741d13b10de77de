package tests

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"lockbox.dev/lockbox"
)

// Memory checkpoints of a microVM sandbox (issue 14): one VM boot, then
// restores (which skip the boot) share the checks: a counter that
// continues after a restore, forks that differ in identity, a tampered
// checkpoint refused, nothing left after Remove.

// counterScript writes an incrementing number to /tmp/count every 100 ms,
// through a rename so a reader never sees the file truncated and empty.
const counterScript = `i=0; while :; do i=$((i+1)); echo $i > /tmp/count.new; mv /tmp/count.new /tmp/count; sleep 0.1; done`

func vmCounter(ctx context.Context, t *testing.T, sb *lockbox.Sandbox) int {
	t.Helper()
	res, err := sb.Shell(ctx, "cat /tmp/count")
	if err != nil || res.ExitCode != 0 {
		t.Fatalf("read counter: %v %+v", err, res)
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(res.Stdout)))
	if err != nil {
		t.Fatalf("counter %q: %v", res.Stdout, err)
	}
	return n
}

func vmShell(ctx context.Context, t *testing.T, sb *lockbox.Sandbox, script string) string {
	t.Helper()
	res, err := sb.Shell(ctx, script)
	if err != nil || res.ExitCode != 0 {
		t.Fatalf("%s: %v %+v", script, err, res)
	}
	return strings.TrimSpace(string(res.Stdout))
}

// vmProcs: the helper's pid and every process under it (qemu among them).
func vmProcs(ctx context.Context, t *testing.T, sb *lockbox.Sandbox) []int {
	t.Helper()
	info, err := sb.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	procs := append(descendants(info.HelperPID), info.HelperPID)
	qemu := 0
	for _, p := range procs {
		if strings.Contains(exeOf(p), "qemu-system") {
			qemu++
		}
	}
	if qemu != 1 {
		t.Fatalf("want one qemu under helper %d, found %d", info.HelperPID, qemu)
	}
	return procs
}

func removeLeavesNothing(ctx context.Context, t *testing.T, sb *lockbox.Sandbox) {
	t.Helper()
	procs := vmProcs(ctx, t, sb)
	if err := sb.Remove(ctx); err != nil {
		t.Fatal(err)
	}
	// 30 s: qemu's exit under TCG on a loaded machine can take seconds.
	deadline := time.Now().Add(30 * time.Second)
	for _, p := range procs {
		for alive(p) && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
		}
		if alive(p) {
			t.Fatalf("pid %d (%s) survived Remove", p, exeOf(p))
		}
	}
}

// counterMoves waits (30 s at most) for the guest's counter to pass from.
func counterMoves(ctx context.Context, t *testing.T, sb *lockbox.Sandbox, from int, what string) {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		n := vmCounter(ctx, t, sb)
		if n > from {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %d then %d after 30 s", what, from, n)
		}
	}
}

type identity struct{ host, machineID, random string }

func identityOf(ctx context.Context, t *testing.T, sb *lockbox.Sandbox) identity {
	t.Helper()
	out := vmShell(ctx, t, sb, "hostname; cat /etc/machine-id 2>/dev/null || echo none; head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \\n'")
	f := strings.Split(out, "\n")
	if len(f) != 3 || len(f[2]) != 32 {
		t.Fatalf("identity output %q", out)
	}
	return identity{f[0], f[1], f[2]}
}

func TestVMCheckpointRestoreFork(t *testing.T) {
	needEngine(t)
	if r := vmSkipReason(); r != "" {
		t.Skip(r)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()
	t0 := time.Now()
	src, err := lockbox.CreateSandbox(ctx, lockbox.WithName("ckpt-src"), lockbox.WithReplace(),
		lockbox.WithIsolation(lockbox.IsolationMicroVM), lockbox.WithMemory(64), lockbox.WithCPUs(1))
	if err != nil {
		t.Fatalf("CreateSandbox: %v", err)
	}
	boot := time.Since(t0)
	defer src.Remove(context.Background())
	_ = lockbox.RemoveCheckpoint(ctx, "ckpt-counter")

	// The file exists before the loop starts, so the first read never
	// races the loop's first write.
	pid := vmShell(ctx, t, src, "echo 0 > /tmp/count; sh -c '"+counterScript+"' >/dev/null 2>&1 & echo $!")
	for vmCounter(ctx, t, src) < 5 {
		time.Sleep(100 * time.Millisecond)
	}
	before := vmCounter(ctx, t, src)

	t1 := time.Now()
	if err := src.Checkpoint(ctx, "ckpt-counter"); err != nil {
		t.Fatalf("Checkpoint: %v", err)
	}
	saved := time.Since(t1)
	if err := src.Checkpoint(ctx, "ckpt-counter"); !errors.Is(err, lockbox.ErrAlreadyExists) {
		t.Fatalf("second Checkpoint of one name: %v", err)
	}
	// The source runs on (polled: a TCG guest on a loaded machine may
	// need more than a fixed half second to count once more).
	atSave := vmCounter(ctx, t, src)
	counterMoves(ctx, t, src, atSave, "source counter stopped after the checkpoint")

	// The checkpoint holds guest memory: only the engine's uid reads it.
	dir := filepath.Join(os.Getenv("LOCKBOX_HOME"), "checkpoints", "ckpt-counter")
	for _, f := range []string{"", "state", "rw.img", "manifest.json"} {
		st, err := os.Stat(filepath.Join(dir, f))
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Perm()&0o077 != 0 {
			t.Fatalf("%s: mode %v, want no group/other access", filepath.Join(dir, f), st.Mode())
		}
	}
	list, err := lockbox.Checkpoints(ctx)
	if err != nil || !slices.ContainsFunc(list, func(c lockbox.CheckpointInfo) bool {
		return c.Name == "ckpt-counter" && c.Source == "ckpt-src" && c.StateBytes > 0
	}) {
		t.Fatalf("Checkpoints: %v %+v", err, list)
	}

	t2 := time.Now()
	rs, err := lockbox.Restore(ctx, "ckpt-counter", lockbox.WithName("ckpt-restored"), lockbox.WithReplace())
	if err != nil {
		t.Fatalf("Restore: %v", err)
	}
	restored := time.Since(t2)
	t.Logf("cold boot %v, checkpoint %v, restore %v", boot, saved, restored)
	// The counter process is the same one, and it continues from where it
	// was (not from 0).
	vmShell(ctx, t, rs, "kill -0 "+pid)
	first := vmCounter(ctx, t, rs)
	if first < before {
		t.Fatalf("restored counter %d is behind the value before the checkpoint %d", first, before)
	}
	counterMoves(ctx, t, rs, first, "restored counter does not run")

	// Fork of 2: each child a new machine.
	kids, err := src.Fork(ctx, 2)
	if err != nil {
		t.Fatalf("Fork: %v", err)
	}
	ids := []identity{identityOf(ctx, t, src)}
	for _, k := range kids {
		vmShell(ctx, t, k, "kill -0 "+pid) // the parent's processes came along
		ids = append(ids, identityOf(ctx, t, k))
	}
	for i := range ids {
		for j := i + 1; j < len(ids); j++ {
			if ids[i].host == ids[j].host || ids[i].machineID == ids[j].machineID || ids[i].random == ids[j].random {
				t.Fatalf("identities %d and %d share something: %+v %+v", i, j, ids[i], ids[j])
			}
		}
	}
	for _, k := range kids {
		removeLeavesNothing(ctx, t, k)
	}
	removeLeavesNothing(ctx, t, rs)

	// A checkpoint whose state was changed is refused before qemu sees it
	// (the restore above, of the same files unchanged, is the control).
	state := filepath.Join(dir, "state")
	f, err := os.OpenFile(state, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 1)
	if _, err := f.ReadAt(b, 4096); err != nil {
		t.Fatal(err)
	}
	b[0] ^= 0xff
	if _, err := f.WriteAt(b, 4096); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if sb, err := lockbox.Restore(ctx, "ckpt-counter", lockbox.WithName("ckpt-tampered")); !errors.Is(err, lockbox.ErrInvalidArgument) {
		if sb != nil {
			sb.Remove(ctx)
		}
		t.Fatalf("Restore of a tampered checkpoint: %v", err)
	}
	if err := lockbox.RemoveCheckpoint(ctx, "ckpt-counter"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Fatalf("checkpoint dir after RemoveCheckpoint: %v", err)
	}
	removeLeavesNothing(ctx, t, src)
}

// TestVMRestoreBench (LOCKBOX_VM_BENCH=1, `make bench-vm-backend`): a
// restore from a checkpoint against a cold boot, to the first exec output.
func TestVMRestoreBench(t *testing.T) {
	if os.Getenv("LOCKBOX_VM_BENCH") == "" {
		t.Skip("set LOCKBOX_VM_BENCH=1 (make bench-vm-backend)")
	}
	needEngine(t)
	if r := vmSkipReason(); r != "" {
		t.Skip(r)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	const runs = 3
	firstOutput := func(sb *lockbox.Sandbox) {
		if res, err := sb.Shell(ctx, "echo hi"); err != nil || string(res.Stdout) != "hi\n" {
			t.Fatalf("echo: %v %+v", err, res)
		}
	}
	var cold, warm []time.Duration
	var src *lockbox.Sandbox
	for i := 0; i < runs; i++ {
		t0 := time.Now()
		sb, err := lockbox.CreateSandbox(ctx, lockbox.WithIsolation(lockbox.IsolationMicroVM),
			lockbox.WithMemory(64), lockbox.WithCPUs(1))
		if err != nil {
			t.Fatal(err)
		}
		firstOutput(sb)
		cold = append(cold, time.Since(t0))
		if src == nil {
			src = sb
		} else {
			sb.Remove(ctx)
		}
	}
	defer src.Remove(context.Background())
	_ = lockbox.RemoveCheckpoint(ctx, "bench-warm")
	t0 := time.Now()
	if err := src.Checkpoint(ctx, "bench-warm"); err != nil {
		t.Fatal(err)
	}
	save := time.Since(t0)
	defer lockbox.RemoveCheckpoint(context.Background(), "bench-warm")
	for i := 0; i < runs; i++ {
		t0 := time.Now()
		sb, err := lockbox.Restore(ctx, "bench-warm")
		if err != nil {
			t.Fatal(err)
		}
		firstOutput(sb)
		warm = append(warm, time.Since(t0))
		sb.Remove(ctx)
	}
	slices.Sort(cold)
	slices.Sort(warm)
	list, _ := lockbox.Checkpoints(ctx)
	var state uint64
	for _, c := range list {
		if c.Name == "bench-warm" {
			state = c.StateBytes
		}
	}
	t.Logf("BENCH microvm(tcg) cold boot -> first output: median %v %v", median(cold), cold)
	t.Logf("BENCH microvm(tcg) restore   -> first output: median %v %v", median(warm), warm)
	t.Logf("BENCH microvm(tcg) checkpoint (stop, save %.1f MiB of state, copy disk, cont): %v", float64(state)/(1<<20), save)
}
