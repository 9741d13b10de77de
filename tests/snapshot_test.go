package tests

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"lockbox.dev/lockbox"
)

// Issue 13: snapshot, fork, pause/resume. Each test uses real sandboxes
// of the base image.

func snapCtx(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func plainSandbox(t *testing.T, opts ...lockbox.Option) *lockbox.Sandbox {
	t.Helper()
	sb, err := lockbox.CreateSandbox(snapCtx(t), opts...)
	if err != nil {
		t.Fatalf("CreateSandbox: %v", err)
	}
	t.Cleanup(func() { _ = sb.Remove(context.Background()) })
	return sb
}

// layerOpts: rootless, a tmpfs writable layer cannot be read from the
// host (only root may open PID 1's fd), so rootless runs put it on disk.
func layerOpts() []lockbox.Option {
	if os.Geteuid() != 0 {
		return []lockbox.Option{lockbox.WithDisk(0)}
	}
	return nil
}

func sh(t *testing.T, sb *lockbox.Sandbox, script string) string {
	t.Helper()
	out, err := sb.Shell(snapCtx(t), script)
	if err != nil {
		t.Fatalf("%s: %v", script, err)
	}
	if out.ExitCode != 0 {
		t.Fatalf("%s: exit %d: %s", script, out.ExitCode, out.Stderr)
	}
	return string(out.Stdout)
}

func uniq(prefix string) string {
	return fmt.Sprintf("%s-%d-%d", prefix, os.Getpid(), time.Now().UnixNano())
}

func removeImage(t *testing.T, name string) {
	t.Cleanup(func() { _ = lockbox.Images().Remove(context.Background(), name) })
}

// What a snapshot holds: new files, a symlink, a deleted image file (a
// whiteout), a replaced directory (opaque); and what it does not: writes
// made after it returned.
func TestSnapshotContentAndIsolation(t *testing.T) {
	needEngine(t)
	ctx := snapCtx(t)
	sb := plainSandbox(t, layerOpts()...)
	if sh(t, sb, "test -e /etc/nsswitch.conf && echo yes") != "yes\n" {
		t.Fatal("base image lacks /etc/nsswitch.conf: the whiteout check needs another file")
	}
	sh(t, sb, `mkdir -p /data/sub && echo one > /data/a && echo deep > /data/sub/b &&
		ln -s /data/a /data/link && rm /etc/nsswitch.conf &&
		mkdir -p /opq && echo old > /opq/old && rm -rf /opq && mkdir /opq && echo new > /opq/new &&
		head -c 1048576 /dev/urandom > /data/big && md5sum /data/big | cut -d' ' -f1 > /data/big.md5`)
	name := uniq("snap")
	removeImage(t, name)
	img, err := sb.Snapshot(ctx, name)
	if err != nil {
		t.Fatalf("Snapshot: %v", err)
	}
	if !strings.HasPrefix(img.Digest, "sha256:") || len(img.Names) != 1 || img.Names[0] != name {
		t.Fatalf("image info %+v", img)
	}
	// Writes after the snapshot stay in the sandbox.
	sh(t, sb, "echo later > /data/after && echo changed > /data/a && rm /data/sub/b")

	listed := false
	imgs, err := lockbox.Images().List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, i := range imgs {
		if i.Digest == img.Digest {
			listed = true
		}
	}
	if !listed {
		t.Fatalf("snapshot %s not in Images().List", img.Digest)
	}

	for _, ref := range []string{name, img.Digest} {
		c := plainSandbox(t, lockbox.WithImage(ref))
		got := sh(t, c, `cat /data/a /data/sub/b; readlink /data/link; test -e /data/after && echo LEAK;
			test -e /etc/nsswitch.conf && echo WHITEOUT-LOST; ls /opq; md5sum /data/big | cut -d' ' -f1; cat /data/big.md5`)
		lines := strings.Split(strings.TrimSpace(got), "\n")
		want := []string{"one", "deep", "/data/a", "new"}
		if len(lines) != 6 || strings.Join(lines[:4], ",") != strings.Join(want, ",") || lines[4] != lines[5] {
			t.Fatalf("sandbox of %s sees:\n%s\nwant %v and matching checksums", ref, got, want)
		}
		// The child's own writes do not reach the image either.
		sh(t, c, "echo mine > /data/a")
	}
	c := plainSandbox(t, lockbox.WithImage(name))
	if got := sh(t, c, "cat /data/a"); got != "one\n" {
		t.Fatalf("a child's write reached the image: %q", got)
	}
	// Exported as an OCI layout and imported again: the same filesystem,
	// the deletion and the replaced directory included (OCI whiteouts).
	dir := filepath.Join(t.TempDir(), "layout")
	if _, err := lockbox.Images().Export(ctx, name, dir, "snap:v1"); err != nil {
		t.Fatalf("Export: %v", err)
	}
	back := uniq("reimported")
	removeImage(t, back)
	if _, err := lockbox.Images().Import(ctx, dir, lockbox.WithImageName(back)); err != nil {
		t.Fatalf("Import of the export: %v", err)
	}
	r := plainSandbox(t, lockbox.WithImage(back))
	if got := sh(t, r, "cat /data/a; readlink /data/link; ls /opq; test -e /etc/nsswitch.conf && echo WHITEOUT-LOST; test -e /bin/sh && echo base"); got != "one\n/data/a\nnew\nbase\n" {
		t.Fatalf("sandbox of the re-imported export sees %q", got)
	}
	if _, err := lockbox.Images().Export(ctx, name, dir, ""); !errors.Is(err, lockbox.ErrInvalidArgument) {
		t.Fatalf("Export over an existing directory: %v", err)
	}
	// Layered: the image directory holds only the changes, not the base.
	var n int
	filepath.Walk(img.Rootfs, func(string, os.FileInfo, error) error { n++; return nil })
	if n > 50 {
		t.Fatalf("snapshot layer has %d entries: it copied more than the changes", n)
	}
}

// WithDisk(0): the writable layer is a host directory, read the same way.
func TestSnapshotWithoutDiskBudget(t *testing.T) {
	needEngine(t)
	ctx := snapCtx(t)
	sb := plainSandbox(t, lockbox.WithDisk(0))
	sh(t, sb, "echo on-disk > /kept && rm /etc/nsswitch.conf")
	name := uniq("disk0")
	removeImage(t, name)
	if _, err := sb.Snapshot(ctx, name); err != nil {
		t.Fatalf("Snapshot: %v", err)
	}
	sh(t, sb, "echo later > /kept")
	c := plainSandbox(t, lockbox.WithImage(name))
	if got := sh(t, c, "cat /kept; test -e /etc/nsswitch.conf && echo WHITEOUT-LOST || true"); got != "on-disk\n" {
		t.Fatalf("sandbox of the snapshot sees %q", got)
	}
}

// A hostile writable layer: links to host paths, a FIFO, odd names. The
// copy must not follow, open or block on any of them. Control: the same
// link, followed by the host, does reach the host file.
func TestSnapshotHostileUpper(t *testing.T) {
	needEngine(t)
	ctx := snapCtx(t)
	marker := filepath.Join(t.TempDir(), "host-secret")
	if err := os.WriteFile(marker, []byte("HOST-SECRET"), 0o644); err != nil {
		t.Fatal(err)
	}
	sb := plainSandbox(t, layerOpts()...)
	sh(t, sb, fmt.Sprintf(`ln -s %s /evil && ln -s /../../../%s /evil2 && mkfifo /fifo &&
		mkdir -p '/d/...' && echo x > '/d/...'/'..x' && ln -s / /d/root && echo hi > /d/root-file &&
		dd if=/dev/zero of=/sparse bs=1 count=0 seek=20G 2>/dev/null && echo tail >> /sparse`, marker, marker))
	name := uniq("hostile")
	removeImage(t, name)
	done := make(chan error, 1)
	var img *lockbox.ImageInfo
	go func() {
		var err error
		img, err = sb.Snapshot(ctx, name)
		done <- err
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Snapshot: %v", err)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("Snapshot blocked (on the FIFO?)")
	}
	evil := filepath.Join(img.Rootfs, "evil")
	st, err := os.Lstat(evil)
	if err != nil || st.Mode()&os.ModeSymlink == 0 {
		t.Fatalf("/evil in the layer: %v %v (want a symlink, kept as one)", st, err)
	}
	// Control: following the copied link on the host reaches the secret,
	// so a copier that followed links would have copied it.
	if b, err := os.ReadFile(evil); err != nil || string(b) != "HOST-SECRET" {
		t.Fatalf("control: the link should lead to the host file: %q %v", b, err)
	}
	fst, err := os.Lstat(filepath.Join(img.Rootfs, "fifo"))
	if err != nil || fst.Mode()&os.ModeNamedPipe == 0 {
		t.Fatalf("fifo in the layer: %v %v", fst, err)
	}
	if b, _ := os.ReadFile(marker); string(b) != "HOST-SECRET" {
		t.Fatal("host marker changed")
	}
	// A 20 GiB sparse file costs the host its real bytes only. Control:
	// its apparent size is what a naive copy would have written.
	var sp syscall.Stat_t
	if err := syscall.Stat(filepath.Join(img.Rootfs, "sparse"), &sp); err != nil {
		t.Fatal(err)
	}
	if sp.Size < 20<<30 || sp.Blocks*512 > 1<<20 {
		t.Fatalf("sparse file in the layer: size %d, %d bytes allocated", sp.Size, sp.Blocks*512)
	}
	// Nothing was written outside the layer: the odd names stayed inside.
	if _, err := os.Lstat(filepath.Join(img.Rootfs, "d", "...", "..x")); err != nil {
		t.Fatalf("odd name not copied in place: %v", err)
	}
	c := plainSandbox(t, lockbox.WithImage(name))
	if got := sh(t, c, "readlink /evil; test -p /fifo && echo fifo; cat /evil 2>&1 | head -c 40 || true"); !strings.Contains(got, marker) || !strings.Contains(got, "fifo") || strings.Contains(got, "HOST-SECRET") {
		t.Fatalf("child of the hostile snapshot sees %q", got)
	}
}

func cpuTime(t *testing.T, sb *lockbox.Sandbox) time.Duration {
	t.Helper()
	m, err := sb.Metrics(snapCtx(t))
	if err != nil {
		t.Fatalf("Metrics: %v", err)
	}
	return m.CPUTime
}

// A busy loop uses no CPU while paused; calls fail fast instead of hanging;
// Resume lets it run again; Remove of a paused sandbox works and leaves no
// cgroup behind.
func TestPauseResumeBusyLoop(t *testing.T) {
	needEngine(t)
	ctx := snapCtx(t)
	sb, err := lockbox.CreateSandbox(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer sb.Remove(context.Background())
	info, _ := sb.Info(ctx)
	if _, err := sb.Metrics(ctx); errors.Is(err, lockbox.ErrUnsupported) {
		// No cgroup at all (rootless without delegation): no freezer either.
		if err := sb.Pause(ctx); !errors.Is(err, lockbox.ErrUnsupported) {
			t.Fatalf("Pause without a cgroup: %v (want ErrUnsupported)", err)
		}
		t.Skipf("no cgroup here, Pause is unsupported as it should be: %v", err)
	}
	sh(t, sb, "sh -c 'while :; do :; done' </dev/null >/dev/null 2>&1 &")
	a := cpuTime(t, sb)
	time.Sleep(300 * time.Millisecond)
	if b := cpuTime(t, sb); b-a < 50*time.Millisecond {
		t.Fatalf("control: the busy loop used only %v in 300ms", b-a)
	}
	if err := sb.Pause(ctx); err != nil {
		if errors.Is(err, lockbox.ErrUnsupported) {
			t.Skipf("no freezer here: %v", err)
		}
		t.Fatalf("Pause: %v", err)
	}
	p0 := cpuTime(t, sb)
	time.Sleep(500 * time.Millisecond)
	if p1 := cpuTime(t, sb); p1 != p0 {
		t.Fatalf("paused sandbox used %v of CPU in 500ms", p1-p0)
	}
	start := time.Now()
	if _, err := sb.Shell(ctx, "echo hi"); !errors.Is(err, lockbox.ErrUnavailable) || !strings.Contains(err.Error(), "paused") {
		t.Fatalf("exec on a paused sandbox: %v (want ErrUnavailable saying paused)", err)
	}
	if _, err := sb.FS().ReadFile(ctx, "/etc/hostname"); !errors.Is(err, lockbox.ErrUnavailable) {
		t.Fatalf("ReadFile on a paused sandbox: %v", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("calls on a paused sandbox took %v", d)
	}
	t0 := time.Now()
	if err := sb.Resume(ctx); err != nil {
		t.Fatalf("Resume: %v", err)
	}
	t.Logf("resume took %v", time.Since(t0))
	r0 := cpuTime(t, sb)
	time.Sleep(300 * time.Millisecond)
	if r1 := cpuTime(t, sb); r1-r0 < 50*time.Millisecond {
		t.Fatalf("resumed loop used only %v in 300ms", r1-r0)
	}
	if got := sh(t, sb, "echo back"); got != "back\n" {
		t.Fatalf("exec after resume: %q", got)
	}
	// Remove while paused: fast, and nothing left.
	if err := sb.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	start = time.Now()
	if err := sb.Remove(ctx); err != nil {
		t.Fatalf("Remove of a paused sandbox: %v", err)
	}
	if d := time.Since(start); d > 4*time.Second {
		t.Fatalf("Remove of a paused sandbox took %v", d)
	}
	assertNoCgroups(t, info.ID)
}

// assertNoCgroups: no `lockbox/<id>` directory in any hierarchy (freezer
// included), waiting briefly for the asynchronous sweep.
func assertNoCgroups(t *testing.T, id string) {
	t.Helper()
	var left []string
	for i := 0; i < 100; i++ {
		left, _ = filepath.Glob("/sys/fs/cgroup/*/lockbox/" + id)
		more, _ := filepath.Glob("/sys/fs/cgroup/lockbox/" + id)
		left = append(left, more...)
		if len(left) == 0 {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("cgroup dirs left: %v", left)
}

// Children of a fork start from the parent's state, never see each
// other's (or the parent's) later writes, and each has its own identity.
func TestForkIsolationAndIdentity(t *testing.T) {
	needEngine(t)
	ctx := snapCtx(t)
	parent := plainSandbox(t, layerOpts()...)
	sh(t, parent, "mkdir -p /data && echo base > /data/base && head -c 4194304 /dev/urandom > /data/blob")
	const n = 6
	kids, err := parent.Fork(ctx, n)
	if err != nil {
		t.Fatalf("Fork: %v", err)
	}
	var ids []string
	for _, k := range kids {
		k := k
		info, _ := k.Info(ctx)
		ids = append(ids, info.ID)
		t.Cleanup(func() { _ = k.Remove(context.Background()) })
	}
	sh(t, parent, "echo parent-after > /data/parent")
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i, k := range kids {
		wg.Add(1)
		go func(i int, k *lockbox.Sandbox) {
			defer wg.Done()
			for r := 0; r < 20; r++ {
				if _, err := k.Shell(ctx, fmt.Sprintf("echo %d-%d > /data/mine && echo %d > /data/who-%d", i, r, i, i)); err != nil {
					errs <- err
					return
				}
			}
		}(i, k)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	machineIDs := map[string]bool{}
	hosts := map[string]bool{}
	for i, k := range kids {
		got := sh(t, k, "cat /data/base /data/mine; ls /data | grep who- | tr '\\n' ' '; echo; test -e /data/parent && echo LEAK; cat /etc/machine-id; hostname")
		lines := strings.Split(strings.TrimSpace(got), "\n")
		if len(lines) != 5 || lines[0] != "base" || lines[1] != fmt.Sprintf("%d-19", i) ||
			strings.TrimSpace(lines[2]) != fmt.Sprintf("who-%d", i) {
			t.Fatalf("child %d sees:\n%s", i, got)
		}
		if len(lines[3]) != 32 || machineIDs[lines[3]] {
			t.Fatalf("child %d machine-id %q not fresh (%v)", i, lines[3], machineIDs)
		}
		machineIDs[lines[3]] = true
		if hosts[lines[4]] {
			t.Fatalf("child %d hostname %q shared", i, lines[4])
		}
		hosts[lines[4]] = true
	}
	if got := sh(t, parent, "ls /data | grep -c who- || true"); strings.TrimSpace(got) != "0" {
		t.Fatalf("children's writes reached the parent: %q", got)
	}
	// Cleanup on Remove: sandbox dirs and cgroups of every child.
	home := os.Getenv("LOCKBOX_HOME")
	for i, k := range kids {
		if err := k.Remove(ctx); err != nil {
			t.Fatal(err)
		}
		assertNoCgroups(t, ids[i])
		if home != "" {
			matches, _ := filepath.Glob(filepath.Join(home, "sandboxes", "*"))
			for _, m := range matches {
				if strings.Contains(m, ids[i]) {
					t.Fatalf("left behind: %s", m)
				}
			}
		}
	}
	if _, err := kids[0].Shell(ctx, "true"); err == nil {
		t.Fatal("removed child still answers")
	}
}

// Checkpoint/Restore name the backend that cannot do them.
func TestCheckpointUnsupportedOnNative(t *testing.T) {
	needEngine(t)
	sb := plainSandbox(t)
	err := sb.Checkpoint(snapCtx(t), "x")
	if !errors.Is(err, lockbox.ErrUnsupported) || !strings.Contains(err.Error(), "native backend") {
		t.Fatalf("Checkpoint: %v", err)
	}
	if _, err := lockbox.Restore(snapCtx(t), "x"); !errors.Is(err, lockbox.ErrUnsupported) {
		t.Fatalf("Restore: %v", err)
	}
}

// TestPausedOwnerChild runs in a child process: it creates a sandbox,
// pauses it, prints its helper pid and id, and waits to be killed.
func TestPausedOwnerChild(t *testing.T) {
	if os.Getenv("LOCKBOX_PAUSED_CHILD") == "" {
		t.Skip("helper process for TestPausedSandboxOwnerKilled")
	}
	ctx := context.Background()
	sb, err := lockbox.CreateSandbox(ctx)
	if err != nil {
		fmt.Println("ERROR", err)
		os.Exit(1)
	}
	info, _ := sb.Info(ctx)
	if _, err := sb.Shell(ctx, "sleep 300 >/dev/null 2>&1 &"); err != nil {
		fmt.Println("ERROR", err)
		os.Exit(1)
	}
	if err := sb.Pause(ctx); err != nil {
		fmt.Println("ERROR", err)
		os.Exit(1)
	}
	fmt.Printf("PAUSED %d %s\n", info.HelperPID, info.ID)
	time.Sleep(time.Hour)
}

// A paused sandbox whose owning process dies (SIGKILL) is torn down by its
// helper like a running one: frozen tasks are thawed so SIGKILL takes
// them, and no process or cgroup is left. Control: while the owner lives,
// the paused sandbox's helper is alive.
func TestPausedSandboxOwnerKilled(t *testing.T) {
	needEngine(t)
	if os.Geteuid() != 0 {
		t.Skip("needs a freezer (root)")
	}
	child := exec.Command(os.Args[0], "-test.run=^TestPausedOwnerChild$", "-test.v")
	child.Env = append(os.Environ(), "LOCKBOX_PAUSED_CHILD=1")
	out, _ := child.StdoutPipe()
	child.Stderr = os.Stderr
	if err := child.Start(); err != nil {
		t.Fatal(err)
	}
	defer child.Process.Kill()
	var pid int
	var id string
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "ERROR") {
			t.Fatal(line)
		}
		if _, err := fmt.Sscanf(line, "PAUSED %d %s", &pid, &id); err == nil {
			break
		}
	}
	if pid == 0 {
		t.Fatal("child reported no paused sandbox")
	}
	if syscall.Kill(pid, 0) != nil {
		t.Fatal("control: the paused sandbox's helper should be alive while its owner lives")
	}
	if err := child.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = child.Wait()
	deadline := time.Now().Add(15 * time.Second)
	for syscall.Kill(pid, 0) == nil {
		if time.Now().After(deadline) {
			t.Fatalf("helper %d of a paused sandbox still alive 15s after its owner died", pid)
		}
		time.Sleep(50 * time.Millisecond)
	}
	assertNoCgroups(t, id)
}
