package tests

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"lockbox.dev/lockbox"
)

// The backend matrix (issue 14): the same sandbox API checks against the
// native backend and the microVM backend. The microVM runs under TCG here
// (LOCKBOX_VM_ACCEL=tcg, set by `make test-vm-backend`); one VM boot per
// run keeps it to ~10-30 s: every check of a backend shares one sandbox.

type backend struct {
	name string
	iso  lockbox.Isolation
}

// vmSkipReason says why this host cannot run the microVM half, or "".
func vmSkipReason() string {
	if _, err := os.Stat("/usr/bin/qemu-system-x86_64"); err != nil {
		return "qemu-system-x86_64 is not installed (Debian: qemu-system-x86)"
	}
	dir := os.Getenv("LOCKBOX_VM_ASSETS")
	if dir == "" {
		return "LOCKBOX_VM_ASSETS is not set: run `make test-vm-backend` (builds build/vm)"
	}
	for _, f := range []string{"vmlinuz", "initramfs.img"} {
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
			return "VM asset missing: " + err.Error()
		}
	}
	if os.Getenv("LOCKBOX_VM_ACCEL") == "" {
		return "LOCKBOX_VM_ACCEL is not set (tcg here: this host's KVM does not boot the guest)"
	}
	return ""
}

func backends(t *testing.T) []backend {
	needEngine(t)
	return []backend{{"native", lockbox.IsolationNative}, {"microvm", lockbox.IsolationMicroVM}}
}

func skipUnlessBackend(t *testing.T, b backend) {
	t.Helper()
	if b.iso == lockbox.IsolationMicroVM {
		if r := vmSkipReason(); r != "" {
			t.Skip(r)
		}
	}
}

// descendants lists the pids whose parent chain reaches root.
func descendants(root int) []int {
	parent := map[int]int{}
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
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
			parent[pid], _ = strconv.Atoi(f[1])
		}
	}
	var out []int
	for pid := range parent {
		for p := parent[pid]; p > 1; p = parent[p] {
			if p == root {
				out = append(out, pid)
				break
			}
		}
	}
	return out
}

func exeOf(pid int) string {
	l, _ := os.Readlink(filepath.Join("/proc", strconv.Itoa(pid), "exe"))
	return l
}

func alive(pid int) bool {
	_, err := os.Stat(filepath.Join("/proc", strconv.Itoa(pid)))
	return err == nil
}

