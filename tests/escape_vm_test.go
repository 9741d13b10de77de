package tests

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"lockbox.dev/lockbox"
)

// TestEscapeVM: the escape tests that apply to the microVM backend, in
// ONE VM boot (TCG here, ~10 s). Root in the guest cannot reach the host's
// files, load a kernel module, open the agent port or disks as device
// nodes, reach the host's network, or read host memory through /dev/mem
// or /proc/kcore; a fork bomb and a memory bomb stay inside the VM; and
// qemu itself runs under Lockbox's seccomp filter and Landlock on top of
// its own `-sandbox`. Each check has a control showing it can see a
// success.
func TestEscapeVM(t *testing.T) {
	needEngine(t)
	if r := vmSkipReason(); r != "" {
		t.Skip(r)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()

	// The host's secret: a random token in a host file.
	tok := make([]byte, 16)
	rand.Read(tok)
	token := "lockbox-host-" + hex.EncodeToString(tok)
	hostDir := t.TempDir()
	hostFile := filepath.Join(hostDir, "marker.txt")
	if err := os.WriteFile(hostFile, []byte(token+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	// A host listener a guest would reach if it had a way out.
	ln, err := net.Listen("tcp", "0.0.0.0:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan struct{}, 16)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
			accepted <- struct{}{}
		}
	}()
	port := strconv.Itoa(ln.Addr().(*net.TCPAddr).Port)

	sb, err := lockbox.CreateSandbox(ctx, lockbox.WithName("escape-vm"), lockbox.WithReplace(),
		lockbox.WithIsolation(lockbox.IsolationMicroVM), lockbox.WithMemory(128), lockbox.WithPids(64),
		lockbox.WithCPUs(1))
	if err != nil {
		t.Fatalf("CreateSandbox: %v", err)
	}
	defer sb.Remove(context.Background())
	info, err := sb.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	sh := func(script string) *lockbox.ExecResult {
		t.Helper()
		res, err := sb.Shell(ctx, script)
		if err != nil {
			t.Fatalf("shell %q: %v", script, err)
		}
		return res
	}
	probeBin, err := os.ReadFile(filepath.Join(escapeProbe(t), "escapeprobe"))
	if err != nil {
		t.Fatal(err)
	}
	if err := sb.FS().MkdirAll(ctx, "/probe", 0o755); err != nil {
		t.Fatal(err)
	}
	if err := sb.FS().WriteFile(ctx, "/probe/escapeprobe", probeBin, 0o755); err != nil {
		t.Fatal(err)
	}

	qemuPid := 0
	for _, p := range descendants(info.HelperPID) {
		if strings.Contains(exeOf(p), "qemu-system") {
			qemuPid = p
		}
	}
	if qemuPid == 0 {
		t.Fatalf("no qemu under helper %d", info.HelperPID)
	}

	t.Run("qemu_confined", func(t *testing.T) {
		for _, f := range []string{"vmm_seccomp", "vmm_landlock", "vmm_qemu_sandbox", "vm_assets_verified"} {
			found := false
			for _, e := range info.Enforced {
				found = found || e == f
			}
			if !found {
				t.Errorf("Info().Enforced lacks %s: %v (not enforced: %v)", f, info.Enforced, info.NotEnforced)
			}
		}
		qemu := qemuPid
		// Control: the helper, which runs unfiltered by design.
		if v := statusField(info.HelperPID, "Seccomp_filters"); v != "0" {
			t.Fatalf("control: helper %d has Seccomp_filters %q: the check below proves nothing", info.HelperPID, v)
		}
		// qemu's own -sandbox filter is one; Lockbox's are three more
		// (deny-list, clone3, x32).
		n, _ := strconv.Atoi(statusField(qemu, "Seccomp_filters"))
		if statusField(qemu, "Seccomp") != "2" || n < 4 {
			t.Fatalf("VMM ESCAPE: qemu %d Seccomp %q Seccomp_filters %d: want mode 2 with Lockbox's filters under qemu's",
				qemu, statusField(qemu, "Seccomp"), n)
		}
		t.Logf("qemu %d: Seccomp_filters %d", qemu, n)
	})

	t.Run("host_files", func(t *testing.T) {
		mustBlock(t, sb, "read", hostFile)
		mustBlock(t, sb, "procroot", hostFile)
		probe(t, sb, "write", filepath.Join(hostDir, "pwned"))
		// Control: a file holding the token inside the guest is found by
		// the same search that must find nothing else.
		if err := sb.FS().WriteFile(ctx, "/root/control.txt", []byte(token), 0o644); err != nil {
			t.Fatal(err)
		}
		// Every directory of the guest's root but the kernel's views
		// (/proc, /sys, /dev: endless files such as /dev/zero).
		res := sh("for d in /*; do case $d in /proc|/sys|/dev) ;; *) grep -rlsF " + token + " $d;; esac; done; true")
		hits := strings.Fields(string(res.Stdout))
		if len(hits) != 1 || hits[0] != "/root/control.txt" {
			t.Fatalf("ESCAPE or broken control: the token is at %v in the guest (want only /root/control.txt)", hits)
		}
		b, err := os.ReadFile(hostFile)
		ents, _ := os.ReadDir(hostDir)
		if err != nil || string(b) != token+"\n" || len(ents) != 1 {
			t.Fatalf("HOST CHANGED: marker %q (%v), dir holds %d entries", b, err, len(ents))
		}
	})

	t.Run("kernel_module", func(t *testing.T) {
		mustBlock(t, sb, "module")
	})

	t.Run("device_nodes", func(t *testing.T) {
		// Control: the port and the disks exist (sysfs names them) and
		// mknod itself runs here (a FIFO needs no privilege).
		res := sh("cat /sys/class/virtio-ports/vport*/dev; cat /sys/block/vda/dev; mkfifo /tmp/ctl.fifo && echo fifo-ok")
		lines := strings.Fields(string(res.Stdout))
		if len(lines) != 3 || lines[2] != "fifo-ok" {
			t.Fatalf("control: %q %q", res.Stdout, res.Stderr)
		}
		for i, dev := range lines[:2] {
			mm := strings.Split(dev, ":")
			kind := map[int]string{0: "c", 1: "b"}[i]
			r := sh("ls /dev | grep -E '^(vport|vd)'; mknod /tmp/n" + strconv.Itoa(i) + " " + kind + " " + mm[0] + " " + mm[1] +
				" && head -c 16 /tmp/n" + strconv.Itoa(i) + " | wc -c")
			if r.ExitCode == 0 || len(strings.TrimSpace(string(r.Stdout))) > 0 {
				t.Fatalf("VM ESCAPE PATH: device %s %s openable: exit %d %q %q", kind, dev, r.ExitCode, r.Stdout, r.Stderr)
			}
			t.Logf("mknod %s %s: %s", kind, dev, strings.TrimSpace(string(r.Stderr)))
		}
	})

	t.Run("host_network", func(t *testing.T) {
		res := sh("ls /sys/class/net")
		if strings.Fields(string(res.Stdout))[0] != "lo" || len(strings.Fields(string(res.Stdout))) != 1 {
			t.Fatalf("VM ESCAPE PATH: the guest has interfaces %q", res.Stdout)
		}
		targets := []string{"127.0.0.1:" + port, "10.0.2.2:" + port}
		if addrs, err := net.InterfaceAddrs(); err == nil {
			for _, a := range addrs {
				if ip, ok := a.(*net.IPNet); ok && ip.IP.To4() != nil && !ip.IP.IsLoopback() {
					targets = append(targets, net.JoinHostPort(ip.IP.String(), port))
				}
			}
		}
		for _, to := range targets {
			// Control: the host itself reaches the listener there.
			if to != "10.0.2.2:"+port {
				c, err := net.DialTimeout("tcp", to, 2*time.Second)
				if err != nil {
					t.Fatalf("control: host dial %s: %v", to, err)
				}
				c.Close()
				<-accepted
			}
			mustBlock(t, sb, "tcp", to)
		}
		select {
		case <-accepted:
			t.Fatalf("ESCAPE: the host listener accepted a connection from the guest")
		default:
		}
	})

	t.Run("host_memory", func(t *testing.T) {
		// Control: /proc is there and readable.
		if r := sh("head -c 5 /proc/version"); string(r.Stdout) != "Linux" {
			t.Fatalf("control: /proc/version: %q", r.Stdout)
		}
		mustBlock(t, sb, "read", "/dev/mem")
		mustBlock(t, sb, "read", "/proc/kcore")
		// Even as a fresh node: no CAP_MKNOD (and whatever it shows is
		// the guest's RAM, the VM's, never the host's).
		r := sh("mknod /tmp/mem c 1 1 && head -c 16 /tmp/mem | wc -c")
		if r.ExitCode == 0 {
			t.Fatalf("ESCAPE PATH: /dev/mem node made and read in the guest: %q", r.Stdout)
		}
	})

	t.Run("bombs_stay_inside", func(t *testing.T) {
		before := cgInt(t, cgFile(t, qemuPid, "pids", "pids.current"))
		// The fork bomb: processes start until the guest's pids limit,
		// and none of them is a host process.
		// ash gives up at the first failed fork: the bomb runs in a
		// subshell, and the count uses builtins only (nothing can fork at
		// the limit).
		res := sh("(for i in $(seq 200); do sleep 3 & done); set -- /proc/[0-9]*; echo $#")
		inGuest, _ := strconv.Atoi(strings.TrimSpace(string(res.Stdout)))
		if inGuest < 30 || !strings.Contains(strings.ToLower(string(res.Stderr)), "fork") {
			t.Fatalf("control: the bomb did not reach the guest's limit: %d processes, stderr %q", inGuest, res.Stderr)
		}
		during := cgInt(t, cgFile(t, qemuPid, "pids", "pids.current"))
		// Guest processes on the host would add inGuest (30 or more)
		// tasks; qemu's own worker threads come and go with the guest's
		// I/O, so the bar is half the bomb, not a fixed few.
		if during > before+int64(max(8, inGuest/2)) {
			t.Fatalf("ESCAPE: guest processes reached the host: qemu's cgroup had %d tasks, %d during the bomb", before, during)
		}
		time.Sleep(3 * time.Second)
		// The memory bomb: killed inside; qemu's host memory stays under
		// its cgroup's bound.
		r, err := sb.Exec(ctx, "dd", "if=/dev/zero", "of=/dev/null", "bs=160M", "count=1")
		if err != nil || r.Signal != 9 {
			t.Fatalf("memory bomb: %v exit %d signal %d (want SIGKILL in the guest)", err, r.ExitCode, r.Signal)
		}
		cur := cgInt(t, cgFile(t, qemuPid, "memory", "memory.current", "memory.usage_in_bytes"))
		max := cgInt(t, cgFile(t, qemuPid, "memory", "memory.max", "memory.limit_in_bytes"))
		if cur < 32<<20 || cur > max {
			t.Fatalf("qemu's cgroup memory %d (max %d): want the guest's RAM, under the bound", cur, max)
		}
		if r := sh("echo alive"); string(r.Stdout) != "alive\n" {
			t.Fatalf("VM does not answer after the bombs: %q", r.Stdout)
		}
		t.Logf("guest processes %d; qemu cgroup tasks %d -> %d; memory %d MiB of %d", inGuest, before, during, cur>>20, max>>20)
	})
}

// cgFile is the first of names (cgroup v2's name, then v1's) in the
// host cgroup of pid for controller (v2: the one hierarchy; v1: the
// controller's, which may be nested below the caller's own).
func cgFile(t *testing.T, pid int, controller string, names ...string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "cgroup"))
	if err != nil {
		t.Fatal(err)
	}
	var dirs []string
	for _, l := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		f := strings.SplitN(l, ":", 3)
		if len(f) != 3 {
			continue
		}
		if f[1] == "" {
			dirs = append(dirs, filepath.Join("/sys/fs/cgroup", f[2]), filepath.Join("/sys/fs/cgroup/unified", f[2]))
		}
		for _, c := range strings.Split(f[1], ",") {
			if c == controller {
				dirs = append(dirs, filepath.Join("/sys/fs/cgroup", controller, f[2]))
			}
		}
	}
	for _, n := range names {
		for _, d := range dirs {
			if _, err := os.Stat(filepath.Join(d, n)); err == nil {
				return filepath.Join(d, n)
			}
		}
	}
	t.Fatalf("no cgroup file %v for pid %d in %v", names, pid, dirs)
	return ""
}

func cgInt(t *testing.T, path string) int64 {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	s := strings.TrimSpace(string(b))
	if s == "max" {
		return 1 << 62
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		t.Fatalf("%s: %q", path, s)
	}
	return n
}
