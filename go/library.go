package lockbox

import "context"

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
	var v VersionInfo
	if err := call(ctx, "version", "version", nil, &v); err != nil {
		return VersionInfo{}, err
	}
	if l := loaded.Load(); l != nil {
		v.Path = l.path
	}
	return v, nil
}

// SetLibraryLog sets the engine library's log level ("off", "error",
// "warn", "info" or "debug") and appends its records to file. The library
// is silent by default and never writes to the process's stdout/stderr.
func SetLibraryLog(ctx context.Context, level, file string) error {
	params := struct {
		Level string `json:"level"`
		File  string `json:"file,omitempty"`
	}{level, file}
	return call(ctx, "log.set_level", "log.set_level", params, nil)
}
