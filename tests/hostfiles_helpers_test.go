package tests

import (
	"bufio"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

// hostFileRacer is the directory holding cmd/hostfileracer, which the
// sandboxes mount read-only at /racer.
func hostFileRacer(t *testing.T) string { return staticProbe(t, "hostfileracer") }

// volumeDir is a host directory a sandbox may write into (whatever host
// ids its root maps to).
func volumeDir(t *testing.T) string {
	t.Helper()
	d, err := os.MkdirTemp("", "lockbox-vol-")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(d, 0o777); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

// diskUsage is the bytes allocated on the host under dir (st_blocks, not
// apparent size), without following symlinks.
func diskUsage(t *testing.T, dir string) int64 {
	t.Helper()
	var n int64
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return nil
		}
		if fi, err := os.Lstat(p); err == nil {
			if st, ok := fi.Sys().(*syscall.Stat_t); ok {
				n += st.Blocks * 512
			}
		}
		return nil
	})
	return n
}

// peakRSSGrowth runs f and returns how far this process's peak RSS rose
// above its RSS when f started (VmHWM after resetting it through
// /proc/self/clear_refs), plus the bytes Go allocated meanwhile.
func peakRSSGrowth(t *testing.T, f func()) (peak, allocated int64) {
	t.Helper()
	// Give freed heap back first, so earlier tests' garbage neither hides
	// growth (reused pages) nor counts as it.
	debug.FreeOSMemory()
	if err := os.WriteFile("/proc/self/clear_refs", []byte("5"), 0); err != nil {
		t.Fatalf("reset VmHWM: %v", err)
	}
	before := procStatus(t, "VmRSS")
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	a0 := ms.TotalAlloc
	f()
	runtime.ReadMemStats(&ms)
	return procStatus(t, "VmHWM") - before, int64(ms.TotalAlloc - a0)
}

// procStatus reads one "kB" field of /proc/self/status, in bytes.
func procStatus(t *testing.T, key string) int64 {
	t.Helper()
	f, err := os.Open("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if ok && k == key {
			n, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			if err != nil {
				t.Fatalf("%s: %v", key, err)
			}
			return n << 10
		}
	}
	t.Fatalf("no %s in /proc/self/status", key)
	return 0
}

// hostFree is the bytes free to unprivileged users on dir's filesystem.
func hostFree(dir string) (int64, error) {
	if dir == "" {
		dir = "/"
	}
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		return 0, err
	}
	return int64(st.Bavail) * st.Bsize, nil
}