// TestBackendMatrix: a detached sandbox reattached from a second process
// (killed mid-session) and again from this one, with its processes and
// files intact; exec with exit codes and streaming, files both ways, a
// memory limit hit inside the sandbox (with a control under it), metrics,
// Info's backend, Stop on the reattached handle, and removal leaving
// nothing behind.
func TestBackendMatrix(t *testing.T) {
	for _, b := range backends(t) {
		t.Run(b.name, func(t *testing.T) {
			skipUnlessBackend(t, b)
			ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
			defer cancel()
			name := "matrix-" + b.name
			start := time.Now()
			sb, err := lockbox.CreateSandbox(ctx, lockbox.WithName(name), lockbox.WithReplace(),
				lockbox.WithIsolation(b.iso), lockbox.WithMemory(128), lockbox.WithCPUs(1),
				lockbox.WithDetached())
			if err != nil {
				t.Fatalf("CreateSandbox: %v", err)
			}
			removed := false
			defer func() {
				if !removed {
					_ = lockbox.RemoveSandbox(context.Background(), name)
				}
			}()
			t.Logf("%s: create %v", b.name, time.Since(start))
			sb = detachAndReattach(t, ctx, sb, b)

			info, err := sb.Info(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if info.Backend.Kind != b.name {
				t.Fatalf("Info().Backend = %+v, want kind %q", info.Backend, b.name)
			}
			t.Logf("backend: %s; enforced %v; not enforced %v", info.Backend.Boundary, info.Enforced, info.NotEnforced)

			// Whose kernel: the guest's differs from the host's.
			host, _ := os.ReadFile("/proc/sys/kernel/osrelease")
			res, err := sb.Exec(ctx, "cat", "/proc/sys/kernel/osrelease")
			if err != nil || res.ExitCode != 0 {
				t.Fatalf("osrelease: %v %+v", err, res)
			}
			sameKernel := bytes.Equal(bytes.TrimSpace(res.Stdout), bytes.TrimSpace(host))
			if sameKernel != (b.iso == lockbox.IsolationNative) {
				t.Fatalf("kernel %q vs host %q: wrong for %s", res.Stdout, host, b.name)
			}

			if b.iso == lockbox.IsolationMicroVM {
				// The agent's port exists (sysfs names it) but has no node
				// a workload could open to talk to the host directly.
				res, err := sb.Shell(ctx, "cat /sys/class/virtio-ports/*/name; ls /dev | grep -E '^(vport|vd)' || echo no-nodes")
				if err != nil || !strings.Contains(string(res.Stdout), "lockbox.agent") {
					t.Fatalf("control: the port is not visible in sysfs: %v %q", err, res.Stdout)
				}
				if !strings.HasSuffix(string(res.Stdout), "no-nodes\n") {
					t.Fatalf("VM ESCAPE PATH: device nodes reachable in the guest: %q", res.Stdout)
				}
			}

			// Exit codes, stdout and stderr.
			res, err = sb.Shell(ctx, "echo out; echo err >&2; exit 7")
			if err != nil {
				t.Fatal(err)
			}
			if res.ExitCode != 7 || string(res.Stdout) != "out\n" || string(res.Stderr) != "err\n" {
				t.Fatalf("shell: exit %d stdout %q stderr %q", res.ExitCode, res.Stdout, res.Stderr)
			}

			// Streaming: the first line arrives while the process still runs.
			st, err := sb.ExecStream(ctx, []string{"sh", "-c", "echo one; sleep 2; echo two"})
			if err != nil {
				t.Fatal(err)
			}
			t0 := time.Now()
			var first time.Duration
			var out []byte
			var exit lockbox.ExitStatus
			for ev := range st.Events() {
				switch ev.Kind {
				case lockbox.EventStdout:
					if first == 0 {
						first = time.Since(t0)
					}
					out = append(out, ev.Data...)
				case lockbox.EventExit:
					exit = ev.Exit
					if ev.Err != nil {
						t.Fatal(ev.Err)
					}
				}
			}
			total := time.Since(t0)
			if string(out) != "one\ntwo\n" || exit.ExitCode != 0 || first == 0 || total-first < time.Second {
				t.Fatalf("stream: %q exit %+v first after %v of %v", out, exit, first, total)
			}

			// Files both ways.
			if err := sb.FS().WriteFile(ctx, "/tmp/in.txt", []byte("from host\n"), 0o644); err != nil {
				t.Fatal(err)
			}
			res, err = sb.Shell(ctx, "cat /tmp/in.txt; echo from guest > /tmp/out.txt")
			if err != nil || string(res.Stdout) != "from host\n" {
				t.Fatalf("read back: %v %q", err, res.Stdout)
			}
			got, err := sb.FS().ReadFile(ctx, "/tmp/out.txt")
			if err != nil || string(got) != "from guest\n" {
				t.Fatalf("ReadFile: %v %q", err, got)
			}

			// The memory limit: 16 MiB fits (the control), 160 MiB is
			// killed inside the sandbox, which stays usable.
			res, err = sb.Shell(ctx, "dd if=/dev/zero of=/dev/null bs=16M count=1 2>/dev/null && echo fits")
			if err != nil || res.ExitCode != 0 || string(res.Stdout) != "fits\n" {
				t.Fatalf("control allocation: %v %+v", err, res)
			}
			res, err = sb.Exec(ctx, "dd", "if=/dev/zero", "of=/dev/null", "bs=160M", "count=1")
			if err != nil {
				t.Fatal(err)
			}
			if res.ExitCode == 0 || res.Signal != 9 {
				t.Fatalf("160 MiB under a 128 MiB limit: exit %d signal %d (want SIGKILL by the OOM killer)", res.ExitCode, res.Signal)
			}
			if r, err := sb.Exec(ctx, "true"); err != nil || r.ExitCode != 0 {
				t.Fatalf("sandbox after OOM: %v %+v", err, r)
			}

			m, err := sb.Metrics(ctx)
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("%s: metrics %+v", b.name, m)
			if m.MemoryBytes == 0 {
				t.Fatalf("no memory reported")
			}
			if b.iso == lockbox.IsolationMicroVM && m.MemoryBytes < 32<<20 {
				t.Fatalf("microvm memory %d: the VMM's cgroup (guest RAM) should be far above 32 MiB", m.MemoryBytes)
			}

			// Stop on the reattached handle ends the helper and the VMM;
			// Remove then leaves nothing: no sandbox dir (socket, disks),
			// no cgroup.
			procs := descendants(info.HelperPID)
			if b.iso == lockbox.IsolationMicroVM {
				qemu := 0
				for _, p := range procs {
					if strings.Contains(exeOf(p), "qemu-system") {
						qemu++
					}
				}
				if qemu != 1 {
					t.Fatalf("want one qemu under helper %d, found %d among %v", info.HelperPID, qemu, procs)
				}
				checkVMMConfined(t, info.HelperPID, procs)
			}
			dir := filepath.Join(os.Getenv("LOCKBOX_HOME"), "sandboxes", name)
			if _, err := os.Stat(dir); err != nil {
				t.Fatalf("sandbox dir %s: %v (the removal check below would prove nothing)", dir, err)
			}
			if err := sb.Stop(ctx); err != nil {
				t.Fatalf("Stop (reattached): %v", err)
			}
			// 30 s: qemu's exit under TCG on a loaded machine can take seconds.
			deadline := time.Now().Add(30 * time.Second)
			for _, p := range append(procs, info.HelperPID) {
				for alive(p) && time.Now().Before(deadline) {
					time.Sleep(50 * time.Millisecond)
				}
				if alive(p) {
					t.Fatalf("pid %d (%s) survived Stop", p, exeOf(p))
				}
			}
			if i, err := sb.Info(ctx); err != nil || i.Status != "stopped" {
				t.Fatalf("after Stop: %v %+v", err, i)
			}
			if err := sb.Remove(ctx); err != nil {
				t.Fatal(err)
			}
			removed = true
			if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
				t.Fatalf("sandbox dir %s after Remove: %v", dir, err)
			}
			cg, _ := filepath.Glob("/sys/fs/cgroup/*/lockbox/" + info.ID)
			cg2, _ := filepath.Glob("/sys/fs/cgroup/lockbox/" + info.ID)
			if len(cg)+len(cg2) > 0 {
				t.Fatalf("cgroups left: %v %v", cg, cg2)
			}
		})
	}
}

