//go:build !(linux && (amd64 || arm64))

package install

import "os"

// startWriteback is a no-op where sync_file_range is not available: the
// final fsync does all the work.
func startWriteback(*os.File, int64, int64) {}
