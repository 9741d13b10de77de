package wire

// Methods every library build has: its version, the no-op call, inert
// handles (for benchmarks of the handle path) and logging.
var (
	Version      = Method[Empty, VersionResult]{"version"}
	Noop         = Method[Empty, Empty]{"noop"}
	HandleCreate = Method[Empty, HandleResult]{"handle.create"}
	HandleKind   = Method[HandleParams, HandleKindResult]{"handle.kind"}
	LogSetLevel  = Method[LogSetLevelParams, Empty]{"log.set_level"}
)

var coreMethods = []spec{Version, Noop, HandleCreate, HandleKind, LogSetLevel}

type VersionResult struct {
	Version   string `json:"version"`
	ABI       uint32 `json:"abi"`
	GitCommit string `json:"git_commit"`
	Profile   string `json:"profile"`
	TestHooks bool   `json:"test_hooks"`
}

// HandleParams names a handle of any kind.
type HandleParams struct {
	Handle uint64 `json:"handle"`
}

type HandleResult struct {
	Handle uint64 `json:"handle"`
}

type HandleKindResult struct {
	Kind string `json:"kind"`
}

type LogSetLevelParams struct {
	Level  string `json:"level"`
	File   string `json:"file,omitempty"`
	Stderr bool   `json:"stderr,omitempty"`
}
