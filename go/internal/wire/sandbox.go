package wire

// sandbox.* methods. Every one that acts on an open sandbox names its
// handle "sandbox", as exec.start and fs.* do.
var (
	SandboxCreate  = Method[SandboxConfig, SandboxOpened]{"sandbox.create"}
	SandboxGet     = Method[NameParams, SandboxOpened]{"sandbox.get"}
	SandboxList    = Method[Empty, SandboxListResult]{"sandbox.list"}
	SandboxRemove  = Method[SandboxRemoveParams, Empty]{"sandbox.remove"}
	SandboxInfo    = Method[SandboxParams, SandboxState]{"sandbox.info"}
	SandboxMetrics = Method[SandboxParams, Metrics]{"sandbox.metrics"}
	SandboxStop    = Method[SandboxStopParams, Empty]{"sandbox.stop"}
	SandboxKill    = Method[SandboxParams, Empty]{"sandbox.kill"}
	SandboxClose   = Method[SandboxParams, Empty]{"sandbox.close"}
)

var sandboxMethods = []spec{SandboxCreate, SandboxGet, SandboxList, SandboxRemove,
	SandboxInfo, SandboxMetrics, SandboxStop, SandboxKill, SandboxClose}

// NameParams names a sandbox, image or volume.
type NameParams struct {
	Name string `json:"name"`
}

// SandboxParams names an open sandbox by its handle.
type SandboxParams struct {
	Sandbox uint64 `json:"sandbox"`
}

// SandboxRemoveParams names the sandbox by name or by handle (one of them).
type SandboxRemoveParams struct {
	Name    string `json:"name,omitempty"`
	Sandbox uint64 `json:"sandbox,omitempty"`
}

type SandboxStopParams struct {
	Sandbox uint64  `json:"sandbox"`
	GraceMs *uint64 `json:"grace_ms,omitempty"`
}

// SandboxConfig is sandbox.create's params, and the config a sandbox's
// info reports back.
type SandboxConfig struct {
	Name         string            `json:"name,omitempty"`
	Image        *string           `json:"image,omitempty"` // nil: the default image; "" is an error
	Rootfs       string            `json:"rootfs,omitempty"`
	CPUs         *float64          `json:"cpus,omitempty"`
	MemoryMiB    *int64            `json:"memory_mib,omitempty"`
	Pids         *int64            `json:"pids,omitempty"`
	DiskMiB      *int64            `json:"disk_mib,omitempty"`
	Env          []string          `json:"env,omitempty"`
	Workdir      string            `json:"workdir,omitempty"`
	Hostname     string            `json:"hostname,omitempty"`
	User         string            `json:"user,omitempty"`
	Volumes      []VolumeMount     `json:"volumes,omitempty"`
	NamedVolumes []NamedMount      `json:"named_volumes,omitempty"`
	Tmpfs        []TmpfsMount      `json:"tmpfs,omitempty"`
	Network      string            `json:"network,omitempty"`
	Ports        []Port            `json:"ports,omitempty"`
	Detached     bool              `json:"detached,omitempty"`
	Replace      bool              `json:"replace,omitempty"`
	Labels       map[string]string `json:"labels,omitempty"`
	// Isolation picks the backend: "native" (default when empty) or "microvm".
	Isolation string `json:"isolation,omitempty"`
	// NetworkPolicy routes the sandbox's network through the policy
	// forwarder (network then absent or "none").
	NetworkPolicy *NetworkPolicy `json:"network_policy,omitempty"`
	Secrets       []Secret       `json:"secrets,omitempty"`
}

type VolumeMount struct {
	HostPath  string `json:"host_path"`
	GuestPath string `json:"guest_path"`
	ReadOnly  bool   `json:"read_only"`
}

type NamedMount struct {
	Name      string `json:"name"`
	GuestPath string `json:"guest_path"`
	ReadOnly  bool   `json:"read_only"`
}

type TmpfsMount struct {
	GuestPath string `json:"guest_path"`
	SizeMiB   *int64 `json:"size_mib,omitempty"`
}

type Port struct {
	Host  int `json:"host"`
	Guest int `json:"guest"`
}

// SandboxOpened is what sandbox.create and sandbox.get return: a new
// handle on the sandbox and what it is.
type SandboxOpened struct {
	Sandbox uint64       `json:"sandbox"`
	Name    string       `json:"name"`
	ID      string       `json:"id"`
	Info    SandboxState `json:"info"`
}

type SandboxListResult struct {
	Sandboxes []SandboxState `json:"sandboxes"`
}

// SandboxState is a sandbox's info (docs/abi-methods.md, "Info").
type SandboxState struct {
	Name        string            `json:"name"`
	ID          string            `json:"id"`
	Status      string            `json:"status"`
	Image       *string           `json:"image,omitempty"`
	Rootfs      *string           `json:"rootfs,omitempty"`
	Detached    bool              `json:"detached"`
	Labels      map[string]string `json:"labels"`
	CreatedUnix int64             `json:"created_unix"`
	HelperPID   int               `json:"helper_pid"`
	Enforced    []string          `json:"enforced"`
	NotEnforced []NotEnforced     `json:"not_enforced"`
	Config      SandboxConfig     `json:"config"`
	Dir         string            `json:"dir"`
	ImageUsed   *ImageUsed        `json:"image_used,omitempty"`
	DiskMiB     *int64            `json:"disk_mib,omitempty"`
	Backend     *Backend          `json:"backend,omitempty"`
	Error       string            `json:"error,omitempty"`
}

// Backend is what runs the sandbox: kind ("native" or "microvm") and
// what stands between the workload and the host kernel.
type Backend struct {
	Kind     string `json:"kind"`
	Boundary string `json:"boundary"`
}

type NotEnforced struct {
	Feature string `json:"feature"`
	Reason  string `json:"reason"`
}

type ImageUsed struct {
	Digest     string   `json:"digest"`
	Entrypoint []string `json:"entrypoint"`
	Cmd        []string `json:"cmd"`
}

// Metrics is a sandbox's resource use from its cgroup.
type Metrics struct {
	CPUUsec         uint64           `json:"cpu_usec"`
	MemoryBytes     uint64           `json:"memory_bytes"`
	MemoryPeakBytes uint64           `json:"memory_peak_bytes"`
	Pids            uint64           `json:"pids"`
	Network         *NetworkCounters `json:"network,omitempty"`
}
