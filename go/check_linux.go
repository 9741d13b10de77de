package lockbox

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// hostChecks are the kernel's and the host's items, in report order.
func hostChecks() []func(context.Context) CheckItem {
	return []func(context.Context) CheckItem{
		checkUserns, checkAppArmorUserns, checkLandlock, checkCgroup,
		checkSeccomp, checkPasta, checkKVM, checkMicroVM,
	}
}

func sysctlInt(path string) (int, bool) {
	s, err := readSmall(path)
	if err != nil {
		return 0, false
	}
	n, err := strconv.Atoi(s)
	return n, err == nil
}

const (
	sysctlUsernsClone    = "/proc/sys/kernel/unprivileged_userns_clone"
	sysctlMaxUserns      = "/proc/sys/user/max_user_namespaces"
	sysctlAppArmorUserns = "/proc/sys/kernel/apparmor_restrict_unprivileged_userns"
)

// trueBinaries are where a program that does nothing lives; the user
// namespace probe runs one in the namespaces a sandbox needs.
var trueBinaries = []string{"/usr/bin/true", "/bin/true"}

func checkUserns(ctx context.Context) CheckItem {
	it := CheckItem{Name: "userns"}
	root := os.Geteuid() == 0
	max, haveMax := sysctlInt(sysctlMaxUserns)
	if haveMax && max == 0 {
		it.Status, it.Found = CheckFail, "user.max_user_namespaces = 0: user namespaces are disabled for everyone"
		it.Fix = "sysctl -w user.max_user_namespaces=15000 (and persist it in /etc/sysctl.d/)"
		return it
	}
	if clone, ok := sysctlInt(sysctlUsernsClone); ok && clone == 0 && !root {
		it.Status, it.Found = CheckFail, "kernel.unprivileged_userns_clone = 0: only root may create user namespaces"
		it.Fix = "sysctl -w kernel.unprivileged_userns_clone=1 (persist it in /etc/sysctl.d/), or run as root"
		return it
	}
	err := probeUserns(ctx)
	switch {
	case errors.Is(err, errNoProbe):
		it.Status, it.Found = CheckWarn, "sysctls allow user namespaces, but no true(1) to probe with ("+strings.Join(trueBinaries, ", ")+")"
		it.Fix = "install coreutils to let doctor probe for real"
	case err != nil:
		it.Status, it.Found = CheckFail, "cannot create a user namespace with mount, pid and net namespaces: "+err.Error()
		it.Fix = "see the apparmor-userns item; in a container, run it with --privileged or a seccomp profile that allows unshare/clone of namespaces"
		if v, ok := sysctlInt(sysctlAppArmorUserns); ok && v == 1 && !root {
			it.Fix = "sysctl -w kernel.apparmor_restrict_unprivileged_userns=0, or give lockbox-helper an AppArmor profile that allows userns (docs/troubleshooting.md)"
		}
	default:
		it.Status = CheckOK
		it.Found = "created a user namespace with mount, pid and net namespaces"
		if haveMax {
			it.Found += fmt.Sprintf(" (user.max_user_namespaces = %d)", max)
		}
	}
	return it
}

var errNoProbe = errors.New("no probe binary")

// probeUserns starts true(1) in new user, mount, pid and net namespaces
// with this user mapped to root: what the helper asks of the kernel first.
// A distribution rule that lets the user namespace be made but takes its
// capabilities away (AppArmor's) makes the other namespaces fail here.
func probeUserns(ctx context.Context) error {
	bin := ""
	for _, b := range trueBinaries {
		if fi, err := os.Stat(b); err == nil && fi.Mode().IsRegular() {
			bin = b
			break
		}
	}
	if bin == "" {
		return errNoProbe
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin)
	cmd.Env = []string{}
	cmd.Dir = "/"
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Cloneflags:  syscall.CLONE_NEWUSER | syscall.CLONE_NEWNS | syscall.CLONE_NEWPID | syscall.CLONE_NEWNET,
		UidMappings: []syscall.SysProcIDMap{{ContainerID: 0, HostID: os.Geteuid(), Size: 1}},
		GidMappings: []syscall.SysProcIDMap{{ContainerID: 0, HostID: os.Getegid(), Size: 1}},
		Pdeathsig:   syscall.SIGKILL,
	}
	stderr := &boundedBuffer{max: 4096}
	cmd.Stderr = stderr
	if err := cmd.Run(); err != nil {
		if s := strings.TrimSpace(stderr.String()); s != "" {
			return fmt.Errorf("%v: %s", err, s)
		}
		return err
	}
	return nil
}

