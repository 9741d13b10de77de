package lockbox

import (
	"context"
	"fmt"
	"path/filepath"
	"time"

	"lockbox.dev/lockbox/internal/wire"
)

// Pause stops every process in the sandbox, its init included, with the
// cgroup freezer: the sandbox uses no CPU until Resume. While it is paused,
// calls that need a process inside (Exec, Cmd, FS) fail at once with
// ErrUnavailable ("paused: Resume it first") instead of waiting; output of
// an exec already running stops and continues after Resume. Stop, Kill,
// Remove and Close work on a paused sandbox (they thaw it first).
//
// The freeze is bounded (5s; a task in uninterruptible sleep can delay
// it): past that Pause thaws again and fails with ErrTimeout. Without a
// writable freezer cgroup (rootless without cgroup delegation) it fails
// with ErrUnsupported.
func (s *Sandbox) Pause(ctx context.Context) error {
	var p wire.SandboxParams
	return onSandbox(ctx, s, wire.SandboxPause, &p, &p.Sandbox, nil)
}

// Resume lets a paused sandbox run again. Resuming a running sandbox does
// nothing.
func (s *Sandbox) Resume(ctx context.Context) error {
	var p wire.SandboxParams
	return onSandbox(ctx, s, wire.SandboxResume, &p, &p.Sandbox, nil)
}

// Snapshot captures the sandbox's filesystem (its writable layer over its
// image) as a new image in the store, named name ("" for an unnamed image,
// found by its digest). The sandbox keeps running; it is frozen for the
// copy when it has a freezer, so the image is one consistent state, and
// writes after Snapshot returns never reach the image.
//
// The image holds only what changed, as a layer over the sandbox's image:
// its cost grows with the changes, not with the image. Use it like any
// image: WithImage(name) or WithImage(info.Digest), Images().List, Remove.
// The image it stands on cannot be removed while it exists.
//
// Not captured: volumes, tmpfs mounts, and processes (memory). Files'
// capabilities and setuid/setgid bits are dropped, devices and sockets
// skipped. Rootless, a sandbox with a disk budget (the default) cannot be
// snapshotted (ErrUnsupported): create it WithDisk(0).
func (s *Sandbox) Snapshot(ctx context.Context, name string) (*ImageInfo, error) {
	p := wire.SnapshotParams{Name: name}
	var w wire.ImageInfo
	if err := onSandbox(ctx, s, wire.SandboxSnapshot, &p, &p.Sandbox, &w); err != nil {
		return nil, err
	}
	info := imageInfo(&w)
	return &info, nil
}

// Fork makes n new sandboxes (1..64) whose filesystem starts as the
// sandbox's current one. Each child has its own writable layer, so none
// sees another's (or the parent's) later writes. Each child gets a fresh
// identity: its own name and hostname, a new /etc/machine-id and, where
// the image has one, a new /var/lib/systemd/random-seed.
//
// With no options the children take the sandbox's configuration; options
// replace it entirely (WithImage is ignored: the image is the fork point).
// On the native backend processes are not carried over (it has no memory
// checkpoint): each child starts with only its init running. A microVM
// sandbox's children carry its memory and processes (a Checkpoint and n
// Restores); each also gets a reseeded RNG, and of opts only WithName,
// WithHostname, WithDetached and WithLabels apply. All or nothing: on an
// error no child is left.
func (s *Sandbox) Fork(ctx context.Context, n int, opts ...Option) ([]*Sandbox, error) {
	if n < 1 || n > 64 {
		return nil, &Error{Op: "sandbox.fork", Code: CodeInvalidArgument,
			Message: fmt.Sprintf("fork: n must be 1..64, not %d", n)}
	}
	p := wire.ForkParams{N: uint32(n)}
	if len(opts) > 0 {
		var cfg sandboxConfig
		for _, o := range opts {
			o(&cfg)
		}
		if k := cfg.badEnvKey; k != nil {
			return nil, &Error{Op: "sandbox.fork", Code: CodeInvalidArgument,
				Message: fmt.Sprintf("WithEnv key %q: must be non-empty, without '=' or NUL", *k)}
		}
		if cfg.invalid != nil {
			return nil, cfg.invalid
		}
		p.Config = &cfg.SandboxConfig
	}
	var r wire.Forked
	if err := onSandbox(ctx, s, wire.SandboxFork, &p, &p.Sandbox, &r); err != nil {
		return nil, err
	}
	out := make([]*Sandbox, len(r.Sandboxes))
	for i := range r.Sandboxes {
		out[i] = opened(&r.Sandboxes[i])
	}
	return out, nil
}

