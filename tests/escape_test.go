package tests

import (
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"lockbox.dev/lockbox"
)

// Each test tries one way out of a sandbox, asserts the attempt failed, and
// asserts the host is unchanged. The probes are direct system calls
// (cmd/escapeprobe), so a pass means the kernel refused, not that a shell
// utility was missing.

func TestEscapeHostMarkerFile(t *testing.T) {
	needEngine(t)
	_, file, unchanged := hostMarker(t)
	sb := newSandbox(t)
	mustBlock(t, sb, "read", file)
	// A write to the same path lands in the sandbox's own /tmp, if
	// anywhere; the host file must not change.
	probe(t, sb, "write", file)
	unchanged()
	mustBlock(t, sb, "procroot", file)
	unchanged()
}

func TestEscapeLoopbackServiceWithNetworkNone(t *testing.T) {
	needEngine(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var accepted atomic.Int32
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			accepted.Add(1)
			c.Close()
		}
	}()
	sb := newSandbox(t, lockbox.WithNetwork(lockbox.NetworkNone))
	mustBlock(t, sb, "tcp", ln.Addr().String())
	// The host's address as seen from the host's other interfaces too.
	port := strconv.Itoa(ln.Addr().(*net.TCPAddr).Port)
	mustBlock(t, sb, "tcp", "10.0.2.2:"+port)
	if n := accepted.Load(); n != 0 {
		t.Fatalf("HOST CHANGED: the host listener accepted %d connections", n)
	}
	// The listener still works for the host.
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
}

func TestEscapeSeeOrSignalHostProcesses(t *testing.T) {
	needEngine(t)
	victim := exec.Command("sleep", "300")
	if err := victim.Start(); err != nil {
		t.Fatal(err)
	}
	defer victim.Process.Kill()
	pid := victim.Process.Pid
	sb := newSandbox(t)

	res, err := sb.Shell(context.Background(), "ls /proc | grep -c '^[0-9]'")
	if err != nil {
		t.Fatal(err)
	}
	n, _ := strconv.Atoi(strings.TrimSpace(string(res.Stdout)))
	if n == 0 || n > 10 {
		t.Fatalf("sandbox sees %d processes in /proc (want only its own few)", n)
	}
	if res, _ := sb.Shell(context.Background(), "cat /proc/"+strconv.Itoa(pid)+"/cmdline"); strings.Contains(string(res.Stdout), "sleep") {
		t.Fatalf("ESCAPE: sandbox reads the host process's cmdline: %q", res.Stdout)
	}
	probe(t, sb, "kill", strconv.Itoa(pid))
	time.Sleep(100 * time.Millisecond)
	if err := syscall.Kill(pid, 0); err != nil {
		t.Fatalf("HOST CHANGED: host process %d is gone: %v", pid, err)
	}
}

func TestEscapeMountModulePtraceOpenByHandle(t *testing.T) {
	needEngine(t)
	before, _ := os.ReadFile("/proc/self/mountinfo")
	modsBefore, _ := os.ReadFile("/proc/modules")
	sb := newSandbox(t)
	mustBlock(t, sb, "mount")
	mustBlock(t, sb, "module")
	mustBlock(t, sb, "ptrace")
	mustBlock(t, sb, "open_by_handle")
	after, _ := os.ReadFile("/proc/self/mountinfo")
	if strings.Contains(string(after), "/mnt/probe") && !strings.Contains(string(before), "/mnt/probe") {
		t.Fatal("HOST CHANGED: a probe mount appeared in the host's mount table")
	}
	if modsAfter, _ := os.ReadFile("/proc/modules"); string(modsAfter) != string(modsBefore) {
		t.Fatal("HOST CHANGED: /proc/modules changed")
	}
}

func TestEscapeHostname(t *testing.T) {
	needEngine(t)
	before, _ := os.Hostname()
	sb := newSandbox(t)
	line, _ := probe(t, sb, "hostname", "pwned-by-sandbox")
	if strings.HasPrefix(line, "ESCAPED") {
		t.Fatalf("ESCAPE: %s", line)
	}
	after, _ := os.Hostname()
	if after != before {
		t.Fatalf("HOST CHANGED: hostname %q -> %q", before, after)
	}
}