func checkAppArmorUserns(context.Context) CheckItem {
	it := CheckItem{Name: "apparmor-userns", Status: CheckOK}
	v, ok := sysctlInt(sysctlAppArmorUserns)
	switch {
	case !ok:
		it.Found = "no AppArmor user namespace restriction (kernel.apparmor_restrict_unprivileged_userns is absent)"
	case v == 0:
		it.Found = "kernel.apparmor_restrict_unprivileged_userns = 0"
	case os.Geteuid() == 0:
		it.Found = "kernel.apparmor_restrict_unprivileged_userns = 1: it restricts unprivileged users only; root is not affected"
	default:
		it.Status = CheckFail
		it.Found = "kernel.apparmor_restrict_unprivileged_userns = 1 (Ubuntu 23.10 and later): an unprivileged user's new user namespace gets no capabilities, so a sandbox cannot be built"
		it.Fix = "run as root, or sysctl -w kernel.apparmor_restrict_unprivileged_userns=0, or give lockbox-helper an AppArmor profile with `userns,` (docs/troubleshooting.md)"
	}
	return it
}

// landlockABIWanted is the Landlock ABI the sandbox asks for (the agent's
// confine.rs); older ABIs are used best-effort.
const landlockABIWanted = 5

// landlockABI asks the kernel for its Landlock ABI version:
// landlock_create_ruleset(NULL, 0, LANDLOCK_CREATE_RULESET_VERSION).
func landlockABI() (int, error) {
	const sysLandlockCreateRuleset = 444 // the same on every architecture
	const createRulesetVersion = 1
	v, _, e := syscall.Syscall(sysLandlockCreateRuleset, 0, 0, createRulesetVersion)
	if e != 0 {
		return 0, e
	}
	return int(v), nil
}

func checkLandlock(context.Context) CheckItem {
	it := CheckItem{Name: "landlock"}
	abi, err := landlockABI()
	switch {
	case errors.Is(err, syscall.ENOSYS):
		it.Status, it.Found = CheckWarn, "the kernel has no Landlock (it came in Linux 5.13): sandboxes run without it (listed in NotEnforced)"
		it.Fix = "a kernel of 6.7 or later gives the full Landlock ABI the sandbox uses"
	case errors.Is(err, syscall.EOPNOTSUPP):
		it.Status, it.Found = CheckWarn, "Landlock is built into the kernel but not enabled: sandboxes run without it (listed in NotEnforced)"
		it.Fix = "add landlock to the lsm= kernel boot parameter (e.g. lsm=landlock,lockdown,yama,apparmor,bpf)"
	case err != nil:
		it.Status, it.Found = CheckWarn, "cannot ask the kernel for its Landlock ABI: "+err.Error()
		it.Fix = "if a container runtime's seccomp profile refuses landlock_create_ruleset, allow it"
	case abi < landlockABIWanted:
		it.Status = CheckWarn
		it.Found = fmt.Sprintf("Landlock ABI %d of the %d the sandbox asks for: applied best-effort (%s)", abi, landlockABIWanted, landlockMissing(abi))
		it.Fix = "a kernel of 6.7 or later gives the full ABI"
	default:
		it.Status, it.Found = CheckOK, fmt.Sprintf("Landlock ABI %d", abi)
	}
	return it
}

func landlockMissing(abi int) string {
	var missing []string
	if abi < 2 {
		missing = append(missing, "no control of renames and links across directories (ABI 2)")
	}
	if abi < 3 {
		missing = append(missing, "no control of truncate (ABI 3)")
	}
	if abi < 5 {
		missing = append(missing, "no control of device ioctls (ABI 5)")
	}
	return strings.Join(missing, "; ")
}

// cgroupMount is one cgroup or cgroup2 line of /proc/self/mountinfo.
type cgroupMount struct {
	fstype string
	opts   []string
	point  string
	ro     bool
}

func cgroupMounts() []cgroupMount {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []cgroupMount
	sc := bufio.NewScanner(io.LimitReader(f, 16<<20))
	sc.Buffer(make([]byte, 64<<10), 64<<10)
	for sc.Scan() {
		left, right, ok := strings.Cut(sc.Text(), " - ")
		if !ok {
			continue
		}
		r, l := strings.Fields(right), strings.Fields(left)
		if len(r) < 3 || len(l) < 6 || (r[0] != "cgroup" && r[0] != "cgroup2") {
			continue
		}
		out = append(out, cgroupMount{fstype: r[0], opts: strings.Split(r[2], ","), point: l[4],
			ro: strings.HasPrefix(l[5], "ro")})
	}
	return out
}