// detachAndReattach: the matrix's sandbox is detached. A counter runs in
// it; this handle is closed; a second process (this test binary again)
// reattaches, sees the counter, and is SIGKILLed in the middle of an exec
// flooding its connection (an engine killed mid-session: for a VM, its
// bytes are still in flight on the port); then this process reattaches
// (GetSandbox after Close) and finds the same counter process still
// counting and the files it left. Returns the reattached handle.
func detachAndReattach(t *testing.T, ctx context.Context, sb *lockbox.Sandbox, b backend) *lockbox.Sandbox {
	t.Helper()
	name := sb.Name()
	info, err := sb.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// Out of this process's session: a Ctrl-C or hangup meant for it must
	// not reach the sandbox.
	if sessionOf(info.HelperPID) == sessionOf(os.Getpid()) {
		t.Fatalf("helper %d of a detached sandbox is in the test's session %s", info.HelperPID, sessionOf(os.Getpid()))
	}
	res, err := sb.Shell(ctx, "echo 0 > /tmp/counter; (i=0; while :; do i=$((i+1)); echo $i > /tmp/counter.new; mv /tmp/counter.new /tmp/counter; sleep 0.2; done) >/dev/null 2>&1 & echo $!")
	if err != nil || res.ExitCode != 0 {
		t.Fatalf("counter: %v %+v", err, res)
	}
	counter := strings.TrimSpace(string(res.Stdout))
	if err := sb.FS().WriteFile(ctx, "/tmp/state.txt", []byte("kept across reattach\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := sb.Close(); err != nil {
		t.Fatalf("Close (detached): %v", err)
	}
	if !alive(info.HelperPID) {
		t.Fatalf("detached %s sandbox's helper %d died with its handle", b.name, info.HelperPID)
	}

	t0 := time.Now()
	child := exec.Command(os.Args[0], "-test.run=^TestBackendMatrixReattachChild$", "-test.v")
	child.Env = append(os.Environ(), "LOCKBOX_MATRIX_CHILD="+name+" "+counter)
	out, _ := child.StdoutPipe()
	child.Stderr = os.Stderr
	if err := child.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = child.Process.Kill(); _ = child.Wait() }()
	sc := bufio.NewScanner(out)
	var seen int
	ready := false
	for !ready && sc.Scan() {
		f := strings.Fields(sc.Text())
		switch {
		case len(f) > 0 && f[0] == "ERROR":
			t.Fatalf("second process: %s", sc.Text())
		case len(f) == 2 && f[0] == "COUNTER":
			seen, _ = strconv.Atoi(f[1])
		case len(f) == 1 && f[0] == "READY":
			ready = true
		}
	}
	if !ready || seen == 0 {
		t.Fatalf("second process never reattached (counter %d)", seen)
	}
	t.Logf("%s: second process reattached and saw counter %d after %v", b.name, seen, time.Since(t0))
	_ = child.Process.Signal(syscall.SIGKILL)
	_ = child.Wait()

	t0 = time.Now()
	sb, err = lockbox.GetSandbox(ctx, name)
	if err != nil {
		t.Fatalf("reattach after a killed second process: %v", err)
	}
	t.Logf("%s: reattach (GetSandbox) %v", b.name, time.Since(t0))
	res, err = sb.Shell(ctx, "kill $(pidof yes) 2>/dev/null; cat /tmp/state.txt")
	if err != nil || res.ExitCode != 0 || string(res.Stdout) != "kept across reattach\n" {
		t.Fatalf("after reattach: the state is gone: %v %+v", err, res)
	}
	// The counter process is the same one and still counting (30 s: a
	// TCG guest on a loaded machine is slow).
	for deadline := time.Now().Add(30 * time.Second); ; {
		res, err = sb.Shell(ctx, "kill -0 "+counter+" && cat /tmp/counter")
		if err != nil || res.ExitCode != 0 {
			t.Fatalf("after reattach: counter process %s is gone: %v %+v", counter, err, res)
		}
		n, _ := strconv.Atoi(strings.TrimSpace(string(res.Stdout)))
		if n > seen {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("counter %d after reattach, %d before: it did not keep running", n, seen)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if i, err := sb.Info(ctx); err != nil || i.HelperPID != info.HelperPID || i.ID != info.ID {
		t.Fatalf("reattached to another sandbox: %v %+v", err, i)
	}
	return sb
}

// TestBackendMatrixReattachChild is the second process of
// detachAndReattach: it reattaches to the sandbox named in
// LOCKBOX_MATRIX_CHILD, reports its counter, and floods its connection
// until it is killed.
func TestBackendMatrixReattachChild(t *testing.T) {
	spec := strings.Fields(os.Getenv("LOCKBOX_MATRIX_CHILD"))
	if len(spec) != 2 {
		t.Skip("the second process of TestBackendMatrix")
	}
	ctx := context.Background()
	sb, err := lockbox.GetSandbox(ctx, spec[0])
	if err != nil {
		fmt.Println("ERROR", err)
		os.Exit(1)
	}
	res, err := sb.Shell(ctx, "kill -0 "+spec[1]+" && cat /tmp/counter")
	if err != nil || res.ExitCode != 0 {
		fmt.Println("ERROR counter:", err, res)
		os.Exit(1)
	}
	fmt.Println("COUNTER", strings.TrimSpace(string(res.Stdout)))
	st, err := sb.ExecStream(ctx, []string{"sh", "-c", "exec yes stale-from-a-killed-engine"})
	if err != nil {
		fmt.Println("ERROR", err)
		os.Exit(1)
	}
	got := 0
	for ev := range st.Events() {
		got += len(ev.Data)
		if got > 256<<10 {
			break
		}
	}
	fmt.Println("READY")
	time.Sleep(time.Hour)
}

func sessionOf(pid int) string {
	b, _ := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	s := string(b)
	if f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:]); len(f) > 3 {
		return f[3]
	}
	return ""
}

