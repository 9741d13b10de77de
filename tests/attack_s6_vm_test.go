package tests

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"lockbox.dev/lockbox"
)

// fileSHA256 hashes a host file ("" when it cannot be read).
func fileSHA256(p string) string {
	f, err := os.Open(p)
	if err != nil {
		return ""
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return ""
	}
	return hex.EncodeToString(h.Sum(nil))
}

// TestVMAttackS6GuestRoot (one VM boot): a microVM's guest is attacker
// code, kernel included, and its volumes are host directories. What a
// guest with kernel powers sends through virtio-fs and virtio-blk must not
// change the host in ways native forbids: no setuid file or setgid
// directory in a volume (a setuid file there is one on the host, runnable
// by any local user who reaches the directory, as its host owner), no
// device node, no write into a read-only volume, no write to the
// read-only disks (the erofs layer cache is shared by every sandbox of the
// image; config.img is hashed into checkpoints).
//
// Kernel powers come from the guest's core dump helper: guest root writes
// /proc/sys/kernel/core_pattern and the guest kernel runs the helper as
// root with every capability and no filter (S6-VM-1b, open on the guest
// side). Controls, in the same run: the workload's direct chmod 4755 is
// refused by the guest's filter, the helper reports full capabilities,
// and its plain chmod does reach the host file. Without the jail's
// setuid-mode filter on virtiofsd this test failed with
// "setuid file on the host: .../direct mode 104755".
func TestVMAttackS6GuestRoot(t *testing.T) {
	needEngine(t)
	if r := vmSkipReason(); r != "" {
		t.Skip(r)
	}
	if os.Getuid() != 0 {
		t.Skip("volumes of microVM sandboxes need root")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	vol, ro := t.TempDir(), t.TempDir()
	for _, d := range []string{vol, ro} {
		if err := os.Chown(d, hostOfGuestRoot, hostOfGuestRoot); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	home := os.Getenv("LOCKBOX_HOME")
	erofs, _ := filepath.Glob(filepath.Join(home, "vm", "erofs", "*", "*.erofs"))
	before := map[string]string{}
	for _, p := range erofs {
		before[p] = fileSHA256(p)
	}
	name := "s6-guestroot"
	sb, err := lockbox.CreateSandbox(ctx, lockbox.WithName(name), lockbox.WithReplace(),
		lockbox.WithIsolation(lockbox.IsolationMicroVM), lockbox.WithMemory(128),
		lockbox.WithVolume(vol, "/data", false), lockbox.WithVolume(ro, "/ro", true))
	if err != nil {
		t.Fatalf("CreateSandbox: %v", err)
	}
	defer func() { _ = sb.Remove(context.Background()) }()
	sh := func(script string) (string, int) {
		t.Helper()
		res, err := sb.ExecArgs(ctx, []string{"sh", "-c", script})
		if err != nil {
			t.Fatalf("exec %q: %v", script, err)
		}
		return string(res.Stdout) + string(res.Stderr), res.ExitCode
	}
	cfgImg := filepath.Join(home, "sandboxes", name, "config.img")
	cfgBefore := fileSHA256(cfgImg)
	if erofs, _ = filepath.Glob(filepath.Join(home, "vm", "erofs", "*", "*.erofs")); len(erofs) == 0 || cfgBefore == "" {
		t.Fatalf("no layer cache or config.img to watch under %s", home)
	}
	for _, p := range erofs {
		if before[p] == "" {
			before[p] = fileSHA256(p)
		}
	}
	mode := func(name string) (uint32, bool) {
		fi, err := os.Lstat(filepath.Join(vol, name))
		if err != nil {
			return 0, false
		}
		return fi.Sys().(*syscall.Stat_t).Mode, true
	}

	// Control 1: a plain mode crosses, so the host-side checks read real
	// modes. Control 2: the guest's own filter refuses the direct way.
	if out, code := sh("cp /bin/busybox /data/direct 2>/dev/null || cp /bin/sh /data/direct; chmod 0711 /data/direct; echo x > /data/plain"); code != 0 {
		t.Fatalf("control: copy into the volume: exit %d %q", code, out)
	}
	if m, ok := mode("direct"); !ok || m&0o7777 != 0o711 {
		t.Fatalf("control: a plain chmod did not cross to the host: %o %v", m, ok)
	}
	out, _ := sh("chmod 4755 /data/direct; mknod /data/cdev0 c 1 3; echo done")
	t.Logf("workload's direct chmod 4755 and mknod: %q", strings.TrimSpace(out))
	if m, _ := mode("direct"); m&(syscall.S_ISUID|syscall.S_ISGID) != 0 {
		t.Fatalf("ATTACK: a workload's direct chmod 4755 set the bit on the host file")
	}

	// The attack: the guest kernel runs a helper of ours as full root.
	helper := `#!/bin/sh
exec >/data/helper.out 2>&1
grep -E 'Cap(Eff|Bnd)|Seccomp:|NoNewPrivs' /proc/self/status
chmod 0700 /data/plain; echo plain=$?
chmod 4755 /data/direct; echo chmod4755=$?
mkdir /data/sgid; chmod 2777 /data/sgid; echo sgiddir=$?
mknod /data/cdev c 1 3; echo mknod=$?
touch /ro/planted; echo rotouch=$?
for b in /sys/block/vd*; do
  n=${b##*/}; mknod /tmp/$n b $(tr : ' ' < $b/dev) 2>/dev/null
  blockdev --setrw /tmp/$n 2>/dev/null
  echo $n ro=$(cat $b/ro) serial=$(cat $b/serial 2>/dev/null)
  dd if=/dev/urandom of=/tmp/$n bs=4096 count=4 conv=notrunc,fsync 2>&1 | tail -1
done
echo helper-done
`
	if err := os.WriteFile(filepath.Join(vol, "pwn.sh"), []byte(helper), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{
		"cp /data/pwn.sh /tmp/pwn && chmod 755 /tmp/pwn",
		"echo '|/tmp/pwn' > /proc/sys/kernel/core_pattern; echo rc=$?; cat /proc/sys/kernel/core_pattern",
		"sh -c 'kill -SEGV $$'; echo crashed",
	} {
		out, code := sh(s)
		t.Logf("%s\n  -> exit %d: %s", s, code, strings.TrimSpace(out))
	}
	var report []byte
	for deadline := time.Now().Add(60 * time.Second); time.Now().Before(deadline); time.Sleep(250 * time.Millisecond) {
		report, _ = os.ReadFile(filepath.Join(vol, "helper.out"))
		if strings.Contains(string(report), "helper-done") {
			break
		}
	}
	t.Logf("helper report:\n%s", report)
	if !strings.Contains(string(report), "CapEff:\t000001ffffffffff") || !strings.Contains(string(report), "helper-done") {
		t.Skipf("the guest's core dump helper no longer runs with every capability (S6-VM-1b closed?): "+
			"this test needs another way to kernel powers; the workload's direct path was refused above. Report: %q", report)
	}
	if m, _ := mode("plain"); m&0o7777 != 0o700 {
		t.Fatalf("control: the helper's plain chmod 0700 did not reach the host (mode %o): the checks below prove nothing", m)
	}

	if m, _ := mode("direct"); m&syscall.S_ISUID != 0 {
		t.Errorf("ATTACK: setuid file on the host: %s mode %o", filepath.Join(vol, "direct"), m)
	}
	if m, ok := mode("sgid"); ok && m&syscall.S_ISGID != 0 {
		t.Errorf("ATTACK: setgid directory on the host: %s mode %o", filepath.Join(vol, "sgid"), m)
	}
	for _, n := range []string{"cdev", "cdev0"} {
		if m, ok := mode(n); ok && m&syscall.S_IFMT == syscall.S_IFCHR {
			t.Errorf("ATTACK: a device node %s in the host volume (mode %o)", n, m)
		}
	}
	if _, err := os.Lstat(filepath.Join(ro, "planted")); err == nil {
		t.Errorf("ATTACK: a file landed in the read-only volume")
	}
	for _, p := range erofs {
		if got := fileSHA256(p); got != before[p] {
			t.Errorf("ATTACK: the shared layer cache %s changed (%s -> %s)", p, before[p], got)
		}
	}
	if got := fileSHA256(cfgImg); got != cfgBefore {
		t.Errorf("ATTACK: config.img changed under the guest's writes")
	}
}
