//go:build linux

package lockbox

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"lockbox.dev/lockbox/internal/checkmode"
)

var checkNames = []string{"userns", "apparmor-userns", "landlock", "cgroup", "seccomp", "pasta", "kvm", "microvm", "engine"}

func assertReportShape(t *testing.T, r *Report) {
	t.Helper()
	if len(r.Items) != len(checkNames) {
		t.Fatalf("%d items, want %d: %+v", len(r.Items), len(checkNames), r.Items)
	}
	for i, it := range r.Items {
		if it.Name != checkNames[i] {
			t.Errorf("item %d is %q, want %q", i, it.Name, checkNames[i])
		}
		switch it.Status {
		case CheckOK, CheckWarn, CheckFail:
		default:
			t.Errorf("%s: status %q", it.Name, it.Status)
		}
		if it.Found == "" {
			t.Errorf("%s: nothing found said", it.Name)
		}
		if it.Status == CheckFail && it.Fix == "" {
			t.Errorf("%s fails without a fix: %s", it.Name, it.Found)
		}
	}
}

// unshareWorks asks util-linux's unshare for the namespaces the probe
// makes: an independent answer to "may this user build a sandbox".
func unshareWorks(t *testing.T, wrap ...string) (bool, bool) {
	t.Helper()
	bin, err := exec.LookPath("unshare")
	if err != nil {
		return false, false
	}
	argv := append(wrap, bin, "--user", "--map-root-user", "--mount", "--pid", "--net", "--fork", "true")
	return exec.Command(argv[0], argv[1:]...).Run() == nil, true
}

func kvmOpens() bool {
	f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0)
	if err == nil {
		f.Close()
	}
	return err == nil
}

// Each item is compared with an answer got another way on this host.
func TestCheckAgreesWithTheHost(t *testing.T) {
	home := filepath.Join(t.TempDir(), "never-made")
	t.Setenv("LOCKBOX_LIB", "")
	t.Setenv("LOCKBOX_HOME", home)
	t.Setenv("LOCKBOX_PASTA", "")
	r, err := Check(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	assertReportShape(t, r)
	if r.UID != os.Geteuid() || r.Kernel == "" || r.Kernel == "unknown" {
		t.Errorf("uid %d kernel %q", r.UID, r.Kernel)
	}
	for _, it := range r.Items {
		t.Logf("%-15s %-4s %s", it.Name, it.Status, it.Found)
	}
	userns, _ := r.Item("userns")
	if works, ok := unshareWorks(t); ok && works != (userns.Status == CheckOK) {
		t.Errorf("unshare says user namespaces work=%v; Check says %+v", works, userns)
	}
	kvm, _ := r.Item("kvm")
	if kvmOpens() != (kvm.Status == CheckOK) {
		t.Errorf("/dev/kvm opens=%v; Check says %+v", kvmOpens(), kvm)
	}
	pasta, _ := r.Item("pasta")
	if _, err := exec.LookPath("pasta"); (err == nil) != (pasta.Status == CheckOK) {
		t.Errorf("pasta in PATH: %v; Check says %+v", err == nil, pasta)
	}
	ll, _ := r.Item("landlock")
	if abi, err := landlockABI(); err == nil && abi >= landlockABIWanted {
		if ll.Status != CheckOK || !strings.Contains(ll.Found, strconv.Itoa(abi)) {
			t.Errorf("landlock ABI %d; Check says %+v", abi, ll)
		}
	} else if ll.Status == CheckOK {
		t.Errorf("landlock ABI %d (%v); Check says ok", abi, err)
	}
	// Nothing is installed under an empty LOCKBOX_HOME: the engine item
	// fails with the install command, and Check made no directory.
	eng, _ := r.Item("engine")
	if eng.Status != CheckFail || !strings.Contains(eng.Fix, "lockbox install") {
		t.Errorf("engine under an empty home: %+v", eng)
	}
	if _, err := os.Lstat(home); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Check wrote %s: %v", home, err)
	}
	if !r.Failed() {
		t.Error("Failed() is false with a fail item")
	}
}