// ownCgroup is this process's path in the hierarchy keyed key in
// /proc/self/cgroup ("" for v2, else the comma-joined controllers).
func ownCgroup(key string) (string, bool) {
	text, err := readSmall("/proc/self/cgroup")
	if err != nil {
		return "", false
	}
	for _, l := range strings.Split(text, "\n") {
		parts := strings.SplitN(l, ":", 3)
		if len(parts) == 3 && parts[1] == key {
			return parts[2], true
		}
	}
	return "", false
}

var cgroupControllersWanted = []string{"memory", "pids", "cpu"}

// checkCgroup follows the helper's choice (agent/src/cgroup.rs): v2 when
// this process's cgroup has the controllers and may get children with
// them, else v1's memory, cpu and pids hierarchies. The helper runs in the
// cgroup of the process that starts it, so this process's view is its.
func checkCgroup(context.Context) CheckItem {
	it := CheckItem{Name: "cgroup"}
	mounts := cgroupMounts()
	v2why := "no cgroup2 mount"
	for _, m := range mounts {
		if m.fstype != "cgroup2" {
			continue
		}
		ok, why := cgroupV2Usable(m)
		if ok {
			it.Status, it.Found = CheckOK, why
			return it
		}
		v2why = why
		break
	}
	var have, missing []string
	for _, c := range cgroupControllersWanted {
		if dir, ok := cgroupV1Dir(mounts, c); ok {
			have = append(have, c+" at "+dir)
		} else {
			missing = append(missing, c)
		}
	}
	if len(missing) == 0 {
		it.Status = CheckOK
		it.Found = "cgroup v1 (" + v2why + "): " + strings.Join(have, ", ")
		return it
	}
	it.Status = CheckWarn
	it.Found = fmt.Sprintf("cgroup v2: %s; cgroup v1: no usable %s: memory, cpu and pids limits will not be enforced (listed in NotEnforced)",
		v2why, strings.Join(missing, ", "))
	if os.Geteuid() == 0 {
		it.Fix = "run from the root cgroup or from a cgroup v2 leaf made for it whose parent delegates memory, pids and cpu (e.g. systemd-run --scope -p Delegate=yes ... inside a cgroup of its own)"
	} else {
		it.Fix = "ask systemd to delegate the controllers to your user: a drop-in for user@.service with Delegate=memory pids cpu, then run from a scope of your own (systemd-run --user --scope -p Delegate=yes ...)"
	}
	return it
}

func cgroupV2Usable(m cgroupMount) (bool, string) {
	own, ok := ownCgroup("")
	if !ok {
		return false, "this process is in no cgroup v2 group"
	}
	base := filepath.Join(m.point, own)
	ctrls, err := readSmall(filepath.Join(base, "cgroup.controllers"))
	if err != nil {
		return false, err.Error()
	}
	var missing []string
	for _, c := range cgroupControllersWanted {
		if !containsField(ctrls, c) {
			missing = append(missing, c)
		}
	}
	if len(missing) > 0 {
		return false, fmt.Sprintf("%s lacks the %s controller(s) (it has %q)", base, strings.Join(missing, ", "), ctrls)
	}
	if m.ro {
		return false, m.point + " is mounted read-only"
	}
	if err := syscall.Access(base, 2 /* W_OK */); err != nil {
		return false, fmt.Sprintf("%s is not writable by uid %d (not delegated): %v", base, os.Geteuid(), err)
	}
	// v2's no-internal-process rule: a cgroup other than the root that
	// holds processes cannot enable controllers for children.
	if own != "/" {
		procs, _ := readSmall(filepath.Join(base, "cgroup.procs"))
		sub, _ := readSmall(filepath.Join(base, "cgroup.subtree_control"))
		enabled := true
		for _, c := range cgroupControllersWanted {
			enabled = enabled && containsField(sub, c)
		}
		if procs != "" && !enabled {
			return false, fmt.Sprintf("%s holds processes, so it cannot hand memory, pids and cpu to a child cgroup (cgroup v2's no-internal-process rule)", base)
		}
	}
	return true, fmt.Sprintf("cgroup v2 at %s with memory, pids and cpu; writable by uid %d", base, os.Geteuid())
}

