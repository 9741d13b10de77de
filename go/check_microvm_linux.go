package lockbox

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"

	"lockbox.dev/lockbox/internal/abi"
	"lockbox.dev/lockbox/internal/checkmode"
	"lockbox.dev/lockbox/internal/wire"
)

// vmFacts is what decides whether this host runs microVM sandboxes: the
// shape of the engine's host.vm_check result (docs/microvm.md), filled
// from Go's own probes when the engine is not asked.
type vmFacts struct {
	QEMU         string // path, "" when absent
	Assets       string // directory holding vmlinuz and initramfs.img, "" when absent
	AssetsWhy    string // why Assets is "" (not installed, damaged, ...)
	KVM          string // "usable", "unusable", "absent"
	KVMReason    string
	DefaultAccel string // "kvm", "tcg" or "" (none: microVM sandboxes fail)
	Reason       string // why DefaultAccel is what it is
	// Probed: the KVM verdict comes from the engine's bounded boot probe,
	// not only from opening /dev/kvm.
	Probed bool
}

// vmAccelEnv is how a user asks for an acceleration (the engine reads it).
const vmAccelEnv = "LOCKBOX_VM_ACCEL"

// qemuBinary: the system emulator for this CPU, as Debian's
// qemu-system-x86 (qemu-system-arm for arm64) installs it.
func qemuBinary() string {
	arch := map[string]string{"amd64": "x86_64", "arm64": "aarch64"}[runtime.GOARCH]
	if arch == "" {
		arch = runtime.GOARCH
	}
	return "qemu-system-" + arch
}

func qemuPackage() string {
	if runtime.GOARCH == "arm64" {
		return "qemu-system-arm"
	}
	return "qemu-system-x86"
}

// goVMFacts probes without the engine: qemu on PATH (or /usr/bin), whether
// /dev/kvm opens and answers, the assets. Whether KVM boots a guest is
// the engine's probe; here KVM is "usable" when it opens.
func goVMFacts(ctx context.Context) vmFacts {
	var f vmFacts
	if p, err := exec.LookPath(qemuBinary()); err == nil {
		f.QEMU = p
	} else if p := filepath.Join("/usr/bin", qemuBinary()); isExecutable(p) {
		f.QEMU = p
	}
	f.KVM, f.KVMReason = kvmOpenState()
	f.Assets, f.AssetsWhy = vmAssetsState(ctx)
	switch accel := os.Getenv(vmAccelEnv); {
	case accel == "tcg":
		f.DefaultAccel, f.Reason = "tcg", vmAccelEnv+"=tcg (software emulation, slow)"
	case accel == "kvm":
		f.DefaultAccel, f.Reason = "kvm", vmAccelEnv+"=kvm"
	case f.KVM == "usable":
		// Some hosts (nested paravirtual KVM) open /dev/kvm and hang the
		// guest: only the engine's boot probe may make KVM the default.
		f.Reason = "/dev/kvm opens, but whether KVM boots a guest is the engine's probe (pending)"
	default:
		f.Reason = "no usable KVM and " + vmAccelEnv + " is not set (TCG is used only when asked for)"
	}
	return f
}

func isExecutable(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.Mode().IsRegular() && fi.Mode().Perm()&0o111 != 0
}

// kvmOpenState: "absent", "unusable" (with the reason) or "usable".
func kvmOpenState() (string, string) {
	f, err := os.OpenFile("/dev/kvm", os.O_RDWR|syscall.O_CLOEXEC, 0)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return "absent", "no /dev/kvm"
	case err != nil:
		return "unusable", "/dev/kvm cannot be opened: " + err.Error()
	}
	defer f.Close()
	const kvmGetAPIVersion = 0xAE00 // _IO(KVMIO, 0x00)
	v, _, e := syscall.Syscall(syscall.SYS_IOCTL, f.Fd(), kvmGetAPIVersion, 0)
	if e != 0 {
		return "unusable", "KVM_GET_API_VERSION failed: " + e.Error()
	}
	return "usable", fmt.Sprintf("/dev/kvm opens (KVM API %d)", v)
}