func TestEscapeThroughVolumeSymlinks(t *testing.T) {
	needEngine(t)
	ctx := context.Background()
	mdir, file, unchanged := hostMarker(t)
	vol := t.TempDir()
	if os.Getuid() == 0 {
		// As root, a volume owned by host root is mounted without an id
		// mapping; sandbox root (host 100000) writes where the mode lets it.
		os.Chown(vol, 100000, 100000)
	}
	ro := t.TempDir()
	os.WriteFile(filepath.Join(ro, "keep.txt"), []byte("keep"), 0o644)
	sb := newSandbox(t, lockbox.WithVolume(vol, "/vol", false), lockbox.WithVolume(ro, "/ro", true))

	// A read-only volume refuses writes, and the host copy is unchanged.
	if res, _ := sb.Shell(ctx, "echo x > /ro/keep.txt; echo y > /ro/new.txt"); res.ExitCode == 0 {
		t.Fatal("ESCAPE: wrote to a read-only volume")
	}
	if b, _ := os.ReadFile(filepath.Join(ro, "keep.txt")); string(b) != "keep" {
		t.Fatalf("HOST CHANGED: read-only volume file now %q", b)
	}
	if _, err := os.Stat(filepath.Join(ro, "new.txt")); err == nil {
		t.Fatal("HOST CHANGED: a file appeared in a read-only volume")
	}

	// The sandbox plants symlinks to host paths in a writable volume; the
	// engine's file API must resolve them inside the sandbox root.
	if res, err := sb.Shell(ctx, "ln -s "+mdir+" /vol/dirlink && ln -s "+file+" /vol/filelink && ln -s / /vol/rootlink"); err != nil || res.ExitCode != 0 {
		t.Fatalf("planting the links failed, so nothing below would be tested: %v %s", err, res.Stderr)
	}
	if target, err := os.Readlink(filepath.Join(vol, "filelink")); err != nil || target != file {
		t.Fatalf("the planted link is not on the host volume: %q %v", target, err)
	}
	f := sb.FS()
	for _, p := range []string{"/vol/dirlink/marker.txt", "/vol/filelink", "/vol/rootlink" + file} {
		if b, err := f.ReadFile(ctx, p); err == nil && strings.Contains(string(b), "host-secret") {
			t.Fatalf("ESCAPE: FS().ReadFile(%s) returned the host secret", p)
		}
		_ = f.WriteFile(ctx, p, []byte("pwned"), 0o644)
		unchanged()
	}
	_ = f.MkdirAll(ctx, "/vol/dirlink/sub", 0o755)
	_ = f.Rename(ctx, "/vol/filelink", "/vol/dirlink/moved")
	_ = f.RemoveAll(ctx, "/vol/dirlink/")
	unchanged()
	// Inside the sandbox the same links do not reach the host either.
	mustBlock(t, sb, "read", "/vol/dirlink/marker.txt")
	unchanged()
}