func TestCheckEngineFromLOCKBOXLIB(t *testing.T) {
	lib := filepath.Join(t.TempDir(), "liblockbox.so")
	if err := os.WriteFile(lib, []byte("not loaded"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("LOCKBOX_LIB", lib)
	r, err := Check(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if eng, _ := r.Item("engine"); eng.Status != CheckOK || !strings.Contains(eng.Found, lib) {
		t.Errorf("engine with LOCKBOX_LIB: %+v", eng)
	}
	t.Setenv("LOCKBOX_LIB", lib+".missing")
	if r, err = Check(context.Background()); err != nil {
		t.Fatal(err)
	}
	if eng, _ := r.Item("engine"); eng.Status != CheckFail {
		t.Errorf("engine with a missing LOCKBOX_LIB: %+v", eng)
	}
}

func TestCheckHonoursContext(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	start := time.Now()
	r, err := Check(ctx)
	if !errors.Is(err, context.Canceled) || r != nil {
		t.Fatalf("canceled: %v, %v", r, err)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("a canceled Check took %v", d)
	}
}

// The same report as an unprivileged user (nobody): the test binary runs
// itself as uid 65534 and prints its report, which must agree with what
// unshare(1) run as nobody says.
func TestCheckAsUnprivilegedUser(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to switch to nobody")
	}
	dir, err := os.MkdirTemp("", "lockbox-check-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "check.test")
	if err := copyExecutable(self, bin); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "-test.run", "^TestCheckChildProcess$", "-test.count=1")
	cmd.Dir = dir
	cmd.Env = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "HOME=" + dir, "LOCKBOX_HOME=" + filepath.Join(dir, "home"), "LOCKBOX_CHECK_CHILD=1"}
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("child: %v\n%s", err, out)
	}
	_, js, ok := bytes.Cut(out, []byte("REPORT "))
	if !ok {
		t.Fatalf("no report in the child's output:\n%s", out)
	}
	js, _, _ = bytes.Cut(js, []byte("\n"))
	var r Report
	if err := json.Unmarshal(js, &r); err != nil {
		t.Fatal(err)
	}
	assertReportShape(t, &r)
	if r.UID != 65534 {
		t.Errorf("report uid %d", r.UID)
	}
	for _, it := range r.Items {
		t.Logf("nobody: %-15s %-4s %s", it.Name, it.Status, it.Found)
	}
	userns, _ := r.Item("userns")
	if works, ok := unshareWorks(t, "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"); ok && works != (userns.Status == CheckOK) {
		t.Errorf("unshare as nobody says user namespaces work=%v; Check says %+v", works, userns)
	}
	// /dev/kvm is usually root:kvm 0660 or root 0600: nobody opens it
	// only if others may.
	kvm, _ := r.Item("kvm")
	if fi, err := os.Stat("/dev/kvm"); err == nil && fi.Mode().Perm()&0o006 != 0o006 && kvm.Status == CheckOK {
		t.Errorf("/dev/kvm is %v, yet nobody's check says %+v", fi.Mode(), kvm)
	}
}

