package tests

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"lockbox.dev/lockbox"
)

// Host-side file calls against hostile volume contents (issue 9, items 2
// and 3): the sandbox plants links and swaps names while the host copies,
// and feeds the host unbounded data. Each attack asserts it failed and the
// host is unchanged; each is first shown able to see a real success.

const hostSecret = "host-secret\n"

func hfShell(t *testing.T, sb *lockbox.Sandbox, script string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	res, err := sb.Shell(ctx, script)
	if err != nil {
		t.Fatalf("%q: %v", script, err)
	}
	if res.ExitCode != 0 {
		t.Fatalf("%q: exit %d: %s", script, res.ExitCode, res.Stderr)
	}
	return string(res.Stdout)
}

func TestEscapeHostFilesCopyFromHostRace(t *testing.T) {
	needEngine(t)
	_, secretFile, unchanged := hostMarker(t)
	vol := volumeDir(t)
	sb := newSandbox(t, lockbox.WithVolume(vol, "/vol", false),
		lockbox.WithVolume(hostFileRacer(t), "/racer", true))
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	fsys := sb.FS()
	// f is an ordinary file; l is a link to the host secret (dangling
	// inside the sandbox, live on the host).
	hfShell(t, sb, "mkdir /vol/d && printf 'benign\\n' > /vol/d/f && ln -s "+secretFile+" /vol/d/l")

	// Control: on the host the planted link leads to the secret, and a
	// host copy that read the secret would put it where the check below
	// looks.
	if b, err := os.ReadFile(filepath.Join(vol, "d", "l")); err != nil || string(b) != hostSecret {
		t.Fatalf("control: the planted link does not reach the secret: %q %v", b, err)
	}
	if err := fsys.CopyFromHost(ctx, secretFile, "/tmp/control"); err != nil {
		t.Fatal(err)
	}
	if out := hfShell(t, sb, "grep -rl host-secret /tmp/control || true"); !strings.Contains(out, "/tmp/control") {
		t.Fatalf("control: a copied secret is not detected (%q)", out)
	}

	// The race: f and l swap places as fast as the sandbox can while the
	// host copies the directory and the racing name itself.
	racer := sb.CommandContext(ctx, "/racer/hostfileracer", "/vol/d/f", "/vol/d/l", "30s")
	if err := racer.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = racer.Process.Kill(); _ = racer.Wait() }()
	var copies, failed int
	end := time.Now().Add(3 * time.Second)
	for i := 0; time.Now().Before(end); i++ {
		for _, src := range []string{filepath.Join(vol, "d"), filepath.Join(vol, "d", "f")} {
			copies++
			if err := fsys.CopyFromHost(ctx, src, "/tmp/c/"+strconv.Itoa(copies)); err != nil {
				failed++ // a swap mid-walk may fail the copy; it must never leak
			}
		}
	}
	leaked := hfShell(t, sb, "grep -rl host-secret /tmp/c || true")
	files := hfShell(t, sb, "find /tmp/c -type f | wc -l")
	links := hfShell(t, sb, "find /tmp/c -type l | wc -l")
	t.Logf("probe copies=%d failed=%d regular=%s links=%s", copies, failed,
		strings.TrimSpace(files), strings.TrimSpace(links))
	if leaked != "" {
		t.Fatalf("ESCAPE: the host secret reached the sandbox in %s", leaked)
	}
	if strings.TrimSpace(files) == "0" || strings.TrimSpace(links) == "0" {
		t.Fatalf("the race never flipped (regular=%s links=%s): the test did not attack", files, links)
	}
	unchanged()
}

