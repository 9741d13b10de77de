package wire

// Branching a sandbox's state (issue 13): pause and resume its processes,
// capture its filesystem as an image, fork children from it.
var (
	SandboxPause    = Method[SandboxParams, Empty]{"sandbox.pause"}
	SandboxResume   = Method[SandboxParams, Empty]{"sandbox.resume"}
	SandboxSnapshot = Method[SnapshotParams, ImageInfo]{"sandbox.snapshot"}
	SandboxFork     = Method[ForkParams, Forked]{"sandbox.fork"}
)

var snapshotMethods = []spec{SandboxPause, SandboxResume, SandboxSnapshot, SandboxFork, ImageExport}

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
