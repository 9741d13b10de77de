package tests

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"lockbox.dev/lockbox"
)

// Attack review s4, finding 11 (fixed in images/src/upper_copy.rs): the
// snapshot copier held each directory's listing and every waiting
// subdirectory's name and stat, bounded only by the entry count
// (1,000,000): ~1M directories with 255-byte names in one directory made
// the host process (the caller's: the engine is in it) hold ~390 MiB. Names
// held at once are now bounded in bytes (64 MiB), and the unit test
// names_held_at_once_are_bounded_in_bytes covers it in CI. This end-to-end
// form takes minutes (900k mkdirs), so it runs only with
// LOCKBOX_ATTACK_OPEN=1.
func TestAttackSnapshotWideUpperHostMemory(t *testing.T) {
	needEngine(t)
	openFinding(t)
	if os.Geteuid() != 0 {
		t.Skip("a tmpfs layer is read from the host only as root")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 600*time.Second)
	defer cancel()
	sb, err := lockbox.CreateSandbox(ctx, lockbox.WithImage("python"), lockbox.WithDisk(4096), lockbox.WithMemory(4096))
	if err != nil {
		t.Fatal(err)
	}
	defer sb.Remove(context.Background())
	const n = 900000
	script := `import os
os.mkdir("/w")
os.chdir("/w")
pad = "x" * 240
for i in range(` + "900000" + `):
    os.mkdir("%s%09d" % (pad, i))
print("made")`
	if err := sb.FS().WriteFile(ctx, "/tmp/mk.py", []byte(script), 0o644); err != nil {
		t.Fatal(err)
	}
	res, err := sb.ExecArgs(ctx, []string{"python3", "/tmp/mk.py"})
	if err != nil || !strings.Contains(string(res.Stdout), "made") {
		t.Fatalf("making %d dirs: %v %s %s", n, err, res.Stdout, res.Stderr)
	}
	var serr error
	name := uniq("wide")
	peak, _ := peakRSSGrowth(t, func() {
		_, serr = sb.Snapshot(ctx, name)
	})
	defer lockbox.Images().Remove(context.Background(), name)
	t.Logf("snapshot of %d wide dirs: %v; host peak RSS growth %d MiB", n, serr, peak>>20)
	if peak > 128<<20 {
		t.Errorf("FOUND: a snapshot of a sandbox's %d directories grew the host process by %d MiB", n, peak>>20)
	}
}