func TestEscapeHostFilesSymlinkedHostPaths(t *testing.T) {
	needEngine(t)
	victim, secretFile, unchanged := hostMarker(t)
	vol := volumeDir(t)
	sb := newSandbox(t, lockbox.WithVolume(vol, "/vol", false))
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	fsys := sb.FS()
	hfShell(t, sb, "mkdir /vol/real && ln -s "+victim+" /vol/out && printf payload > /tmp/payload")

	// Controls: followed on the host, /vol/out is the victim directory;
	// the same copy into a real directory lands where the check looks.
	if _, err := os.Stat(filepath.Join(vol, "out", filepath.Base(secretFile))); err != nil {
		t.Fatalf("control: the planted link does not lead to the victim dir: %v", err)
	}
	if err := fsys.CopyToHost(ctx, "/tmp/payload", filepath.Join(vol, "real", "x")); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(filepath.Join(vol, "real", "x")); string(b) != "payload" {
		t.Fatalf("control: copy into a real dir gave %q", b)
	}

	// Attack: the destination's parent is the planted link.
	err := fsys.CopyToHost(ctx, "/tmp/payload", filepath.Join(vol, "out", "x"))
	t.Logf("probe CopyToHost through planted parent: %v", err)
	if !errors.Is(err, lockbox.ErrInvalidArgument) {
		t.Fatalf("ESCAPE: CopyToHost through a planted symlink parent: %v", err)
	}
	if _, err := os.Lstat(filepath.Join(victim, "x")); err == nil {
		t.Fatal("HOST CHANGED: the copy was written through the planted link")
	}
	// The source side: a host path through the planted link.
	err = fsys.CopyFromHost(ctx, filepath.Join(vol, "out", filepath.Base(secretFile)), "/tmp/stolen")
	t.Logf("probe CopyFromHost through planted parent: %v", err)
	if !errors.Is(err, lockbox.ErrInvalidArgument) {
		t.Fatalf("ESCAPE: CopyFromHost through a planted symlink: %v", err)
	}
	if ok, _ := fsys.Exists(ctx, "/tmp/stolen"); ok {
		t.Fatal("ESCAPE: the host secret was copied in through the planted link")
	}
	// A destination name that is a planted link (or hard link) is
	// replaced, never written through.
	hfShell(t, sb, "ln -s "+secretFile+" /vol/real/y")
	if err := fsys.CopyToHost(ctx, "/tmp/payload", filepath.Join(vol, "real", "y")); err != nil {
		t.Fatal(err)
	}
	unchanged()
}

func TestEscapeHostFilesCopyToHostBounded(t *testing.T) {
	needEngine(t)
	sb := newSandbox(t, lockbox.WithDisk(8), lockbox.WithVolume(hostFileRacer(t), "/racer", true))
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	fsys := sb.FS()
	dst := t.TempDir()
	hfShell(t, sb, "truncate -s 100G /tmp/sparse && truncate -s 4M /tmp/small")

	// Control: the disk measure sees a copy (a 4 MiB sparse file is
	// written densely and counted with its apparent size).
	if err := fsys.CopyToHost(ctx, "/tmp/small", filepath.Join(dst, "small"), lockbox.WithMaxBytes(8<<20)); err != nil {
		t.Fatal(err)
	}
	if du := diskUsage(t, dst); du < 4<<20 {
		t.Fatalf("control: a 4 MiB copy shows as %d bytes", du)
	}
	os.Remove(filepath.Join(dst, "small"))
	if err := fsys.CopyToHost(ctx, "/tmp/small", filepath.Join(dst, "s"), lockbox.WithMaxBytes(1<<20)); !errors.Is(err, lockbox.ErrSizeLimit) {
		t.Fatalf("a 4 MiB file under a 1 MiB cap: %v", err)
	}

	// Attack 1: a 100 GiB sparse file from an 8 MiB sandbox.
	start := time.Now()
	err := fsys.CopyToHost(ctx, "/tmp/sparse", filepath.Join(dst, "sparse"))
	du := diskUsage(t, dst)
	t.Logf("probe sparse: %v in %v, host disk +%d bytes", err, time.Since(start), du)
	if !errors.Is(err, lockbox.ErrSizeLimit) || !errors.Is(err, lockbox.ErrResourceExhausted) {
		t.Fatalf("ESCAPE: CopyToHost of a 100 GiB sparse file: %v", err)
	}
	if du > 1<<20 {
		t.Fatalf("HOST CHANGED: %d bytes written to the host disk", du)
	}

	// Attack 2: many empty entries (host inodes) count too.
	hfShell(t, sb, "mkdir /tmp/many && cd /tmp/many && for i in $(seq 200); do : > f$i; done")
	err = fsys.CopyToHost(ctx, "/tmp/many", filepath.Join(dst, "many"), lockbox.WithMaxBytes(64<<10))
	ents, _ := os.ReadDir(filepath.Join(dst, "many"))
	t.Logf("probe empty files: %v, %d host entries", err, len(ents))
	if !errors.Is(err, lockbox.ErrSizeLimit) || len(ents) > 16 {
		t.Fatalf("HOST CHANGED: 200 empty files under a 64 KiB cap: %d entries, %v", len(ents), err)
	}

	// Attack 3: a small file swapped for /dev/zero between the sandbox's
	// stat and open. Each copy holds at most the size that was stat'ed.
	hfShell(t, sb, "mkdir /tmp/z && printf 0123456789 > /tmp/z/f && ln -s /dev/zero /tmp/z/zero")
	racer := sb.CommandContext(ctx, "/racer/hostfileracer", "/tmp/z/f", "/tmp/z/zero", "30s")
	if err := racer.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = racer.Process.Kill(); _ = racer.Wait() }()
	var copies, regular int
	end := time.Now().Add(2 * time.Second)
	for time.Now().Before(end) {
		copies++
		d := filepath.Join(dst, "z"+strconv.Itoa(copies))
		if err := fsys.CopyToHost(ctx, "/tmp/z", d); err != nil {
			continue
		}
		for _, n := range []string{"f", "zero"} {
			fi, err := os.Lstat(filepath.Join(d, n))
			if err != nil || !fi.Mode().IsRegular() {
				continue
			}
			regular++
			if fi.Size() > 10 {
				t.Fatalf("HOST CHANGED: a 10-byte file became %d bytes on the host", fi.Size())
			}
		}
	}
	du = diskUsage(t, dst)
	t.Logf("probe swap: copies=%d regular=%d host disk %d bytes", copies, regular, du)
	if regular == 0 {
		t.Fatal("no copy got a regular file: the test did not attack")
	}
	if du > int64(copies)*64<<10 {
		t.Fatalf("HOST CHANGED: %d bytes on the host disk for %d tiny copies", du, copies)
	}
}

