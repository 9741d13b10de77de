//go:build linux && (amd64 || arm64)

package install

import (
	"os"
	"syscall"
)

// startWriteback asks the kernel to begin writing [off, off+n) to disk now
// (SYNC_FILE_RANGE_WRITE, asynchronous), so the fsync that makes the
// download durable finds most of it already written.
func startWriteback(f *os.File, off, n int64) {
	const syncFileRangeWrite = 2
	_, _, _ = syscall.Syscall6(syscall.SYS_SYNC_FILE_RANGE, f.Fd(), uintptr(off), uintptr(n), syncFileRangeWrite, 0, 0)
}