// TestMicroVMUnsupported: what the microVM backend cannot do fails with
// ErrUnsupported naming the backend, before anything boots; the same
// options on the native backend work (the control).
func TestMicroVMUnsupported(t *testing.T) {
	needEngine(t)
	if r := vmSkipReason(); r != "" {
		t.Skip(r)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	vol := t.TempDir()
	cases := map[string][]lockbox.Option{
		// Network (a policy, plain outbound, published ports) works now:
		// TestMicroVMNetwork. A volume of one file does not (virtio-fs
		// shares directories).
		"file volume": {lockbox.WithVolume(oneFile(t), "/f", true)},
	}
	for what, opts := range cases {
		t0 := time.Now()
		sb, err := lockbox.CreateSandbox(ctx, append(opts, lockbox.WithIsolation(lockbox.IsolationMicroVM))...)
		if err == nil {
			_ = sb.Remove(ctx)
			t.Fatalf("%s on microvm: created, want ErrUnsupported", what)
		}
		if !errors.Is(err, lockbox.ErrUnsupported) || !strings.Contains(err.Error(), "microvm") {
			t.Fatalf("%s on microvm: %v, want ErrUnsupported naming the backend", what, err)
		}
		if d := time.Since(t0); d > 5*time.Second {
			t.Fatalf("%s: refused after %v: something was started first", what, d)
		}
		t.Logf("%s: %v", what, err)
	}
	// Control: the volume option itself is fine on the native backend.
	sb, err := lockbox.CreateSandbox(ctx, lockbox.WithVolume(vol, "/data", true))
	if err != nil {
		t.Fatalf("control: native with a volume: %v", err)
	}
	_ = sb.Remove(ctx)
}

func statusField(pid int, key string) string {
	b, _ := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "status"))
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, key+":"); ok {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

func nsOf(pid int, ns string) string {
	l, _ := os.Readlink(filepath.Join("/proc", strconv.Itoa(pid), "ns", ns))
	return l
}

// confinement of one process as the host sees it: "" when confined.
func vmmUnconfined(pid int) []string {
	var why []string
	for _, ns := range []string{"user", "mnt", "pid", "net", "ipc", "uts", "cgroup"} {
		if nsOf(pid, ns) == nsOf(os.Getpid(), ns) {
			why = append(why, "host "+ns+" namespace")
		}
	}
	if v := statusField(pid, "CapEff"); v != "0000000000000000" {
		why = append(why, "CapEff "+v)
	}
	if v := statusField(pid, "CapBnd"); v != "0000000000000000" {
		why = append(why, "CapBnd "+v)
	}
	if v := statusField(pid, "NoNewPrivs"); v != "1" {
		why = append(why, "NoNewPrivs "+v)
	}
	if v := statusField(pid, "Seccomp"); v != "2" {
		why = append(why, "Seccomp "+v)
	}
	if os.Getuid() == 0 {
		if f := strings.Fields(statusField(pid, "Uid")); len(f) == 0 || f[0] == "0" {
			why = append(why, "host uid 0")
		}
	}
	// A qemu taken over by its guest must not be able to grow a file it
	// can write (its disk) over the host's free space.
	if lim, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "limits")); err != nil {
		why = append(why, "limits: "+err.Error())
	} else {
		for _, l := range strings.Split(string(lim), "\n") {
			if strings.HasPrefix(l, "Max file size") && strings.Contains(l, "unlimited") {
				why = append(why, "no file size limit")
			}
		}
	}
	return why
}