func TestEscapeHostFilesReadFileBounded(t *testing.T) {
	needEngine(t)
	sb := newSandbox(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	fsys := sb.FS()
	hfShell(t, sb, "ln -s /dev/zero /tmp/zero && mkfifo /tmp/fifo && head -c 75497472 /dev/zero > /tmp/big && "+
		"echo hi > /tmp/small && ln -s small /tmp/rel")
	// Links to regular files still read.
	if b, err := fsys.ReadFile(ctx, "/tmp/rel"); err != nil || string(b) != "hi\n" {
		t.Fatalf("ReadFile through a link: %q %v", b, err)
	}
	for _, p := range []string{"/tmp/zero", "/tmp/fifo", "/dev/zero"} {
		start := time.Now()
		c, cancel := context.WithTimeout(ctx, 10*time.Second)
		_, err := fsys.ReadFile(c, p)
		cancel()
		t.Logf("probe ReadFile %s: %v in %v", p, err, time.Since(start))
		if !errors.Is(err, lockbox.ErrInvalidArgument) {
			t.Fatalf("ESCAPE: ReadFile of %s: %v", p, err)
		}
	}

	// Attack: a 72 MiB file under a 1 MiB cap.
	var err error
	peak, alloc := peakRSSGrowth(t, func() {
		_, err = fsys.ReadFile(ctx, "/tmp/big", lockbox.WithMaxBytes(1<<20))
	})
	t.Logf("probe capped: peak RSS +%d MiB, allocated %d MiB (%v)", peak>>20, alloc>>20, err)
	if !errors.Is(err, lockbox.ErrSizeLimit) {
		t.Fatalf("ESCAPE: a 72 MiB file under a 1 MiB cap: %v", err)
	}
	if alloc > 16<<20 || peak > 32<<20 {
		t.Fatalf("HOST CHANGED: a 1 MiB-capped read grew the host by %d bytes (alloc %d)", peak, alloc)
	}
	// Control: with no cap the same read grows this process by the file,
	// and the measure sees it.
	ctlPeak, ctlAlloc := peakRSSGrowth(t, func() {
		var b []byte
		b, err = fsys.ReadFile(ctx, "/tmp/big", lockbox.WithMaxBytes(lockbox.NoLimit))
		if len(b) != 72<<20 {
			t.Errorf("control read %d bytes", len(b))
		}
	})
	t.Logf("probe control: peak RSS +%d MiB, allocated %d MiB (%v)", ctlPeak>>20, ctlAlloc>>20, err)
	if err != nil || ctlAlloc < 72<<20 {
		t.Fatalf("control: the detector does not see a 72 MiB read (alloc %d, %v)", ctlAlloc, err)
	}
	// The default cap (64 MiB) refuses the 72 MiB file too.
	if _, err := fsys.ReadFile(ctx, "/tmp/big"); !errors.Is(err, lockbox.ErrSizeLimit) {
		t.Fatalf("ESCAPE: ReadFile past the default cap: %v", err)
	}
}

func TestEscapeHostFilesExecOutputBounded(t *testing.T) {
	needEngine(t)
	sb := newSandbox(t)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()

	var res *lockbox.ExecResult
	var err error
	// Attack: 2 GiB on stdout through Exec.
	start := time.Now()
	peak, alloc := peakRSSGrowth(t, func() {
		res, err = sb.Exec(ctx, "head", "-c", "2147483648", "/dev/zero")
	})
	t.Logf("probe exec 2G: peak RSS +%d MiB, allocated %d MiB in %v (%v)", peak>>20, alloc>>20, time.Since(start), err)
	if !errors.Is(err, lockbox.ErrOutputLimit) || !errors.Is(err, lockbox.ErrResourceExhausted) {
		t.Fatalf("ESCAPE: 2 GiB of output: %v", err)
	}
	if res == nil || int64(len(res.Stdout)) != lockbox.DefaultOutputLimit || res.Signal != 9 {
		t.Fatalf("the capped result: %+v", res)
	}
	if peak > 128<<20 || alloc > 128<<20 {
		t.Fatalf("HOST CHANGED: 2 GiB of output grew the host by %d bytes (allocated %d)", peak, alloc)
	}

	// Control: with no cap, 128 MiB of output is 128 MiB of this process.
	ctlPeak, ctlAlloc := peakRSSGrowth(t, func() {
		res, err = sb.ExecArgs(ctx, []string{"head", "-c", "134217728", "/dev/zero"},
			lockbox.WithOutputLimit(lockbox.NoLimit))
	})
	t.Logf("probe control: peak RSS +%d MiB, allocated %d MiB (%v)", ctlPeak>>20, ctlAlloc>>20, err)
	if err != nil || len(res.Stdout) != 128<<20 || ctlAlloc < 128<<20 {
		t.Fatalf("control: the detector does not see 128 MiB of output (alloc %d, %v)", ctlAlloc, err)
	}

	// The same through Cmd.Output and CombinedOutput (stderr), with a
	// smaller cap.
	cmd := sb.CommandContext(ctx, "head", "-c", "1073741824", "/dev/zero")
	cmd.OutputLimit = 1 << 20
	out, err := cmd.Output()
	if !errors.Is(err, lockbox.ErrOutputLimit) || len(out) != 1<<20 {
		t.Fatalf("ESCAPE: Cmd.Output past its cap: %d bytes, %v", len(out), err)
	}
	cmd = sb.CommandContext(ctx, "sh", "-c", "head -c 1073741824 /dev/zero >&2")
	cmd.OutputLimit = 1 << 20
	out, err = cmd.CombinedOutput()
	if !errors.Is(err, lockbox.ErrOutputLimit) || len(out) != 1<<20 {
		t.Fatalf("ESCAPE: Cmd.CombinedOutput past its cap: %d bytes, %v", len(out), err)
	}
	// The sandbox is still usable.
	if got := hfShell(t, sb, "echo ok"); got != "ok\n" {
		t.Fatalf("after the cap: %q", got)
	}
}

func TestEscapeHostFilesWritableLayerBudget(t *testing.T) {
	needEngine(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	const fill = "fallocate -l 1200M /fill; echo rc=$?; rm -f /fill"
	home := os.Getenv("LOCKBOX_HOME")
	if home == "" {
		t.Skip("LOCKBOX_HOME is not set: the host disk the sandboxes use is unknown")
	}
	// Every sandbox's writable layer (when it has no budget) is under here.
	state := filepath.Join(home, "sandboxes")

	// Control: with the budget explicitly off, the write reaches the host
	// disk under the sandbox's state dir, where the measure sees it.
	if free, err := hostFree(home); err != nil || free < 4<<30 {
		t.Logf("control skipped: %d bytes free (%v)", free, err)
	} else {
		sb0 := newSandbox(t, lockbox.WithDisk(0))
		info, err := sb0.Info(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if info.DiskMiB != 0 {
			t.Fatalf("WithDisk(0): Info().DiskMiB = %d", info.DiskMiB)
		}
		before := diskUsage(t, state)
		out := hfShell(t, sb0, "fallocate -l 1200M /fill; echo rc=$?")
		du := diskUsage(t, state) - before
		t.Logf("probe control: %s host disk under the sandbox: %d MiB", strings.TrimSpace(out), du>>20)
		if !strings.Contains(out, "rc=0") || du < 1200<<20 {
			t.Fatalf("control: the unbudgeted write is not seen (%q, %d)", out, du)
		}
		hfShell(t, sb0, "rm -f /fill")
	}

	sb := newSandbox(t)
	info, err := sb.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.DiskMiB != 1024 {
		t.Fatalf("default budget: Info().DiskMiB = %d", info.DiskMiB)
	}
	before := diskUsage(t, state)
	out := hfShell(t, sb, fill)
	du := diskUsage(t, state) - before
	t.Logf("probe default budget: %s, host disk +%d bytes", strings.TrimSpace(out), du)
	if strings.Contains(out, "rc=0") {
		t.Fatalf("ESCAPE: 1200 MiB written past the default 1024 MiB budget")
	}
	if du > 1<<20 {
		t.Fatalf("HOST CHANGED: the sandbox's writes took %d bytes of host disk", du)
	}
}

func TestEscapeHostFilesVolumeThroughPlantedLink(t *testing.T) {
	needEngine(t)
	victim, secretFile, unchanged := hostMarker(t)
	vol := volumeDir(t)
	sb := newSandbox(t, lockbox.WithVolume(vol, "/vol", false))
	hfShell(t, sb, "mkdir /vol/real && ln -s "+victim+" /vol/sub && ln -s / /vol/rootlink")
	// Control: followed on the host, the planted link is the victim dir;
	// a volume on a real directory mounts and shows its files.
	if _, err := os.Stat(filepath.Join(vol, "sub", filepath.Base(secretFile))); err != nil {
		t.Fatalf("control: the planted link does not lead to the victim dir: %v", err)
	}
	if err := os.WriteFile(filepath.Join(vol, "real", "seen"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	ok := newSandbox(t, lockbox.WithVolume(filepath.Join(vol, "real"), "/v", false))
	if out := hfShell(t, ok, "ls /v"); !strings.Contains(out, "seen") {
		t.Fatalf("control: a volume on a real dir shows %q", out)
	}

	// Attack: another sandbox's volume path passes through the link.
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for _, p := range []string{filepath.Join(vol, "sub"), filepath.Join(vol, "sub") + "/"} {
		sb2, err := lockbox.CreateSandbox(ctx, lockbox.WithVolume(p, "/v", false))
		t.Logf("probe WithVolume(%s): %v", p, err)
		if err == nil {
			out, _ := sb2.Shell(ctx, "ls /v")
			_ = sb2.Remove(context.Background())
			t.Fatalf("ESCAPE: a volume through a planted link mounted (ls: %q)", out.Stdout)
		}
		if !errors.Is(err, lockbox.ErrInvalidArgument) {
			t.Fatalf("WithVolume through a planted link: %v", err)
		}
	}
	// The same for a rootfs: followed, the link would make the host's own
	// root the sandbox's root.
	if _, err := os.Stat(filepath.Join(vol, "rootlink", "proc", "self")); err != nil {
		t.Fatalf("control: the planted root link does not reach the host root: %v", err)
	}
	sb3, err := lockbox.CreateSandbox(ctx, lockbox.WithRootfs(filepath.Join(vol, "rootlink")))
	t.Logf("probe WithRootfs through a planted link: %v", err)
	if err == nil {
		_ = sb3.Remove(context.Background())
		t.Fatal("ESCAPE: the host root became a sandbox's root through a planted link")
	}
	if !errors.Is(err, lockbox.ErrInvalidArgument) {
		t.Fatalf("WithRootfs through a planted link: %v", err)
	}
	unchanged()
}
