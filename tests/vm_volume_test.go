package tests

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"lockbox.dev/lockbox"
)

// Host ids of guest root and guest uid 1000: the native sandbox's mapping,
// which a VM's volumes keep.
const (
	hostOfGuestRoot = 100000
	hostOfGuest1000 = 101000
)

func ownerOf(t *testing.T, path string) string {
	t.Helper()
	fi, err := os.Lstat(path)
	if err != nil {
		t.Fatalf("stat %s: %v", path, err)
	}
	st := fi.Sys().(*syscall.Stat_t)
	return fmt.Sprintf("%d:%d", st.Uid, st.Gid)
}

func dirNames(dir string) []string {
	ents, _ := os.ReadDir(dir)
	var n []string
	for _, e := range ents {
		n = append(n, e.Name())
	}
	sort.Strings(n)
	return n
}

// TestMicroVMVolumes (one VM boot): volumes through virtio-fs and a tmpfs
// in a microVM sandbox. Files cross both ways with the native backend's
// ownership (guest root is host 100000, guest uid 1000 is host 101000); a
// read-only volume refuses writes inside; a symlink planted in the volume
// pointing at host directories is never followed to the host (the host's
// own write through it is the control that the link is live); the tmpfs
// has its size; each virtiofsd runs confined with only its volume as its
// root; Remove leaves no virtiofsd.
func TestMicroVMVolumes(t *testing.T) {
	needEngine(t)
	if r := vmSkipReason(); r != "" {
		t.Skip(r)
	}
	if os.Getuid() != 0 {
		t.Skip("volumes of microVM sandboxes need root (virtiofsd writes as a range of host ids)")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()

	rw, ro, probe := t.TempDir(), t.TempDir(), t.TempDir()
	for _, d := range []string{rw, ro} {
		if err := os.Chown(d, hostOfGuestRoot, hostOfGuestRoot); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(ro, "keep.txt"), []byte("read me\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	// The planted links: to a host directory that is writable by anyone
	// (so a host side that followed it could write there) and to /etc.
	if err := os.Chmod(probe, 0o777); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(probe, filepath.Join(rw, "escape")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("/etc", filepath.Join(rw, "etc-link")); err != nil {
		t.Fatal(err)
	}
	etcProbe := "/etc/lockbox-vmvol-" + strconv.Itoa(os.Getpid())
	defer os.Remove(etcProbe)

	// A volume of one file has no directory to share: refused up front,
	// naming the backend, with nothing booted.
	t0 := time.Now()
	if sb, err := lockbox.CreateSandbox(ctx, lockbox.WithIsolation(lockbox.IsolationMicroVM),
		lockbox.WithVolume(filepath.Join(ro, "keep.txt"), "/keep.txt", true)); err == nil {
		_ = sb.Remove(ctx)
		t.Fatal("a single-file volume on microvm: created, want ErrUnsupported")
	} else if !errors.Is(err, lockbox.ErrUnsupported) || !strings.Contains(err.Error(), "microvm") || time.Since(t0) > 5*time.Second {
		t.Fatalf("a single-file volume on microvm: %v after %v, want ErrUnsupported naming the backend at once", err, time.Since(t0))
	}

	volName := "vmvol-" + strconv.Itoa(os.Getpid())
	vol, err := lockbox.CreateVolume(ctx, volName)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = lockbox.RemoveVolume(context.Background(), volName) }()

	start := time.Now()
	sb, err := lockbox.CreateSandbox(ctx, lockbox.WithName("vmvol"), lockbox.WithReplace(),
		lockbox.WithIsolation(lockbox.IsolationMicroVM), lockbox.WithMemory(128),
		lockbox.WithVolume(rw, "/data", false), lockbox.WithVolume(ro, "/ro", true),
		lockbox.WithNamedVolume(volName, "/named", false), lockbox.WithTmpfs("/scratch", 8))
	if err != nil {
		t.Fatalf("CreateSandbox: %v", err)
	}
	removed := false
	defer func() {
		if !removed {
			_ = sb.Remove(context.Background())
		}
	}()
	t.Logf("create with 3 volumes and a tmpfs: %v", time.Since(start))
	sh := func(script string, opts ...lockbox.ExecOption) (string, int) {
		t.Helper()
		res, err := sb.ExecArgs(ctx, []string{"sh", "-c", script}, opts...)
		if err != nil {
			t.Fatalf("exec %q: %v", script, err)
		}
		return string(res.Stdout) + string(res.Stderr), res.ExitCode
	}

	// Host to guest, written after the boot, owned by host 101000.
	hostFile := filepath.Join(rw, "host.txt")
	if err := os.WriteFile(hostFile, []byte("from host\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(hostFile, hostOfGuest1000, hostOfGuest1000); err != nil {
		t.Fatal(err)
	}
	if out, code := sh("cat /data/host.txt && stat -c %u:%g /data/host.txt"); code != 0 || out != "from host\n1000:1000\n" {
		t.Fatalf("host file in the guest: exit %d %q (want its content, owned by 1000:1000)", code, out)
	}

	// Guest to host, as root and as uid 1000 (in a directory the host
	// gave to guest 1000).
	if err := os.Mkdir(filepath.Join(rw, "u"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(filepath.Join(rw, "u"), hostOfGuest1000, hostOfGuest1000); err != nil {
		t.Fatal(err)
	}
	if out, code := sh("echo from root > /data/root.txt && stat -c %u /data"); code != 0 || out != "0\n" {
		t.Fatalf("guest root write: exit %d %q", code, out)
	}
	if out, code := sh("echo from user > /data/u/user.txt", lockbox.WithExecUser("1000")); code != 0 {
		t.Fatalf("guest uid 1000 write: exit %d %q", code, out)
	}
	for f, want := range map[string]string{"root.txt": "100000:100000", "u/user.txt": "101000:101000"} {
		p := filepath.Join(rw, f)
		if got := ownerOf(t, p); got != want {
			t.Fatalf("%s on the host is owned by %s, want %s", f, got, want)
		}
	}
	if b, _ := os.ReadFile(filepath.Join(rw, "u", "user.txt")); string(b) != "from user\n" {
		t.Fatalf("user.txt on the host: %q", b)
	}
	// uid 1000 cannot write into what guest root owns with mode 0644.
	if out, code := sh("echo x >> /data/root.txt", lockbox.WithExecUser("1000")); code == 0 {
		t.Fatalf("uid 1000 appended to root's 0644 file: %q", out)
	}

	// Named volume: made owned by guest root.
	if out, code := sh("echo named > /named/n.txt"); code != 0 {
		t.Fatalf("named volume write: exit %d %q", code, out)
	}
	if got := ownerOf(t, filepath.Join(vol.Path, "n.txt")); got != "100000:100000" {
		t.Fatalf("named volume file owned by %s", got)
	}

	// Read-only: readable, and no write lands (as root, who has
	// CAP_DAC_OVERRIDE in the guest).
	if out, code := sh("cat /ro/keep.txt"); code != 0 || out != "read me\n" {
		t.Fatalf("control: read-only volume unreadable: exit %d %q", code, out)
	}
	for _, w := range []string{"echo x > /ro/new.txt", "echo x >> /ro/keep.txt", "rm /ro/keep.txt", "mkdir /ro/d", "chmod 777 /ro/keep.txt"} {
		if out, code := sh(w); code == 0 {
			t.Fatalf("read-only volume: %q succeeded: %q", w, out)
		}
	}
	if names := dirNames(ro); strings.Join(names, ",") != "keep.txt" {
		t.Fatalf("read-only volume on the host now holds %v", names)
	}
	if b, _ := os.ReadFile(filepath.Join(ro, "keep.txt")); string(b) != "read me\n" {
		t.Fatalf("read-only file changed on the host: %q", b)
	}

	// Planted links. Control: the guest sees them with their host targets,
	// and the host's own write through one lands in the probe directory.
	if out, code := sh("readlink /data/escape; readlink /data/etc-link"); code != 0 || out != probe+"\n/etc\n" {
		t.Fatalf("control: the planted links are not visible in the guest: exit %d %q", code, out)
	}
	if err := os.WriteFile(filepath.Join(rw, "escape", "control.txt"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(probe, "control.txt")); err != nil {
		t.Fatalf("control: a write through the link from the host did not reach the probe dir: %v", err)
	}
	sh("echo pwned > /data/escape/pwned.txt; mkdir -p /data/escape/d; echo pwned > /data/etc-link/" + filepath.Base(etcProbe))
	if _, err := os.Lstat(filepath.Join(probe, "pwned.txt")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("VOLUME ESCAPE: a guest write through the planted link reached the host dir: %v", err)
	}
	if _, err := os.Lstat(filepath.Join(probe, "d")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("VOLUME ESCAPE: a guest mkdir through the planted link reached the host dir: %v", err)
	}
	if _, err := os.Lstat(etcProbe); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("VOLUME ESCAPE: a guest write through a link to /etc reached the host's /etc: %v", err)
	}
	if fi, err := os.Lstat(filepath.Join(rw, "escape")); err != nil || fi.Mode()&os.ModeSymlink == 0 {
		t.Fatalf("the planted link changed on the host: %v %v", fi, err)
	}

	// A race from the host side: while a guest process sits in /data/sub,
	// the directory is renamed away and a link to the host probe dir put
	// in its place. The guest's write relative to its cwd must land in
	// the renamed directory (virtiofsd works on the inode it holds, not
	// on a path it walks again); a write through the path now follows the
	// link in the guest, never on the host.
	sub := filepath.Join(rw, "sub")
	if err := os.Mkdir(sub, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(sub, hostOfGuestRoot, hostOfGuestRoot); err != nil {
		t.Fatal(err)
	}
	st, err := sb.ExecStream(ctx, []string{"sh", "-c", "cd /data/sub && echo ready && sleep 3 && echo a > x && echo b > /data/sub/y; echo done"})
	if err != nil {
		t.Fatal(err)
	}
	swapped := false
	var streamOut []byte
	for ev := range st.Events() {
		if ev.Kind == lockbox.EventStderr {
			streamOut = append(streamOut, ev.Data...)
		}
		if ev.Kind == lockbox.EventStdout {
			streamOut = append(streamOut, ev.Data...)
			if !swapped && strings.Contains(string(streamOut), "ready") {
				if err := os.Rename(sub, sub+".old"); err != nil {
					t.Fatal(err)
				}
				if err := os.Symlink(probe, sub); err != nil {
					t.Fatal(err)
				}
				swapped = true
			}
		}
	}
	if !swapped || !strings.Contains(string(streamOut), "done") {
		t.Fatalf("race: the guest process did not run through: %q", streamOut)
	}
	if b, err := os.ReadFile(filepath.Join(sub+".old", "x")); err != nil || string(b) != "a\n" {
		t.Fatalf("control: the write relative to the guest's cwd did not land in the renamed dir: %v %q (guest: %q; volume %v, renamed dir %v, probe %v)", err, b, streamOut, dirNames(rw), dirNames(sub+".old"), dirNames(probe))
	}
	for _, f := range []string{"x", "y"} {
		if _, err := os.Lstat(filepath.Join(probe, f)); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("VOLUME ESCAPE: a guest write raced through a swapped-in link reached the host dir (%s): %v", f, err)
		}
	}

	// tmpfs: its size, and a write past it fails (4 MiB fits: the control).
	if out, code := sh("df -k /scratch | tail -1 | awk '{print $2}'; stat -c %a /scratch"); code != 0 || out != "8192\n1777\n" {
		t.Fatalf("tmpfs: exit %d %q (want 8192 KiB, mode 1777)", code, out)
	}
	if out, code := sh("dd if=/dev/zero of=/scratch/a bs=1M count=4 2>&1"); code != 0 {
		t.Fatalf("control: 4 MiB in an 8 MiB tmpfs: exit %d %q", code, out)
	}
	if _, code := sh("dd if=/dev/zero of=/scratch/b bs=1M count=6 2>&1"); code == 0 {
		t.Fatalf("10 MiB written into an 8 MiB tmpfs")
	}

	// A checkpoint cannot hold a volume's state (and qemu cannot migrate
	// vhost-user-fs): refused, naming the backend, the VM still running.
	if err := sb.Checkpoint(ctx, "vmvol-ckpt"); !errors.Is(err, lockbox.ErrUnsupported) || !strings.Contains(err.Error(), "microvm") {
		t.Fatalf("Checkpoint of a VM with volumes: %v, want ErrUnsupported naming the backend", err)
	}
	if out, code := sh("cat /data/host.txt"); code != 0 || out != "from host\n" {
		t.Fatalf("the VM after a refused checkpoint: exit %d %q", code, out)
	}

	// Each virtiofsd: confined, its root the volume alone.
	info, err := sb.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	procs := descendants(info.HelperPID)
	checkVirtiofsdConfined(t, info.HelperPID, procs, [][]string{dirNames(rw), dirNames(ro), dirNames(vol.Path)})

	if err := sb.Remove(ctx); err != nil {
		t.Fatal(err)
	}
	removed = true
	// 30 s: qemu's exit under TCG on a loaded machine can take seconds.
	deadline := time.Now().Add(30 * time.Second)
	for _, p := range append(procs, info.HelperPID) {
		for alive(p) && time.Now().Before(deadline) {
			time.Sleep(50 * time.Millisecond)
		}
		if alive(p) {
			t.Fatalf("pid %d (%s) survived Remove", p, exeOf(p))
		}
	}
	// The volumes stay, with what the guest wrote.
	if b, _ := os.ReadFile(filepath.Join(rw, "root.txt")); string(b) != "from root\n" {
		t.Fatalf("volume after Remove: %q", b)
	}
}

// checkVirtiofsdConfined: one serving virtiofsd per volume whose root
// holds exactly that volume's names, each in its own user/mnt/pid/net
// namespaces, as host uid 100000 (never host root), with no_new_privs
// and a seccomp filter, and without CAP_SYS_ADMIN (effective, permitted
// or bounding: virtiofsd clears its bounding set to what it keeps, 0 in
// fact). The helper must fail the same checks (the control).
func checkVirtiofsdConfined(t *testing.T, helper int, procs []int, volumes [][]string) {
	t.Helper()
	unconfined := func(pid int) []string {
		var why []string
		for _, ns := range []string{"user", "mnt", "pid", "net"} {
			if nsOf(pid, ns) == nsOf(os.Getpid(), ns) {
				why = append(why, "host "+ns+" namespace")
			}
		}
		if f := strings.Fields(statusField(pid, "Uid")); len(f) < 2 || f[1] != strconv.Itoa(hostOfGuestRoot) {
			why = append(why, "uid "+statusField(pid, "Uid"))
		}
		if v := statusField(pid, "NoNewPrivs"); v != "1" {
			why = append(why, "NoNewPrivs "+v)
		}
		if v := statusField(pid, "Seccomp"); v != "2" {
			why = append(why, "Seccomp "+v)
		}
		for _, set := range []string{"CapEff", "CapPrm", "CapBnd"} {
			if v, err := strconv.ParseUint(statusField(pid, set), 16, 64); err != nil || v&(1<<21) != 0 {
				why = append(why, set+" "+statusField(pid, set)+" (CAP_SYS_ADMIN)")
			}
		}
		return why
	}
	if len(unconfined(helper)) == 0 {
		t.Fatalf("control: the helper %d passes the virtiofsd check: it proves nothing", helper)
	}
	want := map[string]bool{}
	for _, v := range volumes {
		want[strings.Join(v, ",")] = true
	}
	// virtiofsd forks once into its own namespaces and its parent waits
	// (with no capabilities): the serving one is the virtiofsd whose
	// parent is a virtiofsd. The jail's seccomp layer is on both, so a
	// filter state cannot tell them apart.
	isVfs := map[string]bool{}
	for _, p := range procs {
		if strings.HasSuffix(exeOf(p), "virtiofsd") {
			isVfs[strconv.Itoa(p)] = true
		}
	}
	served := 0
	for _, p := range procs {
		if !isVfs[strconv.Itoa(p)] || !isVfs[statusField(p, "PPid")] {
			continue // the jail's PID 1 and virtiofsd's waiting parent
		}
		root := strings.Join(dirNames(filepath.Join("/proc", strconv.Itoa(p), "root")), ",")
		if why := unconfined(p); len(why) > 0 {
			t.Fatalf("VIRTIOFSD ESCAPE: %d is not confined: %v", p, why)
		}
		if !want[root] {
			t.Fatalf("VIRTIOFSD ESCAPE: %d's root holds %q, not one volume (%v)", p, root, volumes)
		}
		// virtiofsd's own filter is one; the jail's setuid-mode layer
		// (the guest kernel is the sandbox's) comes on top of it.
		if n, _ := strconv.Atoi(statusField(p, "Seccomp_filters")); n < 2 {
			t.Fatalf("VIRTIOFSD: %d has %d seccomp filters: the jail's setuid-mode layer is missing", p, n)
		}
		delete(want, root)
		served++
		t.Logf("virtiofsd %d: uid %s, CapEff %s, CapBnd %s, VmRSS %s, root [%s]", p, statusField(p, "Uid"), statusField(p, "CapEff"), statusField(p, "CapBnd"), statusField(p, "VmRSS"), root)
	}
	if served != len(volumes) || len(want) != 0 {
		t.Fatalf("%d serving virtiofsd for %d volumes (unmatched: %v) among %v", served, len(volumes), want, procs)
	}
}