// checkVMMConfined: qemu runs in its own namespaces, without capabilities,
// with no_new_privs and a seccomp filter, as an unprivileged host uid,
// and sees a root holding only what it needs. The helper (which stays in
// the host's namespaces, by design) is the control: the same check must
// find it unconfined.
func checkVMMConfined(t *testing.T, helper int, procs []int) {
	t.Helper()
	if len(vmmUnconfined(helper)) == 0 {
		t.Fatalf("control: the helper %d passes the confinement check: the check proves nothing", helper)
	}
	for _, p := range procs {
		if !strings.Contains(exeOf(p), "qemu-system") {
			continue
		}
		if why := vmmUnconfined(p); len(why) > 0 {
			t.Fatalf("VMM ESCAPE: qemu %d is not confined: %v", p, why)
		}
		ents, err := os.ReadDir(filepath.Join("/proc", strconv.Itoa(p), "root"))
		if err != nil {
			t.Fatal(err)
		}
		allowed := map[string]bool{"usr": true, "lib": true, "lib64": true, "bin": true, "dev": true,
			"proc": true, "vm": true, "layers": true, "disk": true}
		var names []string
		for _, e := range ents {
			names = append(names, e.Name())
			if !allowed[e.Name()] {
				t.Fatalf("VMM ESCAPE: qemu's root holds %q (all: %v)", e.Name(), names)
			}
		}
		t.Logf("qemu %d: uid %s, root %v", p, statusField(p, "Uid"), names)
	}
}

func oneFile(t *testing.T) string {
	f := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(f, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	return f
}
