package lockbox

// Isolation selects what stands between a sandbox's processes and the
// host: the host kernel behind namespaces, seccomp and Landlock
// (IsolationNative, the default), or a guest kernel in a confined VMM
// (IsolationMicroVM). Exec, Cmd, ExecStream, FS, limits and Metrics work
// the same on both; what a backend cannot do fails with ErrUnsupported
// and an error that names the backend, never silently differently.
type Isolation string

const (
	// IsolationNative: namespaces, seccomp, Landlock and cgroups on the
	// host kernel. Starts in milliseconds.
	IsolationNative Isolation = "native"
	// IsolationMicroVM: the sandbox is a qemu microvm guest with its own
	// kernel; the Lockbox agent is its init, and qemu itself runs confined
	// (own namespaces, unprivileged uid, no capabilities, seccomp, cgroup).
	// Needs qemu-system-x86 and the VM assets (WithVMAssets at install, or
	// LOCKBOX_VM_ASSETS). KVM is used when Check says it boots a guest;
	// software emulation (TCG, seconds per boot) only when asked for with
	// LOCKBOX_VM_ACCEL=tcg. Not yet supported there (ErrUnsupported):
	// volumes, tmpfs mounts, network, detached sandboxes and reattach,
	// snapshots and forks.
	IsolationMicroVM Isolation = "microvm"
)

// WithIsolation selects the sandbox's backend (IsolationNative by default).
func WithIsolation(i Isolation) Option {
	return func(c *sandboxConfig) {
		if i == IsolationNative {
			c.Isolation = ""
			return
		}
		c.Isolation = string(i)
	}
}

// BackendInfo says which backend runs a sandbox and what it enforces
// between the workload and the host.
type BackendInfo struct {
	// Kind is "native" or "microvm".
	Kind string `json:"kind"`
	// Boundary describes the isolation layers, e.g. "guest kernel in a
	// qemu microvm (...); qemu confined: ...".
	Boundary string `json:"boundary"`
}