func cgroupV1Dir(mounts []cgroupMount, ctrl string) (string, bool) {
	for _, m := range mounts {
		if m.fstype != "cgroup" || !containsField(strings.Join(m.opts, " "), ctrl) || m.ro {
			continue
		}
		var key []string
		for _, o := range m.opts {
			switch o {
			case "cpu", "cpuacct", "memory", "pids", "cpuset", "blkio", "devices":
				key = append(key, o)
			default:
				if strings.HasPrefix(o, "name=") {
					key = append(key, o)
				}
			}
		}
		own, ok := ownCgroup(strings.Join(key, ","))
		if !ok {
			return "", false
		}
		dir := filepath.Join(m.point, own)
		if syscall.Access(dir, 2 /* W_OK */) != nil {
			return "", false
		}
		return dir, true
	}
	return "", false
}

func containsField(s, f string) bool {
	for _, x := range strings.Fields(s) {
		if x == f {
			return true
		}
	}
	return false
}

func checkSeccomp(context.Context) CheckItem {
	it := CheckItem{Name: "seccomp"}
	const prGetSeccomp = 21
	if _, _, e := syscall.RawSyscall(syscall.SYS_PRCTL, prGetSeccomp, 0, 0); e == syscall.EINVAL {
		it.Status, it.Found = CheckFail, "the kernel has no seccomp (CONFIG_SECCOMP is off): the sandbox's syscall filter cannot be installed"
		it.Fix = "use a kernel built with CONFIG_SECCOMP and CONFIG_SECCOMP_FILTER"
		return it
	}
	actions, err := readSmall("/proc/sys/kernel/seccomp/actions_avail")
	if err != nil {
		it.Status, it.Found = CheckWarn, "seccomp is there but its actions cannot be read: "+err.Error()
		return it
	}
	for _, a := range []string{"errno", "kill_process", "allow"} {
		if !containsField(actions, a) {
			it.Status, it.Found = CheckFail, fmt.Sprintf("seccomp lacks the %s action (it has %q)", a, actions)
			it.Fix = "use a newer kernel (4.14 or later)"
			return it
		}
	}
	it.Status, it.Found = CheckOK, "seccomp filters ("+actions+")"
	if status, err := readSmall("/proc/self/status"); err == nil {
		for _, l := range strings.Split(status, "\n") {
			if v, ok := strings.CutPrefix(l, "Seccomp:"); ok && strings.TrimSpace(v) == "2" {
				it.Found += "; this process already runs under a seccomp filter (a container?): the sandbox's filter stacks on it, and what that one refuses fails inside too"
			}
		}
	}
	return it
}

func checkPasta(ctx context.Context) CheckItem {
	it := CheckItem{Name: "pasta"}
	name := os.Getenv("LOCKBOX_PASTA")
	if name == "" {
		name = "pasta"
	}
	path, err := exec.LookPath(name)
	if err != nil {
		it.Status, it.Found = CheckWarn, name+" (from passt) is not installed: NetworkOutbound and published ports are unavailable; NetworkNone works"
		it.Fix = "apt-get install passt (or dnf install passt)"
		return it
	}
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, path, "--version")
	out := &boundedBuffer{max: 4096}
	cmd.Stdout = out
	cmd.Stderr = cmd.Stdout
	if err := cmd.Run(); err != nil {
		it.Status, it.Found = CheckWarn, fmt.Sprintf("%s --version failed: %v", path, err)
		it.Fix = "reinstall passt"
		return it
	}
	first, _, _ := strings.Cut(strings.TrimSpace(out.String()), "\n")
	it.Status, it.Found = CheckOK, path+": "+first
	return it
}

// checkKVM: whether /dev/kvm opens and answers; the microvm item says
// whether a guest boots on it.
func checkKVM(context.Context) CheckItem {
	it := CheckItem{Name: "kvm"}
	const use = "the microVM backend uses it when it boots a guest (see the microvm item); the native backend does not need it"
	state, why := kvmOpenState()
	switch state {
	case "absent":
		it.Status, it.Found = CheckWarn, why+": "+use
		it.Fix = "enable virtualization (VT-x/AMD-V, or nested virtualization on a VM) and load kvm_intel or kvm_amd"
	case "unusable":
		it.Status, it.Found = CheckWarn, why+": "+use
		if strings.Contains(why, "cannot be opened") {
			it.Fix = "add the user to the kvm group (usermod -aG kvm USER)"
		}
	default:
		it.Status, it.Found = CheckOK, why+": "+use
	}
	return it
}
