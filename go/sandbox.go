package lockbox

import (
	"context"
	"errors"
	"time"
)

// Sandbox is a handle to an isolated environment. Methods are safe for
// concurrent use. Close releases the handle; for a sandbox made without
// WithDetached that also stops and removes it.
type Sandbox struct {
	ref  *handleRef
	name string
	id   string
}

// NotEnforced names a requested protection or limit that could not be
// applied, and why (for example rootless without cgroup delegation).
type NotEnforced struct {
	Feature string `json:"feature"`
	Reason  string `json:"reason"`
}

// SandboxInfo describes a sandbox.
type SandboxInfo struct {
	Name string `json:"name"`
	ID   string `json:"id"`
	// Status is "running", "stopped", or "damaged": the sandbox's state
	// files cannot be read (Error says why). A damaged sandbox's files are
	// kept, never cleaned up behind your back; RemoveSandbox deletes them.
	Status   string            `json:"status"`
	Error    string            `json:"error,omitempty"`
	Image    string            `json:"image"`
	Rootfs   string            `json:"rootfs"`
	Detached bool              `json:"detached"`
	Labels   map[string]string `json:"labels"`
	Created  time.Time         `json:"-"`
	// HelperPID is the host pid of the sandbox's supervising helper.
	HelperPID int `json:"helper_pid"`
	// Enforced lists what is in force: "userns", "pidns", "seccomp",
	// "memory", "pids", ...
	Enforced []string `json:"enforced"`
	// NotEnforced lists what was asked for (or is normally applied) but
	// could not be, with the reason. Never silently empty.
	NotEnforced []NotEnforced `json:"not_enforced"`
	// ImageUsed is the stored image the sandbox was made from: nil for
	// WithRootfs and for a dev tree's unpacked image directory.
	ImageUsed *SandboxImage `json:"image_used"`
	// DiskMiB is the writable layer's budget in MiB (WithDisk, or 1024
	// by default); 0 when WithDisk(0) asked for none.
	DiskMiB int64 `json:"disk_mib"`

	CreatedUnix int64 `json:"created_unix"`
}

// SandboxImage is what a sandbox took from its image: the content digest
// (usable in WithImage to get the same image again) and the image's
// default command.
type SandboxImage struct {
	Digest     string   `json:"digest"`
	Entrypoint []string `json:"entrypoint"`
	Cmd        []string `json:"cmd"`
}

// DefaultCommand is the image's entrypoint followed by its cmd: what to
// Exec to run the image as its author meant. Empty if the image names none.
func (i *SandboxImage) DefaultCommand() []string {
	if i == nil {
		return nil
	}
	return append(append([]string{}, i.Entrypoint...), i.Cmd...)
}

// Running reports whether the sandbox is running.
func (i *SandboxInfo) Running() bool { return i.Status == "running" }

func (i *SandboxInfo) fill() {
	i.Created = time.Unix(i.CreatedUnix, 0)
}

type sandboxReply struct {
	Handle uint64      `json:"handle"`
	Name   string      `json:"name"`
	ID     string      `json:"id"`
	Info   SandboxInfo `json:"info"`
}

// CreateSandbox creates and starts a sandbox. Bad options (a negative
// limit, an unknown image, a missing volume path, a duplicate name) fail
// with a typed error (ErrInvalidArgument, ErrNotFound, ErrAlreadyExists)
// and change nothing.
func CreateSandbox(ctx context.Context, opts ...Option) (*Sandbox, error) {
	var cfg sandboxConfig
	for _, o := range opts {
		o(&cfg)
	}
	var r sandboxReply
	if err := call(ctx, "sandbox.create", "sandbox.create", &cfg, &r); err != nil {
		return nil, err
	}
	return &Sandbox{ref: newHandleRef(r.Handle), name: r.Name, id: r.ID}, nil
}

// GetSandbox opens an existing sandbox by name, for example a detached one
// made by another process.
func GetSandbox(ctx context.Context, name string) (*Sandbox, error) {
	var r sandboxReply
	if err := call(ctx, "sandbox.get", "sandbox.get", map[string]string{"name": name}, &r); err != nil {
		return nil, err
	}
	return &Sandbox{ref: newHandleRef(r.Handle), name: r.Name, id: r.ID}, nil
}

// ListSandboxes lists every sandbox under LOCKBOX_HOME, running or not.
func ListSandboxes(ctx context.Context) ([]SandboxInfo, error) {
	var r struct {
		Sandboxes []SandboxInfo `json:"sandboxes"`
	}
	if err := call(ctx, "sandbox.list", "sandbox.list", nil, &r); err != nil {
		return nil, err
	}
	for i := range r.Sandboxes {
		r.Sandboxes[i].fill()
	}
	return r.Sandboxes, nil
}

// RemoveSandbox stops (if needed) and deletes a sandbox by name.
func RemoveSandbox(ctx context.Context, name string) error {
	return call(ctx, "sandbox.remove", "sandbox.remove", map[string]string{"name": name}, nil)
}

// Name is the sandbox's unique name.
func (s *Sandbox) Name() string { return s.name }

// ID is the sandbox's unique id.
func (s *Sandbox) ID() string { return s.id }

func (s *Sandbox) handleCall(ctx context.Context, method string, extra map[string]any, result any) error {
	return s.ref.use(method, func(h uint64) error {
		p := map[string]any{"handle": h}
		for k, v := range extra {
			p[k] = v
		}
		return call(ctx, method, method, p, result)
	})
}

// Info reports the sandbox's state and what isolation is in force.
func (s *Sandbox) Info(ctx context.Context) (*SandboxInfo, error) {
	var i SandboxInfo
	if err := s.handleCall(ctx, "sandbox.info", nil, &i); err != nil {
		return nil, err
	}
	i.fill()
	return &i, nil
}

// Stop asks every process to end, and kills what is left after a grace
// period (5s; sooner if ctx has an earlier deadline).
func (s *Sandbox) Stop(ctx context.Context) error {
	extra := map[string]any{}
	if dl, ok := ctx.Deadline(); ok {
		if g := time.Until(dl) / 2; g > 0 && g < 5*time.Second {
			extra["grace_ms"] = g.Milliseconds()
		}
	}
	return s.handleCall(ctx, "sandbox.stop", extra, nil)
}

// Kill ends every process in the sandbox at once.
func (s *Sandbox) Kill(ctx context.Context) error {
	return s.handleCall(ctx, "sandbox.kill", nil, nil)
}

// Remove stops the sandbox, deletes its files and releases the handle.
func (s *Sandbox) Remove(ctx context.Context) error {
	err := s.handleCall(ctx, "sandbox.remove", nil, nil)
	_ = s.ref.close("sandbox.close")
	return err
}

// Close releases the handle. A sandbox made without WithDetached is
// stopped and removed (Close returns once it is gone); a detached one keeps
// running. Safe to call twice.
func (s *Sandbox) Close() error {
	err := s.ref.use("sandbox.close", func(h uint64) error {
		return call(context.Background(), "sandbox.close", "sandbox.close", map[string]uint64{"handle": h}, nil)
	})
	if cerr := s.ref.close("sandbox.close"); err == nil {
		err = cerr
	}
	if errors.Is(err, ErrNotFound) {
		// Already closed: closing twice is fine.
		return nil
	}
	return err
}
