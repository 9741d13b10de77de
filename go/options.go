package lockbox

import (
	"encoding/json"
	"fmt"
	"strings"
	"time"
)

// Network selects a sandbox's network access.
type Network string

const (
	// NetworkNone: a private network namespace with only loopback. The
	// host's 127.0.0.1 services are unreachable. The default.
	NetworkNone Network = "none"
	// NetworkOutbound: outbound connections through a user-mode network
	// stack (pasta); nothing can connect in except published ports.
	NetworkOutbound Network = "outbound"
)

// Option configures CreateSandbox.
type Option func(*sandboxConfig)

// sandboxConfig is the JSON the engine's sandbox.create takes.
type sandboxConfig struct {
	Name  string  `json:"name,omitempty"`
	Image *string `json:"image,omitempty"` // nil: the default image; "" is an error

	Rootfs       string            `json:"rootfs,omitempty"`
	CPUs         *float64          `json:"cpus,omitempty"`
	MemoryMiB    *int64            `json:"memory_mib,omitempty"`
	Pids         *int64            `json:"pids,omitempty"`
	DiskMiB      *int64            `json:"disk_mib,omitempty"`
	Env          []envEntry        `json:"env,omitempty"`
	Workdir      string            `json:"workdir,omitempty"`
	Hostname     string            `json:"hostname,omitempty"`
	User         string            `json:"user,omitempty"`
	Volumes      []volumeMount     `json:"volumes,omitempty"`
	NamedVolumes []namedMount      `json:"named_volumes,omitempty"`
	Tmpfs        []tmpfsMount      `json:"tmpfs,omitempty"`
	Network      Network           `json:"network,omitempty"`
	Ports        []portMap         `json:"ports,omitempty"`
	Detached     bool              `json:"detached,omitempty"`
	Replace      bool              `json:"replace,omitempty"`
	Labels       map[string]string `json:"labels,omitempty"`
}

// envEntry is one WithEnv variable. A key that would read back as a
// different variable ('=' in it: WithEnv("A=B", "c") is A="B=c") or that
// execve cannot carry (empty, NUL) fails the create with
// ErrInvalidArgument when the request is encoded.
type envEntry struct{ key, value string }

func (e envEntry) MarshalJSON() ([]byte, error) {
	if e.key == "" || strings.ContainsAny(e.key, "=\x00") {
		return nil, fmt.Errorf("WithEnv key %q: must be non-empty, without '=' or NUL", e.key)
	}
	return json.Marshal(e.key + "=" + e.value)
}

type volumeMount struct {
	HostPath  string `json:"host_path"`
	GuestPath string `json:"guest_path"`
	ReadOnly  bool   `json:"read_only"`
}

type namedMount struct {
	Name      string `json:"name"`
	GuestPath string `json:"guest_path"`
	ReadOnly  bool   `json:"read_only"`
}

type tmpfsMount struct {
	GuestPath string `json:"guest_path"`
	SizeMiB   *int64 `json:"size_mib,omitempty"`
}

type portMap struct {
	Host  int `json:"host"`
	Guest int `json:"guest"`
}

// WithName names the sandbox (unique per LOCKBOX_HOME; letters, digits,
// '_', '.', '-'). Without it a name is generated.
func WithName(name string) Option { return func(c *sandboxConfig) { c.Name = name } }

// WithImage uses an image as the read-only root. Without WithImage it is
// "base"; WithImage("") is ErrInvalidArgument.
// image is one of:
//   - a named image ("base", "python"): the release asset, else an image
//     imported or pulled under that name;
//   - an OCI reference ("127.0.0.1:5000/repo:tag", "docker.io/library/alpine:3",
//     "name@sha256:..."): an image already in the store under it, imported
//     (WithImageReference/WithImageName) or pulled with Images().Pull.
//     CreateSandbox does not pull: a reference not in the store is ErrNotFound;
//   - a content digest "sha256:<hex>" of a stored image.
//
// The image's config is the sandbox's default: its Env is the base
// environment (WithEnv overrides per key), its WorkingDir the workdir
// (unless WithWorkdir), its User the user (unless WithUser). Its
// Entrypoint and Cmd are in SandboxInfo.ImageUsed. Anything else is
// ErrInvalidArgument.
func WithImage(name string) Option { return func(c *sandboxConfig) { c.Image = &name } }

// WithRootfs uses a host directory as the read-only root instead of an
// image. Writes go to the sandbox's own layer; dir is never modified.
func WithRootfs(dir string) Option { return func(c *sandboxConfig) { c.Rootfs = dir } }

// WithCPUs limits CPU time to n cores (fractions allowed: 0.5).
func WithCPUs(n float64) Option { return func(c *sandboxConfig) { c.CPUs = &n } }

// WithMemory limits memory to mib MiB.
func WithMemory(mib int64) Option { return func(c *sandboxConfig) { c.MemoryMiB = &mib } }

// WithPids limits the number of processes and threads.
func WithPids(n int64) Option { return func(c *sandboxConfig) { c.Pids = &n } }

// WithDisk limits the size of the sandbox's writable layer to mib MiB
// (default 1024; Info().DiskMiB reports it). The layer is a tmpfs whose
// pages count against the sandbox's memory limit. WithDisk(0) asks for no
// budget: writes then go to the host disk under LOCKBOX_HOME, unbounded.
func WithDisk(mib int64) Option { return func(c *sandboxConfig) { c.DiskMiB = &mib } }