func TestEscapeThroughCopyToHost(t *testing.T) {
	needEngine(t)
	ctx := context.Background()
	mdir, file, unchanged := hostMarker(t)
	sb := newSandbox(t)
	if _, err := sb.Shell(ctx, "mkdir -p /out && echo data > /out/ok.txt && ln -s "+mdir+" /out/evil && ln -s "+file+" /out/evilfile"); err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(t.TempDir(), "copy")
	if err := sb.FS().CopyToHost(ctx, "/out", dst); err != nil {
		t.Fatal(err)
	}
	unchanged()
	if l, err := os.Readlink(filepath.Join(dst, "evil")); err != nil || l != mdir {
		t.Fatalf("symlink not copied as a symlink: %q %v", l, err)
	}
	// Second round: the sandbox turns the names into a directory and a
	// file whose contents would land in the host marker if the copy
	// followed the symlinks it made the first time.
	if _, err := sb.Shell(ctx, "rm /out/evil /out/evilfile && mkdir /out/evil && echo pwned > /out/evil/marker.txt && echo pwned > /out/evilfile"); err != nil {
		t.Fatal(err)
	}
	err := sb.FS().CopyToHost(ctx, "/out", dst)
	t.Logf("second copy over planted symlinks: %v", err)
	unchanged()
	// A top-level symlink source is copied as a link, not followed.
	dst2 := filepath.Join(t.TempDir(), "single")
	sb.Shell(ctx, "ln -s "+file+" /out/toplink")
	if err := sb.FS().CopyToHost(ctx, "/out/toplink", dst2); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Lstat(dst2); err != nil || fi.Mode()&os.ModeSymlink == 0 {
		t.Fatalf("top-level link: %v %v", fi, err)
	}
	unchanged()
}

func TestEscapeThroughCopyFromHost(t *testing.T) {
	needEngine(t)
	ctx := context.Background()
	mdir, _, unchanged := hostMarker(t)
	src := t.TempDir()
	os.WriteFile(filepath.Join(src, "marker.txt"), []byte("pwned"), 0o644)
	os.WriteFile(filepath.Join(src, "new.txt"), []byte("pwned"), 0o644)
	sb := newSandbox(t)
	// The sandbox makes its destination a symlink to the host marker dir.
	if _, err := sb.Shell(ctx, "ln -s "+mdir+" /in; mkdir -p /in2 && ln -s "+mdir+"/marker.txt /in2/marker.txt"); err != nil {
		t.Fatal(err)
	}
	err1 := sb.FS().CopyFromHost(ctx, src, "/in")
	err2 := sb.FS().CopyFromHost(ctx, src, "/in2")
	t.Logf("copies into planted links: %v / %v", err1, err2)
	unchanged()
}

func TestEscapeForkBombPastPids(t *testing.T) {
	needEngine(t)
	const limit = 32
	sb := newSandbox(t, lockbox.WithPids(limit))
	info, err := sb.Info(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if reason, ok := hasFeature(info.NotEnforced, "pids"); ok {
		t.Skipf("pids limit not enforced on this machine (reported: %s)", reason)
	}
	line, _ := probe(t, sb, "forkbomb")
	var n int
	var rest string
	if _, err := fmtSscan(line, &n, &rest); err != nil {
		t.Fatalf("forkbomb output %q", line)
	}
	if n >= limit {
		t.Fatalf("ESCAPE: started %d processes with a pids limit of %d", n, limit)
	}
	// The sandbox is still usable after the bomb is killed.
	if err := sb.Kill(context.Background()); err != nil {
		t.Fatal(err)
	}
}

func TestEscapeAllocatePastMemory(t *testing.T) {
	needEngine(t)
	sb := newSandbox(t, lockbox.WithMemory(64))
	info, err := sb.Info(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if reason, ok := hasFeature(info.NotEnforced, "memory"); ok {
		t.Skipf("memory limit not enforced on this machine (reported: %s)", reason)
	}
	line, res := probe(t, sb, "alloc", "512")
	if strings.HasPrefix(line, "ESCAPED") || res.ExitCode == 0 {
		t.Fatalf("ESCAPE: allocated past the memory limit: %q exit %d", line, res.ExitCode)
	}
	if m, err := sb.Metrics(context.Background()); err == nil && m.MemoryPeakBytes > 80<<20 {
		t.Fatalf("peak memory %d exceeds the 64 MiB limit", m.MemoryPeakBytes)
	}
}

func TestEscapeFillWritableLayer(t *testing.T) {
	needEngine(t)
	sb := newSandbox(t, lockbox.WithDisk(16))
	info, err := sb.Info(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if reason, ok := hasFeature(info.NotEnforced, "disk"); ok {
		t.Skipf("disk budget not enforced on this machine (reported: %s)", reason)
	}
	mustBlock(t, sb, "fill", "/big", "64")
}
