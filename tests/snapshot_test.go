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
		mkdir -p '/d/...' && echo x > '/d/...'/'..x' && ln -s / /d/root && echo hi > /d/root-file`, marker, marker))
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
	// Nothing was written outside the layer: the odd names stayed inside.
	if _, err := os.Lstat(filepath.Join(img.Rootfs, "d", "...", "..x")); err != nil {
		t.Fatalf("odd name not copied in place: %v", err)
	}
	c := plainSandbox(t, lockbox.WithImage(name))
	if got := sh(t, c, "readlink /evil; test -p /fifo && echo fifo; cat /evil 2>&1 | head -c 40 || true"); !strings.Contains(got, marker) || !strings.Contains(got, "fifo") || strings.Contains(got, "HOST-SECRET") {
		t.Fatalf("child of the hostile snapshot sees %q", got)
	}
}

// A snapshot takes no more than its sandbox could hold: one 20 MB file
// under 41 names in a WithDisk(64) sandbox is stored once (the other names
// are hard links), and a sparse file whose apparent size passes the disk
// budget is refused (it would be exported as that many zeros). Controls:
// the names' apparent sizes add up to 820 MB, past the 64 MiB budget (a
// copy per name would have failed or stored that much); the sparse file
// fits the sandbox's tmpfs, and without it the same sandbox snapshots.
func TestSnapshotSizeBounds(t *testing.T) {
	needEngine(t)
	if os.Geteuid() != 0 {
		t.Skip("a disk budget is a tmpfs only root can read from the host")
	}
	ctx := snapCtx(t)
	sb := plainSandbox(t, lockbox.WithDisk(64))
	sh(t, sb, `head -c 20000000 /dev/urandom > /f && mkdir /l && i=0; while [ $i -lt 40 ]; do ln /f /l/$i; i=$((i+1)); done`)
	var size, names int64
	if _, err := fmt.Sscan(sh(t, sb, `stat -c '%s %h' /f`), &size, &names); err != nil || size*names <= 64<<20 {
		t.Fatalf("control: the names should add up to past 64 MiB: %d bytes x %d names (%v)", size, names, err)
	}
	name := uniq("links")
	removeImage(t, name)
	img, err := sb.Snapshot(ctx, name)
	if err != nil {
		t.Fatalf("Snapshot: %v", err)
	}
	var first syscall.Stat_t
	if err := syscall.Stat(filepath.Join(img.Rootfs, "f"), &first); err != nil {
		t.Fatal(err)
	}
	var allocated int64
	filepath.Walk(img.Rootfs, func(p string, fi os.FileInfo, err error) error {
		if err == nil && fi.Mode().IsRegular() {
			st := fi.Sys().(*syscall.Stat_t)
			if st.Ino != first.Ino {
				allocated += st.Blocks * 512
			}
		}
		return nil
	})
	if first.Nlink != 41 || first.Blocks*512+allocated > 40<<20 {
		t.Fatalf("stored snapshot: /f has %d names, %d bytes besides it", first.Nlink, allocated)
	}

	sh(t, sb, `rm -r /f /l && dd if=/dev/zero of=/sparse bs=1048576 count=0 seek=1048576 && echo tail >> /sparse && test $(stat -c %s /sparse) -gt 1000000000000`)
	bad := uniq("sparse")
	removeImage(t, bad)
	if _, err := sb.Snapshot(ctx, bad); err == nil || !strings.Contains(err.Error(), "apparent size") {
		t.Fatalf("a 1 TB sparse file in a 64 MiB sandbox: Snapshot gave %v", err)
	}
	// Fork's copy (by the kernel, not hashed) is charged the same way.
	if kids, err := sb.Fork(ctx, 1); err == nil || !strings.Contains(err.Error(), "apparent size") {
		for _, k := range kids {
			_ = k.Remove(ctx)
		}
		t.Fatalf("a 1 TB sparse file in a 64 MiB sandbox: Fork gave %v", err)
	}
	sh(t, sb, `rm /sparse`)
	kids, err := sb.Fork(ctx, 1)
	if err != nil {
		t.Fatalf("control: Fork without the sparse file: %v", err)
	}
	_ = kids[0].Remove(ctx)
	good := uniq("nosparse")
	removeImage(t, good)
	if _, err := sb.Snapshot(ctx, good); err != nil {
		t.Fatalf("control: without the sparse file: %v", err)
	}
}

// A Pause made while a snapshot holds the sandbox frozen outlives the
// snapshot (the snapshot's thaw used to undo it silently). Control: a
// snapshot with no Pause during it leaves the sandbox running.
func TestSnapshotKeepsPauseMadeDuringIt(t *testing.T) {
	needEngine(t)
	ctx := snapCtx(t)
	sb := plainSandbox(t, layerOpts()...)
	// Enough content that the copy takes a while (~0.3 s) to pause into.
	sh(t, sb, `head -c 300000000 /dev/zero > /big`)
	paused := func() bool {
		_, err := sb.Shell(ctx, "true")
		return errors.Is(err, lockbox.ErrUnavailable) && strings.Contains(err.Error(), "paused")
	}
	landed := false
	for try := 0; try < 3 && !landed; try++ {
		name := uniq("pausing")
		removeImage(t, name)
		done := make(chan error, 1)
		go func() {
			_, err := sb.Snapshot(ctx, name)
			done <- err
		}()
		var early error
		finished := false
		for !finished && !frozenOnHost(sb.ID()) {
			select {
			case early = <-done:
				finished = true
			case <-time.After(time.Millisecond):
			}
		}
		if finished {
			// Done before it was seen frozen: inconclusive, retry.
			if early != nil {
				t.Fatalf("Snapshot: %v", early)
			}
			continue
		}
		if err := sb.Pause(ctx); err != nil {
			if errors.Is(err, lockbox.ErrUnsupported) {
				<-done
				t.Skipf("no freezer here: %v", err)
			}
			t.Fatalf("Pause: %v", err)
		}
		select {
		case err := <-done:
			// Finished before the Pause: inconclusive, resume and retry.
			if err != nil {
				t.Fatalf("Snapshot: %v", err)
			}
			if err := sb.Resume(ctx); err != nil {
				t.Fatal(err)
			}
			continue
		default:
		}
		landed = true
		if err := <-done; err != nil {
			t.Fatalf("Snapshot: %v", err)
		}
	}
	if !landed {
		t.Skip("every snapshot finished before the Pause landed")
	}
	if !paused() {
		t.Fatal("a Pause made during a snapshot was undone when it ended")
	}
	if err := sb.Resume(ctx); err != nil {
		t.Fatalf("Resume: %v", err)
	}
	name := uniq("unpaused")
	removeImage(t, name)
	if _, err := sb.Snapshot(ctx, name); err != nil {
		t.Fatalf("Snapshot: %v", err)
	}
	if paused() {
		t.Fatal("control: a snapshot alone left the sandbox frozen")
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
	if info.Status != lockbox.StatusRunning {
		t.Fatalf("control: a running sandbox's status is %q", info.Status)
	}
	sh(t, sb, "sh -c 'while :; do :; done' </dev/null >/dev/null 2>&1 &")
	// The loop's CPU is polled, not sampled over a fixed 300 ms: on a
	// loaded machine the loop may start late or get a small share.
	spins := func(what string) {
		t.Helper()
		a := cpuTime(t, sb)
		for deadline := time.Now().Add(20 * time.Second); cpuTime(t, sb)-a < 50*time.Millisecond; time.Sleep(50 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("%s: the busy loop used only %v in 20 s", what, cpuTime(t, sb)-a)
			}
		}
	}
	spins("control")
	if err := sb.Pause(ctx); err != nil {
		if errors.Is(err, lockbox.ErrUnsupported) {
			t.Skipf("no freezer here: %v", err)
		}
		t.Fatalf("Pause: %v", err)
	}
	if i, err := sb.Info(ctx); err != nil || i.Status != lockbox.StatusPaused || !i.Running() {
		t.Fatalf("Info of a paused sandbox: %+v, %v (want status paused)", i, err)
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
	// A hang would last until the context's end (minutes); seconds of
	// slack are for a loaded machine.
	if d := time.Since(start); d > 15*time.Second {
		t.Fatalf("calls on a paused sandbox took %v", d)
	}
	t0 := time.Now()
	if err := sb.Resume(ctx); err != nil {
		t.Fatalf("Resume: %v", err)
	}
	t.Logf("resume took %v", time.Since(t0))
	if i, err := sb.Info(ctx); err != nil || i.Status != lockbox.StatusRunning {
		t.Fatalf("Info after Resume: %+v, %v (want status running)", i, err)
	}
	spins("resumed")
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
// frozenOnHost reads the sandbox's freezer from the host: unlike a call
// to the sandbox it never waits on a frozen agent.
func frozenOnHost(id string) bool {
	if b, err := os.ReadFile("/sys/fs/cgroup/lockbox/" + id + "/cgroup.freeze"); err == nil {
		return strings.TrimSpace(string(b)) == "1"
	}
	if b, err := os.ReadFile("/sys/fs/cgroup/freezer/lockbox/" + id + "/freezer.state"); err == nil {
		return strings.TrimSpace(string(b)) != "THAWED"
	}
	return false
}

func assertNoCgroups(t *testing.T, id string) {
	t.Helper()
	var left []string
	// 30 s, not 5: the sweep is asynchronous and a loaded machine slow.
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		left, _ = filepath.Glob("/sys/fs/cgroup/*/lockbox/" + id)
		more, _ := filepath.Glob("/sys/fs/cgroup/lockbox/" + id)
		left = append(left, more...)
		if len(left) == 0 {
			return
		}
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
	// Nothing was saved, so there is nothing to restore (microVM
	// checkpoints: tests/vm_checkpoint_test.go).
	if _, err := lockbox.Restore(snapCtx(t), "x"); !errors.Is(err, lockbox.ErrNotFound) {
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