// WithEnv sets an environment variable for every process in the sandbox
// (a later WithEnv of the same key wins). The key must be non-empty and
// hold no '=' or NUL, or CreateSandbox fails with ErrInvalidArgument. At
// most 4096 variables, keys of at most 256 bytes, KEY=VALUE under 128 KiB
// and 1 MiB in all (docs/configuration.md, "Input limits").
func WithEnv(key, value string) Option {
	return func(c *sandboxConfig) { c.Env = append(c.Env, envEntry{key, value}) }
}

// WithWorkdir sets the default working directory of execs.
func WithWorkdir(dir string) Option { return func(c *sandboxConfig) { c.Workdir = dir } }

// WithHostname sets the sandbox's hostname (default: its name).
func WithHostname(h string) Option { return func(c *sandboxConfig) { c.Hostname = h } }

// WithUser runs execs as user: "uid", "uid:gid", or a name from the
// image's /etc/passwd. The default is root inside the sandbox (which is
// not root on the host).
func WithUser(user string) Option { return func(c *sandboxConfig) { c.User = user } }

// WithVolume binds a host file or directory at guestPath.
func WithVolume(hostPath, guestPath string, readOnly bool) Option {
	return func(c *sandboxConfig) {
		c.Volumes = append(c.Volumes, volumeMount{HostPath: hostPath, GuestPath: guestPath, ReadOnly: readOnly})
	}
}

// WithNamedVolume mounts a named volume (created on first use, see
// CreateVolume) at guestPath.
func WithNamedVolume(name, guestPath string, readOnly bool) Option {
	return func(c *sandboxConfig) {
		c.NamedVolumes = append(c.NamedVolumes, namedMount{Name: name, GuestPath: guestPath, ReadOnly: readOnly})
	}
}

// WithTmpfs mounts a fresh tmpfs of at most sizeMiB (0: the default,
// 64 MiB) at guestPath.
func WithTmpfs(guestPath string, sizeMiB int64) Option {
	return func(c *sandboxConfig) {
		m := tmpfsMount{GuestPath: guestPath}
		if sizeMiB != 0 {
			m.SizeMiB = &sizeMiB
		}
		c.Tmpfs = append(c.Tmpfs, m)
	}
}

// WithNetwork selects the network mode (NetworkNone by default).
func WithNetwork(n Network) Option { return func(c *sandboxConfig) { c.Network = n } }

// WithPort publishes guestPort on the host's 127.0.0.1:hostPort.
func WithPort(hostPort, guestPort int) Option {
	return func(c *sandboxConfig) { c.Ports = append(c.Ports, portMap{Host: hostPort, Guest: guestPort}) }
}

// WithDetached lets the sandbox outlive this process; find it again with
// GetSandbox. Without it, the sandbox dies with the process (even on
// SIGKILL) and Close removes it.
func WithDetached() Option { return func(c *sandboxConfig) { c.Detached = true } }

// WithReplace removes an existing sandbox of the same name first (stopping
// it, whichever process owns it). The check, the removal and the create
// are one step for the name across every process using the same
// LOCKBOX_HOME: when two callers (processes or goroutines) create one name
// at the same moment, exactly one gets the sandbox and every other fails
// with ErrAlreadyExists, with or without WithReplace; none is left without
// a sandbox by the other's removal. A create that starts after another one
// finished replaces that sandbox like any other.
func WithReplace() Option { return func(c *sandboxConfig) { c.Replace = true } }

// WithLabels attaches key/value labels, returned by Info and ListSandboxes:
// at most 64, keys of 1 to 128 bytes, values of at most 4 KiB (else
// ErrInvalidArgument).
func WithLabels(labels map[string]string) Option {
	return func(c *sandboxConfig) {
		if c.Labels == nil {
			c.Labels = map[string]string{}
		}
		for k, v := range labels {
			c.Labels[k] = v
		}
	}
}

// ExecOption configures one process started in a sandbox.
type ExecOption func(*execConfig)

type execConfig struct {
	Argv      []string `json:"argv"`
	Env       []string `json:"env,omitempty"`
	Cwd       string   `json:"cwd,omitempty"`
	User      string   `json:"user,omitempty"`
	TimeoutMs uint64   `json:"timeout_ms,omitempty"`
	Stdin     bool     `json:"stdin"`
	TTY       bool     `json:"tty,omitempty"`
	Rows      uint16   `json:"rows,omitempty"`
	Cols      uint16   `json:"cols,omitempty"`

	stdin       any // io.Reader, set by WithStdin
	timeout     time.Duration
	outputLimit *int64 // WithOutputLimit (exec.go)
	badEnvKey   *string
}

// WithExecEnv adds an environment variable for this process (it overrides
// the sandbox's). As with WithEnv, a key that is empty or holds '=' or NUL
// makes the exec fail with ErrInvalidArgument.
func WithExecEnv(key, value string) ExecOption {
	return func(c *execConfig) {
		if key == "" || strings.ContainsAny(key, "=\x00") {
			c.badEnvKey = &key
			return
		}
		c.Env = append(c.Env, key+"="+value)
	}
}

// WithExecDir sets the working directory.
func WithExecDir(dir string) ExecOption { return func(c *execConfig) { c.Cwd = dir } }

// WithExecUser runs the process as user ("uid", "uid:gid" or a name).
func WithExecUser(user string) ExecOption { return func(c *execConfig) { c.User = user } }

// WithExecTimeout kills the process group after d; the result then has
// TimedOut set.
func WithExecTimeout(d time.Duration) ExecOption {
	return func(c *execConfig) { c.timeout = d }
}

// WithTTY gives the process a terminal of rows x cols (stderr merges into
// stdout).
func WithTTY(rows, cols uint16) ExecOption {
	return func(c *execConfig) { c.TTY, c.Rows, c.Cols = true, rows, cols }
}
