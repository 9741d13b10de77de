package wire

// fs.* methods: paths inside a sandbox, resolved inside its root.
var (
	FSStat         = Method[FSPathParams, FileInfo]{"fs.stat"}
	FSReadDir      = Method[FSPathParams, FSReadDirResult]{"fs.read_dir"}
	FSMkdirAll     = Method[FSModeParams, Empty]{"fs.mkdir_all"}
	FSRemove       = Method[FSPathParams, Empty]{"fs.remove"}
	FSRemoveAll    = Method[FSPathParams, Empty]{"fs.remove_all"}
	FSRename       = Method[FSRenameParams, Empty]{"fs.rename"}
	FSSymlink      = Method[FSSymlinkParams, Empty]{"fs.symlink"}
	FSOpen         = Method[FSOpenParams, StreamResult]{"fs.open"}
	FSCreate       = Method[FSModeParams, StreamResult]{"fs.create"}
	FSCopyToHost   = Method[FSCopyToHostParams, FSCopyResult]{"fs.copy_to_host"}
	FSCopyFromHost = Method[FSCopyParams, FSCopyResult]{"fs.copy_from_host"}
)

var fsMethods = []spec{FSStat, FSReadDir, FSMkdirAll, FSRemove, FSRemoveAll, FSRename,
	FSSymlink, FSOpen, FSCreate, FSCopyToHost, FSCopyFromHost}

// FSTarget is who a file call acts in and as: the sandbox, and a user
// other than the sandbox's own ("" for its own).
type FSTarget struct {
	Sandbox uint64 `json:"sandbox"`
	User    string `json:"user,omitempty"`
}

type FSPathParams struct {
	FSTarget
	Path string `json:"path"`
}

// FSModeParams is a path to make with a mode (nil: the engine's
// default, 0755 for directories, 0644 for files).
type FSModeParams struct {
	FSTarget
	Path string  `json:"path"`
	Mode *uint32 `json:"mode,omitempty"`
}

type FSRenameParams struct {
	FSTarget
	From string `json:"from"`
	To   string `json:"to"`
}

type FSSymlinkParams struct {
	FSTarget
	Target string `json:"target"`
	Link   string `json:"link"`
}

// FSOpenParams: Regular refuses anything but a regular file before it is
// opened.
type FSOpenParams struct {
	FSTarget
	Path    string `json:"path"`
	Regular bool   `json:"regular,omitempty"`
}

type FSCopyParams struct {
	FSTarget
	Src string `json:"src"`
	Dst string `json:"dst"`
}

// FSCopyToHostParams: MaxBytes nil is the engine's default (1 GiB).
type FSCopyToHostParams struct {
	FSTarget
	Src      string  `json:"src"`
	Dst      string  `json:"dst"`
	MaxBytes *uint64 `json:"max_bytes,omitempty"`
}

// FileInfo is fs.stat's result and one fs.read_dir entry. Kind is
// "file", "dir", "symlink" or "other"; Mode the permission bits.
type FileInfo struct {
	Name       string  `json:"name"`
	Kind       string  `json:"kind"`
	Size       int64   `json:"size"`
	Mode       uint32  `json:"mode"`
	Mtime      int64   `json:"mtime"`
	LinkTarget *string `json:"link_target,omitempty"`
}

type FSReadDirResult struct {
	Entries []FileInfo `json:"entries"`
}

// StreamResult is a stream handle.
type StreamResult struct {
	Stream uint64 `json:"stream"`
}

type FSCopyResult struct {
	Bytes uint64 `json:"bytes"`
}
