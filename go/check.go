package lockbox

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"strings"
)

// CheckStatus grades one preflight item.
type CheckStatus string

const (
	// CheckOK: the host allows what the engine does here.
	CheckOK CheckStatus = "ok"
	// CheckWarn: sandboxes run, but something is weaker or missing (it
	// shows up in SandboxInfo.NotEnforced, or a feature is unavailable).
	CheckWarn CheckStatus = "warn"
	// CheckFail: sandboxes cannot be created until it is fixed.
	CheckFail CheckStatus = "fail"
)

// CheckItem is one thing the host allows or not.
type CheckItem struct {
	// Name is stable, for scripts: "userns", "apparmor-userns",
	// "landlock", "cgroup", "seccomp", "pasta", "kvm", "microvm", "engine".
	Name   string      `json:"name"`
	Status CheckStatus `json:"status"`
	// Found says what was seen, with the values read.
	Found string `json:"found"`
	// Fix says what to do about a warn or fail ("" when ok).
	Fix string `json:"fix,omitempty"`
}

// Report is what Check found, in a fixed order.
type Report struct {
	Kernel string      `json:"kernel"`
	UID    int         `json:"uid"` // the effective uid the checks ran as
	Items  []CheckItem `json:"items"`
}

// Failed reports whether any item is CheckFail.
func (r *Report) Failed() bool {
	for _, it := range r.Items {
		if it.Status == CheckFail {
			return true
		}
	}
	return false
}

// Item returns the item called name.
func (r *Report) Item(name string) (CheckItem, bool) {
	for _, it := range r.Items {
		if it.Name == name {
			return it, true
		}
	}
	return CheckItem{}, false
}

// Check is a preflight report of what this host allows the engine, as the
// calling process's user: user namespaces (and distribution restrictions
// on them), Landlock, cgroups, seccomp, pasta, KVM and the installed
// engine. It is what to run when the engine will not start: it never loads
// the engine library and writes nothing (its probes are short-lived child
// processes and read-only opens). The microvm item says whether this host
// runs IsolationMicroVM sandboxes: when the engine is already loaded in
// this process (lockbox doctor loads it), from the engine's host.vm_check,
// whose bounded KVM boot probe is cached under the engine's state dir;
// otherwise from Go's probes, which leave that verdict pending. The error
// is only ever ctx's.
func Check(ctx context.Context) (*Report, error) {
	r := &Report{Kernel: kernelRelease(), UID: os.Geteuid()}
	for _, c := range append(hostChecks(), checkEngine) {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		r.Items = append(r.Items, c(ctx))
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	return r, nil
}

func kernelRelease() string {
	b, err := readSmall("/proc/sys/kernel/osrelease")
	if err != nil {
		return "unknown"
	}
	return b
}

// readSmall reads a /proc or /sys value: small by nature, still bounded.
func readSmall(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, 64<<10))
	return strings.TrimSpace(string(b)), err
}

// checkEngine finds the engine the SDK would load, without loading it:
// LOCKBOX_LIB, else a complete install of the pinned version (an offline
// EnsureInstalled only reads).
func checkEngine(ctx context.Context) CheckItem {
	it := CheckItem{Name: "engine"}
	if p := os.Getenv("LOCKBOX_LIB"); p != "" {
		fi, err := os.Stat(p)
		if err != nil {
			it.Status, it.Found = CheckFail, "LOCKBOX_LIB="+p+": "+err.Error()
			it.Fix = "point LOCKBOX_LIB at a liblockbox.so, or unset it to use the installed engine"
			return it
		}
		it.Status = CheckOK
		it.Found = fmt.Sprintf("LOCKBOX_LIB=%s (%d bytes; a development override: installs are not used)", p, fi.Size())
		return it
	}
	inst, err := EnsureInstalled(ctx, WithOffline(true))
	if err != nil {
		it.Status, it.Found = CheckFail, err.Error()
		it.Fix = "lockbox install --version " + Version + " (with LOCKBOX_RELEASE_URL set), or EnsureInstalled from your program"
		return it
	}
	it.Status = CheckOK
	it.Found = fmt.Sprintf("lockbox %s installed in %s (manifest, owners, modes and sizes checked; `lockbox verify` also re-hashes the library)", inst.Version, inst.Dir)
	return it
}

// boundedBuffer keeps the first max bytes of a probe's output and drops
// the rest: a probe must not make Check buffer without a bound.
type boundedBuffer struct {
	bytes.Buffer
	max int
}

func (b *boundedBuffer) Write(p []byte) (int, error) {
	if room := b.max - b.Len(); room > 0 {
		b.Buffer.Write(p[:min(len(p), room)])
	}
	return len(p), nil
}