// Checkpoint saves a running microVM sandbox under name: its memory and
// processes, its devices and its writable disk. The VM is stopped for the
// save (a pause of about the time its touched memory takes to write) and
// then runs on. name follows the rules of image names. The checkpoint
// lives under the engine's home (0600 files: it holds the guest's memory,
// secrets included) until RemoveCheckpoint.
//
// The native backend returns ErrUnsupported: CRIU does not work on this
// kernel (use Snapshot for the filesystem). A VM with volumes cannot be
// checkpointed either (ErrUnsupported).
func (s *Sandbox) Checkpoint(ctx context.Context, name string) error {
	p := wire.CheckpointParams{Name: name}
	var r wire.CheckpointInfo
	return onSandbox(ctx, s, wire.SandboxCheckpoint, &p, &p.Sandbox, &r)
}

// Restore starts a new sandbox from checkpoint name: its processes carry
// on from where they were when the checkpoint was taken. Each restored
// sandbox is a new machine: its own name, hostname, /etc/machine-id and
// a reseeded RNG. Of opts only WithName, WithHostname, WithReplace,
// WithDetached and WithLabels apply; everything else is the checkpoint's.
// A checkpoint whose files differ from what the engine wrote is refused
// (ErrInvalidArgument).
func Restore(ctx context.Context, name string, opts ...Option) (*Sandbox, error) {
	p := wire.RestoreParams{Name: name}
	if len(opts) > 0 {
		var cfg sandboxConfig
		for _, o := range opts {
			o(&cfg)
		}
		if cfg.invalid != nil {
			return nil, cfg.invalid
		}
		p.Config = &cfg.SandboxConfig
	}
	var r wire.SandboxOpened
	if err := callMethod(ctx, "sandbox.restore", wire.SandboxRestore, &p, &r); err != nil {
		return nil, err
	}
	return opened(&r), nil
}

// CheckpointInfo describes a stored checkpoint.
type CheckpointInfo struct {
	Name string
	// Source is the sandbox it was taken from.
	Source  string
	Created time.Time
	// StateBytes is the saved memory and device state; DiskBytes the
	// writable disk's (sparse) size.
	StateBytes uint64
	DiskBytes  uint64
}

// Checkpoints lists the stored checkpoints.
func Checkpoints(ctx context.Context) ([]CheckpointInfo, error) {
	var r wire.CheckpointListResult
	if err := callMethod(ctx, "checkpoint.list", wire.CheckpointList, &wire.Empty{}, &r); err != nil {
		return nil, err
	}
	out := make([]CheckpointInfo, len(r.Checkpoints))
	for i, c := range r.Checkpoints {
		out[i] = CheckpointInfo{Name: c.Name, Source: c.Source, Created: time.Unix(c.CreatedUnix, 0),
			StateBytes: c.StateBytes, DiskBytes: c.DiskBytes}
	}
	return out, nil
}

// RemoveCheckpoint deletes a stored checkpoint. Sandboxes restored from
// it are not affected.
func RemoveCheckpoint(ctx context.Context, name string) error {
	p := wire.NameParams{Name: name}
	return callMethod(ctx, "checkpoint.remove", wire.CheckpointRemove, &p, nil)
}

// Export writes the stored image nameOrDigest (a Snapshot or any other) as
// an OCI image layout in dir, a new directory (its parent must exist and
// be reached without a symlink). ref, when set, names the manifest in the
// layout's index. Each of the image's layers is one uncompressed layer,
// its deletions as OCI whiteouts, so Import or any OCI tool gives back the
// same filesystem. Returns the manifest's digest.
func (*ImageService) Export(ctx context.Context, nameOrDigest, dir, ref string) (string, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return "", &Error{Op: "image.export", Code: CodeInvalidArgument, Message: err.Error()}
	}
	var r wire.ExportResult
	p := wire.ExportParams{Name: nameOrDigest, Path: abs, Reference: ref}
	if err := callMethod(ctx, "image.export", wire.ImageExport, &p, &r); err != nil {
		return "", err
	}
	return r.Digest, nil
}
