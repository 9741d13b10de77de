package tests

import (
	"context"
	"sort"
	"strings"
	"testing"

	"lockbox.dev/lockbox"
)

// vmDevProbe opens each node read-write as the workload (guest root) and
// says OPEN, REFUSED or ABSENT for it.
func vmDevProbe(nodes []string) string {
	return "for d in " + strings.Join(nodes, " ") + "; do " +
		"if [ -e /dev/$d ]; then (exec 3<>/dev/$d) 2>/dev/null && echo OPEN-$d || echo REFUSED-$d; " +
		"else echo ABSENT-$d; fi; done"
}

// devEntries lists /dev in sb, sorted.
func devEntries(ctx context.Context, t *testing.T, sb *lockbox.Sandbox) []string {
	t.Helper()
	res, err := sb.ExecArgs(ctx, []string{"ls", "-A", "/dev"})
	if err != nil || res.ExitCode != 0 {
		t.Fatalf("ls /dev: %v %+v", err, res)
	}
	e := strings.Fields(string(res.Stdout))
	sort.Strings(e)
	return e
}

// vmAttackDevNodes (TestVMAttackS6's subtest, on its VM; S6-VM-4): a
// workload's /dev was the guest kernel's whole devtmpfs. Guest root opened
// /dev/userfaultfd and got a live userfaultfd (kernel faults included)
// while its filter refuses the userfaultfd system call; /dev/fuse, the
// serial ports, the console, the virtual terminals opened too. Now /dev
// holds native's list and nothing else. Controls in the same boot: the
// same probe opens /dev/null and /dev/zero, and they work; /dev is
// writable for guest root (a FIFO is made there), so the refused mknod of
// a device node is the missing capability's.
func vmAttackDevNodes(ctx context.Context, t *testing.T, sb *lockbox.Sandbox) {
	sh := func(script string, opts ...lockbox.ExecOption) (string, int) {
		t.Helper()
		res, err := sb.ExecArgs(ctx, []string{"sh", "-c", script}, opts...)
		if err != nil {
			t.Fatalf("exec %q: %v", script, err)
		}
		return string(res.Stdout) + string(res.Stderr), res.ExitCode
	}
	out, _ := sh(vmDevProbe([]string{"null", "zero"}) +
		"; echo x > /dev/null && echo null-takes; head -c 4 /dev/zero | od -An -tx1")
	for _, want := range []string{"OPEN-null", "OPEN-zero", "null-takes", "00 00 00 00"} {
		if !strings.Contains(out, want) {
			t.Fatalf("control: %q missing: the probe cannot see a working node: %q", want, out)
		}
	}

	hostile := []string{"userfaultfd", "fuse", "ttyS0", "console", "tty0", "tty1", "vcs", "vcsa",
		"mem", "kmem", "port", "kmsg", "hpet", "hwrng", "snapshot", "cpu_dma_latency",
		"vga_arbiter", "vport0p1", "vport1p1", "vda", "vdb", "loop-control"}
	out, _ = sh(vmDevProbe(hostile))
	t.Logf("hostile nodes:\n%s", strings.TrimSpace(out))
	for _, d := range hostile {
		if strings.Contains(out, "OPEN-"+d+"\n") {
			t.Errorf("ATTACK: a workload opened /dev/%s", d)
		}
	}

	// No way back: a node cannot be made, devtmpfs cannot be mounted.
	out, _ = sh("mknod /dev/lb-fifo p && echo fifo-made; rm -f /dev/lb-fifo; " +
		"mknod /dev/lb-mem c 1 1 2>/dev/null && echo MKNOD-OK; rm -f /dev/lb-mem; " +
		"mkdir -p /tmp/lb-dev && mount -t devtmpfs devtmpfs /tmp/lb-dev 2>/dev/null && echo MOUNT-OK; " +
		"ls /tmp/lb-dev")
	if !strings.Contains(out, "fifo-made") {
		t.Fatalf("control: guest root could not make a FIFO in /dev: %q", out)
	}
	if strings.Contains(out, "MKNOD-OK") || strings.Contains(out, "MOUNT-OK") {
		t.Errorf("ATTACK: a workload made a device node or mounted devtmpfs: %q", out)
	}

	// The agent's own needs: a TTY exec gets a pty of the private devpts.
	out, code := sh("tty; stty size", lockbox.WithTTY(24, 80))
	if code != 0 || !strings.Contains(out, "/dev/pts/") || !strings.Contains(out, "24 80") {
		t.Errorf("TTY exec: exit %d %q, want a /dev/pts terminal of 24x80", code, out)
	}

	// The same list as a native sandbox's.
	vm := devEntries(ctx, t, sb)
	nat, err := lockbox.CreateSandbox(ctx, lockbox.WithName("s6-attack-dev-native"), lockbox.WithReplace(),
		lockbox.WithIsolation(lockbox.IsolationNative))
	if err != nil {
		t.Fatalf("native sandbox: %v", err)
	}
	defer func() { _ = nat.Remove(context.Background()) }()
	native := devEntries(ctx, t, nat)
	if strings.Join(vm, " ") != strings.Join(native, " ") {
		t.Errorf("microVM /dev %v, native /dev %v", vm, native)
	}
}
