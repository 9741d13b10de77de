package lockbox

import (
	"context"

	"lockbox.dev/lockbox/internal/abi"
	"lockbox.dev/lockbox/internal/wire"
)

// LoadOption configures Load.
type LoadOption func(*loadConfig)

type loadConfig struct {
	path string
}

// WithLibraryPath loads liblockbox.so from path instead of LOCKBOX_LIB or
// the installed copy.
func WithLibraryPath(path string) LoadOption {
	return func(c *loadConfig) { c.path = path }
}

// Load finds and loads the engine library and checks its ABI version.
// Calling it is optional: every API call loads the library on first use.
// Where the library comes from, in order: WithLibraryPath, the LOCKBOX_LIB
// environment variable, the copy EnsureInstalled put in place.
//
// The library is loaded once per process and never unloaded. Load after a
// successful load is a no-op, or an error if it names a different file.
// Errors match ErrLibraryNotLoaded (and ErrNotInstalled when no library
// could be found at all).
func Load(opts ...LoadOption) error {
	var cfg loadConfig
	for _, o := range opts {
		o(&cfg)
	}
	return fromABI(abi.Load(cfg.path))
}

// VersionInfo describes the loaded engine library.
type VersionInfo struct {
	Version   string `json:"version"`    // product version, e.g. "0.1.0"
	ABI       uint32 `json:"abi"`        // C ABI version
	GitCommit string `json:"git_commit"` // commit it was built from, or "unknown"
	Profile   string `json:"profile"`    // "release" or "debug"
	Path      string `json:"-"`          // the file it was loaded from
}

// LibraryVersion loads the library if needed and reports its version.
func LibraryVersion(ctx context.Context) (VersionInfo, error) {
	var r wire.VersionResult
	if err := callMethod(ctx, "version", wire.Version, nil, &r); err != nil {
		return VersionInfo{}, err
	}
	return VersionInfo{
		Version:   r.Version,
		ABI:       r.ABI,
		GitCommit: r.GitCommit,
		Profile:   r.Profile,
		Path:      abi.LoadedPath(),
	}, nil
}

// SetLibraryLog sets the engine library's log level ("off", "error",
// "warn", "info" or "debug") and appends its records to file. The library
// is silent by default and never writes to the process's stdout/stderr.
func SetLibraryLog(ctx context.Context, level, file string) error {
	return callMethod(ctx, "log.set_level", wire.LogSetLevel, &wire.LogSetLevelParams{Level: level, File: file}, nil)
}