func TestCheckChildProcess(t *testing.T) {
	if os.Getenv("LOCKBOX_CHECK_CHILD") != "1" {
		t.Skip("run by TestCheckAsUnprivilegedUser")
	}
	r, err := Check(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	js, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	os.Stdout.WriteString("REPORT " + string(js) + "\n")
}

func copyExecutable(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o755)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// The microvm item says what is missing and how to get it: with the
// guest's assets and LOCKBOX_VM_ACCEL=tcg on a host with qemu it is ok;
// without assets, or without an acceleration known to work, it warns with
// the install command or the variable, and names the qemu it found.
func TestCheckMicroVMItem(t *testing.T) {
	qemu, qerr := exec.LookPath(qemuBinary())
	assets := t.TempDir()
	for _, f := range []string{"vmlinuz", "initramfs.img"} {
		if err := os.WriteFile(filepath.Join(assets, f), []byte("x"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	item := func() CheckItem {
		it := checkMicroVM(context.Background())
		t.Logf("%s: %s (fix: %s)", it.Status, it.Found, it.Fix)
		return it
	}
	t.Setenv("LOCKBOX_VM_ASSETS", assets)
	t.Setenv("LOCKBOX_VM_ACCEL", "tcg")
	it := item()
	if !strings.Contains(it.Found, "acceleration tcg") || !strings.Contains(it.Found, "assets "+assets) {
		t.Fatalf("tcg with assets: %+v", it)
	}
	if qerr == nil {
		if it.Status != CheckOK || !strings.Contains(it.Found, "qemu "+qemu) || !strings.HasPrefix(it.Found, "microVM sandboxes available") {
			t.Fatalf("qemu at %s, assets, tcg: %+v", qemu, it)
		}
	} else if it.Status != CheckWarn || !strings.Contains(it.Fix, "apt install") {
		t.Fatalf("no qemu on this host: %+v", it)
	}

	// No assets where the engine looks: the fix says how to install them.
	os.Remove(filepath.Join(assets, "initramfs.img"))
	it = item()
	if it.Status != CheckWarn || !strings.Contains(it.Found, "no guest assets") || !strings.Contains(it.Fix, "lockbox install --vm") {
		t.Fatalf("assets missing: %+v", it)
	}
	t.Setenv("LOCKBOX_VM_ASSETS", "")
	t.Setenv("LOCKBOX_LIB", "")
	t.Setenv("LOCKBOX_HOME", t.TempDir())
	if it = item(); !strings.Contains(it.Found, "assets: not installed") || !strings.Contains(it.Fix, "lockbox install --vm") {
		t.Fatalf("nothing installed: %+v", it)
	}

	// Without the variable, KVM is never assumed to boot a guest from
	// /dev/kvm opening alone; TCG is named as the explicit choice.
	t.Setenv("LOCKBOX_VM_ACCEL", "")
	it = item()
	if it.Status != CheckWarn || strings.Contains(it.Found, "acceleration kvm") || !strings.Contains(it.Fix, "LOCKBOX_VM_ACCEL=tcg") {
		t.Fatalf("no accel chosen: %+v", it)
	}
}

// With the engine loaded, the microvm item is the engine's host.vm_check
// answer (its KVM verdict from the boot probe), not Go's "probe pending".
// The engine reads LOCKBOX_VM_ASSETS from its process environment, so a
// child process runs the check; the assets dir is empty, so the engine
// probes nothing and answers at once.
func TestCheckMicroVMFromEngine(t *testing.T) {
	if mode := os.Getenv("LOCKBOX_CHECK_VM_CHILD"); mode != "" {
		if mode == "load" {
			if err := Load(); err != nil {
				t.Fatalf("Load: %v", err)
			}
			checkmode.UseEngine()
		}
		b, _ := json.Marshal(checkMicroVM(context.Background()))
		os.Stdout.Write(append(append([]byte("ITEM "), b...), '\n'))
		return
	}
	if os.Getenv("LOCKBOX_LIB") == "" {
		t.Skip("needs LOCKBOX_LIB (make test-go sets it)")
	}
	empty := t.TempDir()
	run := func(extra ...string) CheckItem {
		cmd := exec.Command(os.Args[0], "-test.run", "^TestCheckMicroVMFromEngine$", "-test.v")
		cmd.Env = append(os.Environ(), append([]string{"LOCKBOX_VM_ASSETS=" + empty, "LOCKBOX_HOME=" + t.TempDir()}, extra...)...)
		out, err := cmd.CombinedOutput()
		_, line, ok := strings.Cut(string(out), "ITEM ")
		line, _, _ = strings.Cut(line, "\n")
		var it CheckItem
		if err != nil || !ok || json.Unmarshal([]byte(line), &it) != nil {
			t.Fatalf("child: %v\n%s", err, out)
		}
		t.Logf("%s: %s (fix: %s)", it.Status, it.Found, it.Fix)
		return it
	}
	it := run("LOCKBOX_CHECK_VM_CHILD=load")
	if strings.Contains(it.Found, "probe pending") || it.Status != CheckWarn ||
		!strings.Contains(it.Found, "LOCKBOX_VM_ASSETS="+empty) || !strings.Contains(it.Fix, "lockbox install --vm") {
		t.Fatalf("engine's answer: %+v", it)
	}
	// Control: without the engine loaded, the same check is Go's own.
	if goItem := run("LOCKBOX_CHECK_VM_CHILD=go"); !strings.Contains(goItem.Found, "probe pending") {
		t.Fatalf("control: Go's probes claim a boot probe: %+v", goItem)
	}
}
