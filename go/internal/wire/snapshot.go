package wire

// Branching a sandbox's state (issue 13): pause and resume its processes,
// capture its filesystem as an image, fork children from it.
var (
	SandboxPause    = Method[SandboxParams, Empty]{"sandbox.pause"}
	SandboxResume   = Method[SandboxParams, Empty]{"sandbox.resume"}
	SandboxSnapshot = Method[SnapshotParams, ImageInfo]{"sandbox.snapshot"}
	SandboxFork     = Method[ForkParams, Forked]{"sandbox.fork"}
)

var snapshotMethods = []spec{SandboxPause, SandboxResume, SandboxSnapshot, SandboxFork, ImageExport,
	SandboxCheckpoint, SandboxRestore, CheckpointList, CheckpointRemove}

// Memory checkpoints of microVM sandboxes (issue 14).
var (
	SandboxCheckpoint = Method[CheckpointParams, CheckpointInfo]{"sandbox.checkpoint"}
	SandboxRestore    = Method[RestoreParams, SandboxOpened]{"sandbox.restore"}
	CheckpointList    = Method[Empty, CheckpointListResult]{"checkpoint.list"}
	CheckpointRemove  = Method[NameParams, Empty]{"checkpoint.remove"}
)

// CheckpointParams names the sandbox and the new checkpoint.
type CheckpointParams struct {
	Sandbox uint64 `json:"sandbox"`
	Name    string `json:"name"`
}

// CheckpointInfo describes a stored checkpoint.
type CheckpointInfo struct {
	Name        string `json:"name"`
	Source      string `json:"source"`
	CreatedUnix int64  `json:"created_unix"`
	StateBytes  uint64 `json:"state_bytes"`
	DiskBytes   uint64 `json:"disk_bytes"`
}

// RestoreParams names the checkpoint; of Config only name, hostname,
// replace, detached and labels are used.
type RestoreParams struct {
	Name   string         `json:"name"`
	Config *SandboxConfig `json:"config,omitempty"`
}

// CheckpointListResult is every stored checkpoint.
type CheckpointListResult struct {
	Checkpoints []CheckpointInfo `json:"checkpoints"`
}

// SnapshotParams: the image is recorded under Name when given.
type SnapshotParams struct {
	Sandbox uint64 `json:"sandbox"`
	Name    string `json:"name,omitempty"`
}

// ForkParams asks for N children of the sandbox's current filesystem.
// Config, when set, replaces the parent's configuration for them (their
// image is always the fork point).
type ForkParams struct {
	Sandbox uint64         `json:"sandbox"`
	N       uint32         `json:"n"`
	Config  *SandboxConfig `json:"config,omitempty"`
}

// Forked holds each child, opened as sandbox.create opens one.
type Forked struct {
	Sandboxes []SandboxOpened `json:"sandboxes"`
}

// ImageExport writes a stored image as an OCI image layout in a new host
// directory.
var ImageExport = Method[ExportParams, ExportResult]{"image.export"}

// ExportParams names the image, the new directory and, optionally, the
// reference its index records.
type ExportParams struct {
	Name      string `json:"name"`
	Path      string `json:"path"`
	Reference string `json:"reference,omitempty"`
}

// ExportResult is the exported manifest's digest.
type ExportResult struct {
	Digest string `json:"digest"`
}
