package lockbox

import (
	"io"
	"strings"
	"time"

	"lockbox.dev/lockbox/internal/wire"
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

// sandboxConfig is sandbox.create's params as the options build them.
type sandboxConfig struct {
	wire.SandboxConfig
	// badEnvKey is the first WithEnv key that would read back as another
	// variable ('=' in it: WithEnv("A=B", "c") is A="B=c") or that execve
	// cannot carry (empty, NUL): CreateSandbox fails with
	// ErrInvalidArgument before anything is sent.
	badEnvKey *string
	// invalid is the first error of an option that checks its argument
	// (WithNetworkPolicy, WithSecret): CreateSandbox returns it before
	// anything is sent.
	invalid error
}

func (c *sandboxConfig) refuse(err error) {
	if c.invalid == nil {
		c.invalid = err
	}
}

// validEnvKey reports whether key reads back as itself in KEY=VALUE.
func validEnvKey(key string) bool { return key != "" && !strings.ContainsAny(key, "=\x00") }

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
	return func(c *sandboxConfig) {
		if !validEnvKey(key) {
			if c.badEnvKey == nil {
				c.badEnvKey = &key
			}
			return
		}
		c.Env = append(c.Env, key+"="+value)
	}
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
		c.Volumes = append(c.Volumes, wire.VolumeMount{HostPath: hostPath, GuestPath: guestPath, ReadOnly: readOnly})
	}
}

// WithNamedVolume mounts a named volume (created on first use, see
// CreateVolume) at guestPath.
func WithNamedVolume(name, guestPath string, readOnly bool) Option {
	return func(c *sandboxConfig) {
		c.NamedVolumes = append(c.NamedVolumes, wire.NamedMount{Name: name, GuestPath: guestPath, ReadOnly: readOnly})
	}
}

// WithTmpfs mounts a fresh tmpfs of at most sizeMiB (0: the default,
// 64 MiB) at guestPath.
func WithTmpfs(guestPath string, sizeMiB int64) Option {
	return func(c *sandboxConfig) {
		m := wire.TmpfsMount{GuestPath: guestPath}
		if sizeMiB != 0 {
			m.SizeMiB = &sizeMiB
		}
		c.Tmpfs = append(c.Tmpfs, m)
	}
}

// WithNetwork selects the network mode (NetworkNone by default).
func WithNetwork(n Network) Option { return func(c *sandboxConfig) { c.Network = string(n) } }

// WithPort publishes guestPort on the host's 127.0.0.1:hostPort (only
// loopback), with NetworkOutbound or WithNetworkPolicy.
func WithPort(hostPort, guestPort int) Option {
	return func(c *sandboxConfig) { c.Ports = append(c.Ports, wire.Port{Host: hostPort, Guest: guestPort}) }
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

// execConfig is what ExecOptions set: Cmd's fields, and what only the
// options reach (execRun, the output limit).
type execConfig struct {
	env         []string
	dir         string
	user        string
	stdin       io.Reader // WithStdin (exec.go)
	outputLimit *int64    // WithOutputLimit (exec.go)
	run         execRun
}

// WithExecEnv adds an environment variable for this process (it overrides
// the sandbox's). As with WithEnv, a key that is empty or holds '=' or NUL
// makes the exec fail with ErrInvalidArgument.
func WithExecEnv(key, value string) ExecOption {
	return func(c *execConfig) {
		if !validEnvKey(key) {
			c.run.badEnvKey = &key
			return
		}
		c.env = append(c.env, key+"="+value)
	}
}

// WithExecDir sets the working directory.
func WithExecDir(dir string) ExecOption { return func(c *execConfig) { c.dir = dir } }

// WithExecUser runs the process as user ("uid", "uid:gid" or a name).
func WithExecUser(user string) ExecOption { return func(c *execConfig) { c.user = user } }

// WithExecTimeout kills the process group after d; the result then has
// TimedOut set.
func WithExecTimeout(d time.Duration) ExecOption {
	return func(c *execConfig) { c.run.timeout = d }
}

// WithTTY gives the process a terminal of rows x cols (stderr merges into
// stdout).
func WithTTY(rows, cols uint16) ExecOption {
	return func(c *execConfig) { c.run.tty, c.run.rows, c.run.cols = true, rows, cols }
}