// vmAssetsState finds the guest where the engine looks (C3):
// LOCKBOX_VM_ASSETS, else the installed version's vm/, verified (an
// offline EnsureInstalled with WithVMAssets re-hashes both files).
func vmAssetsState(ctx context.Context) (string, string) {
	if d := os.Getenv("LOCKBOX_VM_ASSETS"); d != "" {
		for _, f := range []string{"vmlinuz", "initramfs.img"} {
			if _, err := os.Stat(filepath.Join(d, f)); err != nil {
				return "", "LOCKBOX_VM_ASSETS=" + d + ": " + err.Error()
			}
		}
		return d, ""
	}
	if os.Getenv("LOCKBOX_LIB") != "" {
		return "", "LOCKBOX_LIB is a development library: set LOCKBOX_VM_ASSETS to a directory with vmlinuz and initramfs.img (make vm-assets: build/vm)"
	}
	inst, err := EnsureInstalled(ctx, WithOffline(true), WithVMAssets())
	switch {
	case errors.Is(err, ErrNotInstalled):
		return "", "not installed"
	case err != nil:
		return "", strings.ReplaceAll(err.Error(), "; ", ", ")
	}
	return inst.VMAssetsDir, ""
}

// microVMItem grades the facts. Never a fail: the native backend, the
// default, needs none of it.
func microVMItem(f vmFacts) CheckItem {
	it := CheckItem{Name: "microvm"}
	var missing, fixes []string
	if f.QEMU == "" {
		missing = append(missing, "no "+qemuBinary())
		fixes = append(fixes, "apt install "+qemuPackage())
	}
	if f.Assets == "" {
		missing = append(missing, "no guest assets")
		fixes = append(fixes, "lockbox install --vm (or EnsureInstalled(ctx, lockbox.WithVMAssets()))")
	}
	if f.DefaultAccel == "" {
		missing = append(missing, "no acceleration known to work")
		fixes = append(fixes, "make /dev/kvm usable, or set "+vmAccelEnv+"=tcg for software emulation")
	}
	kvm := "KVM " + f.KVM
	if f.KVMReason != "" {
		kvm += ": " + f.KVMReason
	}
	if !f.Probed {
		kvm += "; boot probe pending: the engine is not loaded, so whether KVM boots a guest is not known (lockbox doctor loads it)"
	}
	qemu := "qemu " + f.QEMU
	if f.QEMU == "" {
		qemu = "qemu: none (" + qemuBinary() + " not on PATH)"
	}
	assets := "assets " + f.Assets
	if f.Assets == "" {
		assets = "assets: " + f.AssetsWhy
	}
	accel := "acceleration " + f.DefaultAccel + ": " + f.Reason
	if f.DefaultAccel == "" {
		accel = "acceleration: none: " + f.Reason
	}
	if f.DefaultAccel != "tcg" && !strings.Contains(f.Reason, vmAccelEnv+"=tcg") {
		accel += "; TCG only with " + vmAccelEnv + "=tcg"
	}
	verdict := "microVM sandboxes available"
	it.Status = CheckOK
	if len(missing) > 0 {
		verdict = "microVM sandboxes unavailable: " + strings.Join(missing, ", ")
		it.Status = CheckWarn
		it.Fix = strings.Join(fixes, "; ")
	}
	it.Found = strings.Join([]string{verdict, kvm, accel, qemu, assets}, "; ")
	return it
}

// checkMicroVM asks the engine only when lockbox doctor loaded it and said
// so (checkmode; Check itself never loads or opens it): its KVM verdict
// comes from a bounded boot probe, cached per host and guest kernel.
// Otherwise, or if the engine cannot answer, Go's own probes say what
// they can.
func checkMicroVM(ctx context.Context) CheckItem {
	if abi.LoadedPath() == "" || !checkmode.Engine() {
		return microVMItem(goVMFacts(ctx))
	}
	f, err := engineVMFacts(ctx)
	if err != nil {
		it := microVMItem(goVMFacts(ctx))
		it.Found += "; the engine's probe failed: " + strings.ReplaceAll(err.Error(), "; ", ", ")
		return it
	}
	return microVMItem(f)
}

func engineVMFacts(ctx context.Context) (vmFacts, error) {
	var r wire.VMCheck
	if err := callMethod(ctx, "host.vm_check", wire.HostVMCheck, nil, &r); err != nil {
		return vmFacts{}, err
	}
	f := vmFacts{KVM: r.KVM, KVMReason: r.KVMReason, Reason: r.Reason, Probed: true}
	if r.QEMU != nil {
		f.QEMU = *r.QEMU
	}
	if r.Assets != nil {
		f.Assets = *r.Assets
	} else {
		f.AssetsWhy = "not found (" + assetsWhere() + ")"
	}
	if r.DefaultAccel != nil {
		f.DefaultAccel = *r.DefaultAccel
	}
	return f, nil
}

// assetsWhere: where the engine looks for the guest (C3).
func assetsWhere() string {
	if d := os.Getenv("LOCKBOX_VM_ASSETS"); d != "" {
		return "LOCKBOX_VM_ASSETS=" + d
	}
	return "LOCKBOX_VM_ASSETS unset, <libdir>/../vm has no vmlinuz and initramfs.img: lockbox install --vm"
}
