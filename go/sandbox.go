package lockbox

import (
	"context"
	"errors"
	"fmt"
	"time"

	"lockbox.dev/lockbox/internal/wire"
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
	// Status is StatusRunning, StatusPaused (frozen by Pause, or for the
	// moment a Snapshot or Fork copies its files), StatusStopped, or
	// StatusDamaged: the sandbox's state files cannot be read (Error says
	// why). A damaged sandbox's files are kept, never cleaned up behind
	// your back; RemoveSandbox deletes them.
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
	// Backend is which backend runs the sandbox (WithIsolation) and what
	// stands between it and the host.
	Backend BackendInfo `json:"backend"`

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

// SandboxInfo.Status values.
const (
	StatusRunning = "running"
	StatusPaused  = "paused"
	StatusStopped = "stopped"
	StatusDamaged = "damaged"
)

// Running reports whether the sandbox's processes exist: running, or
// paused (frozen until Resume).
func (i *SandboxInfo) Running() bool {
	return i.Status == StatusRunning || i.Status == StatusPaused
}

func (i *SandboxInfo) fill() {
	i.Created = time.Unix(i.CreatedUnix, 0)
}

// sandboxInfo is the public form of a sandbox's info.
func sandboxInfo(w *wire.SandboxState) SandboxInfo {
	i := SandboxInfo{Name: w.Name, ID: w.ID, Status: w.Status, Error: w.Error,
		Detached: w.Detached, Labels: w.Labels, HelperPID: w.HelperPID,
		Enforced: w.Enforced, CreatedUnix: w.CreatedUnix}
	if w.Image != nil {
		i.Image = *w.Image
	}
	if w.Rootfs != nil {
		i.Rootfs = *w.Rootfs
	}
	if w.NotEnforced != nil {
		i.NotEnforced = make([]NotEnforced, len(w.NotEnforced))
		for k, n := range w.NotEnforced {
			i.NotEnforced[k] = NotEnforced{Feature: n.Feature, Reason: n.Reason}
		}
	}
	if u := w.ImageUsed; u != nil {
		i.ImageUsed = &SandboxImage{Digest: u.Digest, Entrypoint: u.Entrypoint, Cmd: u.Cmd}
	}
	if w.DiskMiB != nil {
		i.DiskMiB = *w.DiskMiB
	}
	if b := w.Backend; b != nil {
		i.Backend = BackendInfo{Kind: b.Kind, Boundary: b.Boundary}
	}
	i.fill()
	return i
}

// opened wraps a handle sandbox.create or sandbox.get returned.
func opened(r *wire.SandboxOpened) *Sandbox {
	return &Sandbox{ref: newHandleRef(r.Sandbox), name: r.Name, id: r.ID}
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
	if k := cfg.badEnvKey; k != nil {
		return nil, &Error{Op: "sandbox.create", Code: CodeInvalidArgument,
			Message: fmt.Sprintf("WithEnv key %q: must be non-empty, without '=' or NUL", *k)}
	}
	if cfg.invalid != nil {
		return nil, cfg.invalid
	}
	var r wire.SandboxOpened
	if err := callMethod(ctx, "sandbox.create", wire.SandboxCreate, &cfg.SandboxConfig, &r); err != nil {
		return nil, err
	}
	return opened(&r), nil
}

// GetSandbox opens an existing sandbox by name, for example a detached one
// made by another process.
func GetSandbox(ctx context.Context, name string) (*Sandbox, error) {
	var r wire.SandboxOpened
	if err := callMethod(ctx, "sandbox.get", wire.SandboxGet, &wire.NameParams{Name: name}, &r); err != nil {
		return nil, err
	}
	return opened(&r), nil
}

// ListSandboxes lists every sandbox under LOCKBOX_HOME, running or not.
func ListSandboxes(ctx context.Context) ([]SandboxInfo, error) {
	var r wire.SandboxListResult
	if err := callMethod(ctx, "sandbox.list", wire.SandboxList, nil, &r); err != nil {
		return nil, err
	}
	var out []SandboxInfo
	if r.Sandboxes != nil {
		out = make([]SandboxInfo, len(r.Sandboxes))
	}
	for i := range r.Sandboxes {
		out[i] = sandboxInfo(&r.Sandboxes[i])
	}
	return out, nil
}

// RemoveSandbox stops (if needed) and deletes a sandbox by name.
func RemoveSandbox(ctx context.Context, name string) error {
	return callMethod(ctx, "sandbox.remove", wire.SandboxRemove, &wire.SandboxRemoveParams{Name: name}, nil)
}

// Name is the sandbox's unique name.
func (s *Sandbox) Name() string { return s.name }

// ID is the sandbox's unique id.
func (s *Sandbox) ID() string { return s.id }

// onSandbox runs m on this sandbox's handle: params gets the handle
// before it is sent.
func onSandbox[P, R any](ctx context.Context, s *Sandbox, m wire.Method[P, R], params *P, handle *uint64, r *R) error {
	return s.ref.use(m.Name, func(h uint64) error {
		*handle = h
		return callMethod(ctx, m.Name, m, params, r)
	})
}

// Info reports the sandbox's state and what isolation is in force.
func (s *Sandbox) Info(ctx context.Context) (*SandboxInfo, error) {
	var p wire.SandboxParams
	var w wire.SandboxState
	if err := onSandbox(ctx, s, wire.SandboxInfo, &p, &p.Sandbox, &w); err != nil {
		return nil, err
	}
	i := sandboxInfo(&w)
	return &i, nil
}

// Stop asks every process to end, and kills what is left after a grace
// period (5s; sooner if ctx has an earlier deadline).
func (s *Sandbox) Stop(ctx context.Context) error {
	var p wire.SandboxStopParams
	if dl, ok := ctx.Deadline(); ok {
		if g := time.Until(dl) / 2; g > 0 && g < 5*time.Second {
			ms := uint64(g.Milliseconds())
			p.GraceMs = &ms
		}
	}
	return onSandbox(ctx, s, wire.SandboxStop, &p, &p.Sandbox, nil)
}

// Kill ends every process in the sandbox at once.
func (s *Sandbox) Kill(ctx context.Context) error {
	var p wire.SandboxParams
	return onSandbox(ctx, s, wire.SandboxKill, &p, &p.Sandbox, nil)
}

// Remove stops the sandbox, deletes its files and releases the handle.
func (s *Sandbox) Remove(ctx context.Context) error {
	var p wire.SandboxRemoveParams
	err := onSandbox(ctx, s, wire.SandboxRemove, &p, &p.Sandbox, nil)
	_ = s.ref.close("sandbox.close")
	return err
}

// Close releases the handle. A sandbox made without WithDetached is
// stopped and removed (Close returns once it is gone); a detached one keeps
// running. Safe to call twice.
func (s *Sandbox) Close() error {
	var p wire.SandboxParams
	err := onSandbox(context.Background(), s, wire.SandboxClose, &p, &p.Sandbox, nil)
	if cerr := s.ref.close("sandbox.close"); err == nil {
		err = cerr
	}
	if errors.Is(err, ErrNotFound) {
		// Already closed: closing twice is fine.
		return nil
	}
	return err
}
