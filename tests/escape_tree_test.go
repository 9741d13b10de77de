package tests

import (
	"context"
	"strings"
	"testing"
	"time"

	"lockbox.dev/lockbox"
)

// A sandbox builds a deep directory chain in what the host later removes:
// its writable layer (kept on the host's disk with WithDisk(0)) and a named
// volume. The removal runs in this very process (the engine is loaded in
// it). The depth here is what the sandbox can build in a few seconds
// (Landlock's checks make each level dearer inside); the engine's own test
// (tree::tests) shows the walk's stack does not grow with depth, on a chain
// that overflows std's recursive remove_dir_all. This test checks the same
// code end to end: the trees go, the volume is gone, the process lives.
// The depth is checked first, so it never passes on a tree not built.
func TestEscapeDeepTreeRemovalKeepsHostAlive(t *testing.T) {
	needEngine(t)
	const depth = "3000"
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	vol := "deep-tree-vol"
	sb, err := lockbox.CreateSandbox(ctx,
		lockbox.WithVolume(escapeProbe(t), "/probe", true),
		lockbox.WithDisk(0),
		lockbox.WithNamedVolume(vol, "/vol", false))
	if err != nil {
		t.Fatalf("CreateSandbox: %v", err)
	}
	for _, dir := range []string{"/work/deep", "/vol/deep"} {
		res, err := sb.ExecArgs(ctx, []string{"/probe/escapeprobe", "deeptree", dir, depth})
		if err != nil {
			t.Fatal(err)
		}
		if got := strings.TrimSpace(string(res.Stdout)); got != "MADE "+depth {
			t.Fatalf("the sandbox could not build the tree in %s: %q %s", dir, got, res.Stderr)
		}
	}
	if err := sb.Remove(ctx); err != nil {
		t.Fatalf("Remove: %v", err)
	}
	if err := lockbox.RemoveVolume(ctx, vol); err != nil {
		t.Fatalf("RemoveVolume: %v", err)
	}
	vols, err := lockbox.ListVolumes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range vols {
		if v.Name == vol {
			t.Fatalf("volume %s still listed after removal", vol)
		}
	}
}
