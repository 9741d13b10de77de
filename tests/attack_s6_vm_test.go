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

// TestVMAttackS6 (one VM boot, shared by its subtests: each TCG boot costs
// CI 10-25 s). GuestRoot: a microVM's guest is attacker
// code, kernel included, and its volumes are host directories. What a
// guest with kernel powers sends through virtio-fs and virtio-blk must not
// change the host in ways native forbids: no setuid file or setgid
// directory in a volume (a setuid file there is one on the host, runnable
// by any local user who reaches the directory, as its host owner), no
// device node, no write into a read-only volume, no write to the
// read-only disks (the erofs layer cache is shared by every sandbox of the
// image; config.img is hashed into checkpoints).
//
// Kernel powers came from the guest kernel's own helpers (S6-VM-1b): guest
// root wrote /proc/sys/kernel/core_pattern ("|/tmp/pwn") and a crash made
// the kernel run the helper as root with every capability and no filter;
// or it planted /sbin/modprobe in its root and ran a file of no known
// format (the kernel requests a binfmt module). Both reports read CapEff
// 000001ffffffffff before the fix. Now init sets a plain core_pattern and
// an empty modprobe, binds the kernel's knobs read-only (as native does)
// and keeps the kernel's helpers out of the image's root; this test
// requires every knob refused (control: a writable procfs file takes the
// same write) and no helper report (control: the helpers, run by the
// workload, report into the volume). Should guest root reach kernel
// powers again, the host-side checks below run on the helper's work:
// without the jail's setuid-mode filter on virtiofsd this test failed
// with "setuid file on the host: .../direct mode 104755".
// DevNodes: see vmAttackDevNodes (attack_s6_vm_dev_test.go).
// MarkerInHostData: see vmAttackMarker (attack_s6_marker_test.go).
func TestVMAttackS6(t *testing.T) {
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
	name := "s6-attack"
	sb, err := lockbox.CreateSandbox(ctx, lockbox.WithName(name), lockbox.WithReplace(),
		lockbox.WithIsolation(lockbox.IsolationMicroVM), lockbox.WithMemory(128),
		lockbox.WithVolume(vol, "/data", false), lockbox.WithVolume(ro, "/ro", true))
	if err != nil {
		t.Fatalf("CreateSandbox: %v", err)
	}
	defer func() { _ = sb.Remove(context.Background()) }()
	t.Run("GuestRoot", func(t *testing.T) {
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

		// S6-VM-1b: the guest kernel's knobs are read-only for guest root
		// (sysctls check euid 0 only). Control: the same open for writing
		// reaches a procfs file the shell may write (its own comm), so each
		// refusal below is the mount's, not the method's.
		if out, code := sh(": >> /proc/self/comm && echo writable"); code != 0 || !strings.Contains(out, "writable") {
			t.Fatalf("control: a writable procfs file refused the write: exit %d %q", code, out)
		}
		if out, _ := sh("cat /proc/sys/kernel/core_pattern; echo modprobe=$(cat /proc/sys/kernel/modprobe)"); out != "core\nmodprobe=\n" {
			t.Errorf("init's kernel settings: %q, want core_pattern \"core\" and an empty modprobe", out)
		}
		sysKnobs := 0
		for _, knob := range []string{
			"/proc/sys/kernel/core_pattern", "/proc/sys/kernel/modprobe", "/proc/sysrq-trigger",
			"/proc/sys/vm/drop_caches", "/sys/kernel/uevent_helper", "/sys/power/state",
			"/sys/fs/cgroup/sandbox/memory.max",
		} {
			out, code := sh("[ -e " + knob + " ] || { echo missing; exit 2; }; : >> " + knob)
			if code == 2 && strings.Contains(out, "missing") {
				if strings.HasPrefix(knob, "/proc") {
					t.Errorf("%s missing in the guest: nothing checked", knob)
				}
				continue
			}
			if strings.HasPrefix(knob, "/sys") {
				sysKnobs++
			}
			if code == 0 {
				t.Errorf("ATTACK: guest root can write %s", knob)
			} else {
				t.Logf("%s refused: %s", knob, strings.TrimSpace(out))
			}
		}
		if sysKnobs == 0 {
			t.Errorf("no /sys knob present to check")
		}

		// The attacks: the guest kernel runs a program of ours as full root,
		// through a core dump pipe or through modprobe (an executable of no
		// known format makes the kernel request a binfmt module). Before the
		// fix both ran, with CapEff 000001ffffffffff.
		helper := `#!/bin/sh
	exec >/data/${1:-helper}.out 2>&1
	grep -E 'Cap(Eff|Bnd)|Seccomp:|NoNewPrivs' /proc/self/status
	[ -n "$1" ] && exit 0
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
		// Controls: run by the workload itself, both helpers report into the
		// volume, so a run by the kernel would be seen.
		modprobe := "#!/bin/sh\\no=/data/modprobe.out; [ \"$1\" = probe ] && o=/data/modprobe-probe.out\\ngrep CapEff /proc/self/status > $o\\n"
		if out, code := sh("cp /data/pwn.sh /tmp/pwn && chmod 755 /tmp/pwn && /tmp/pwn probe; mkdir -p /sbin && rm -f /sbin/modprobe" +
			" && printf '" + modprobe + "' > /sbin/modprobe && chmod 755 /sbin/modprobe && /sbin/modprobe probe"); code != 0 {
			t.Fatalf("control: the helpers did not run for the workload: exit %d %q", code, out)
		}
		for _, f := range []string{"probe.out", "modprobe-probe.out"} {
			b, _ := os.ReadFile(filepath.Join(vol, f))
			if !strings.Contains(string(b), "CapEff:") || strings.Contains(string(b), "CapEff:\t000001ffffffffff") {
				t.Fatalf("control: %s run by the workload reported %q (want its reduced CapEff)", f, b)
			}
		}
		pattern := ""
		for _, s := range []string{
			"echo '|/tmp/pwn' > /proc/sys/kernel/core_pattern; echo rc=$?; cat /proc/sys/kernel/core_pattern",
			"printf '\\001\\002\\003\\004' > /tmp/alien && chmod 755 /tmp/alien && /tmp/alien; echo exec=$?",
			"sh -c 'kill -SEGV $$'; echo crashed",
		} {
			out, code := sh(s)
			t.Logf("%s\n  -> exit %d: %s", s, code, strings.TrimSpace(out))
			if strings.Contains(s, "core_pattern") {
				pattern = out
			}
		}
		// A helper the kernel started runs while the crash returns: poll
		// long when the pipe took, briefly when it did not.
		wait := 3 * time.Second
		if strings.Contains(pattern, "|/tmp/pwn") {
			wait = 60 * time.Second
		}
		var report []byte
		for deadline := time.Now().Add(wait); time.Now().Before(deadline); time.Sleep(250 * time.Millisecond) {
			report, _ = os.ReadFile(filepath.Join(vol, "helper.out"))
			if strings.Contains(string(report), "helper-done") {
				break
			}
		}
		if b, err := os.ReadFile(filepath.Join(vol, "modprobe.out")); err == nil {
			t.Errorf("ATTACK: the guest kernel ran guest root's modprobe: %s", strings.TrimSpace(string(b)))
		}
		if len(report) == 0 {
			return
		}
		// Guest root reached kernel powers: the host must still hold.
		t.Errorf("ATTACK: the guest kernel ran guest root's core dump helper:\n%s", report)
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
	})
	t.Run("DevNodes", func(t *testing.T) { vmAttackDevNodes(ctx, t, sb) })
	// Last: before its fix, this one cost the host its connection.
	t.Run("MarkerInHostData", func(t *testing.T) { vmAttackMarker(ctx, t, sb, vol) })
}
