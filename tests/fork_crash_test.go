package tests

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"lockbox.dev/lockbox"
)

// A Fork interrupted by the death of its process (kill -9, as a host
// crash would) leaves nothing visible once an engine opens the home
// again: no unnamed fork image in Images(), no temp dir or incomplete
// image in the store. Two windows are hit: during the copy (a temp dir
// in images/tmp) and after the fork's image is complete but before its
// children use it. Control: the leftover is on disk after the kill, so
// the reopen is what removed it.
func TestForkCrashReclaimed(t *testing.T) {
	needEngine(t)
	base := os.Getenv("LOCKBOX_HOME")
	if base == "" {
		base = t.TempDir()
	}
	home, err := os.MkdirTemp(base, "fork-crash-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(home) })
	images := filepath.Join(home, "images")

	for _, window := range []string{"copy", "image"} {
		var leftover string
		for attempt := 0; attempt < 4 && leftover == ""; attempt++ {
			leftover = crashForkAt(t, home, window)
		}
		if leftover == "" {
			t.Fatalf("%s window: the kill never landed inside it in 4 tries", window)
		}
		t.Logf("%s window: left %s", window, leftover)
		list := reopenAndList(t, home)
		for _, l := range list {
			if strings.Contains(l, "fork of sandbox") {
				t.Fatalf("%s window: a fork image is still listed after the reopen: %s", window, l)
			}
		}
		if _, err := os.Stat(leftover); !os.IsNotExist(err) {
			t.Fatalf("%s window: %s still there after the reopen (%v)", window, leftover, err)
		}
		ents, _ := os.ReadDir(filepath.Join(images, "tmp"))
		for _, e := range ents {
			t.Fatalf("%s window: images/tmp/%s left", window, e.Name())
		}
		dirs, _ := os.ReadDir(images)
		for _, d := range dirs {
			if len(d.Name()) < 64 || !d.IsDir() {
				continue
			}
			if _, err := os.Stat(filepath.Join(images, d.Name(), ".complete")); err != nil {
				t.Fatalf("%s window: incomplete image dir %s left", window, d.Name())
			}
		}
	}
}

// crashForkAt runs a child that forks a sandbox with 64 MiB of changes
// in a loop and kills it (SIGKILL) inside `window`; returns the path of
// what the kill left ("" if the kill missed the window).
func crashForkAt(t *testing.T, home, window string) string {
	t.Helper()
	images := filepath.Join(home, "images")
	child := exec.Command(os.Args[0], "-test.run=^TestForkCrashChild$", "-test.v")
	child.Env = append(os.Environ(), "LOCKBOX_FORK_CRASH_CHILD=1", "LOCKBOX_HOME="+home)
	out, _ := child.StdoutPipe()
	child.Stderr = os.Stderr
	if err := child.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = child.Process.Kill(); _ = child.Wait() }()
	sc := bufio.NewScanner(out)
	ready := false
	for !ready && sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "ERROR") {
			t.Fatal(line)
		}
		ready = line == "READY"
	}
	if !ready {
		t.Fatal("child never got ready")
	}
	go func() {
		for sc.Scan() {
		}
	}()
	before := map[string]bool{}
	dirs, _ := os.ReadDir(images)
	for _, d := range dirs {
		before[d.Name()] = true
	}
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		var found string
		switch window {
		case "copy":
			ents, _ := os.ReadDir(filepath.Join(images, "tmp"))
			for _, e := range ents {
				if e.IsDir() {
					found = filepath.Join(images, "tmp", e.Name())
				}
			}
		case "image":
			dirs, _ := os.ReadDir(images)
			for _, d := range dirs {
				p := filepath.Join(images, d.Name())
				if before[d.Name()] {
					continue
				}
				if _, err := os.Stat(filepath.Join(p, "fork.lock")); err != nil {
					continue
				}
				if _, err := os.Stat(filepath.Join(p, ".complete")); err == nil {
					found = p
				}
			}
		}
		if found != "" {
			if err := child.Process.Signal(syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
			_ = child.Wait()
			if _, err := os.Stat(found); err != nil {
				return ""
			}
			return found
		}
		time.Sleep(500 * time.Microsecond)
	}
	t.Fatalf("%s window never seen in 60s", window)
	return ""
}

// reopenAndList opens an engine on `home` in a fresh process and returns
// its Images() lines.
func reopenAndList(t *testing.T, home string) []string {
	t.Helper()
	c := exec.Command(os.Args[0], "-test.run=^TestForkCrashChild$", "-test.v")
	c.Env = append(os.Environ(), "LOCKBOX_FORK_CRASH_CHILD=list", "LOCKBOX_HOME="+home)
	c.Stderr = os.Stderr
	out, err := c.Output()
	if err != nil {
		t.Fatalf("reopen: %v\n%s", err, out)
	}
	var list []string
	ended := false
	for _, l := range strings.Split(string(out), "\n") {
		if strings.HasPrefix(l, "ERROR") {
			t.Fatal(l)
		}
		if strings.HasPrefix(l, "IMAGE ") {
			list = append(list, l)
		}
		ended = ended || l == "END"
	}
	if !ended || len(list) == 0 {
		t.Fatalf("reopen listed nothing (the base image at least):\n%s", out)
	}
	return list
}

// TestForkCrashChild is the process TestForkCrashReclaimed kills (or, with
// "list", the one that reopens the home).
func TestForkCrashChild(t *testing.T) {
	mode := os.Getenv("LOCKBOX_FORK_CRASH_CHILD")
	if mode == "" {
		t.Skip("helper process for TestForkCrashReclaimed")
	}
	ctx := context.Background()
	fail := func(err error) {
		fmt.Println("ERROR", err)
		os.Exit(1)
	}
	if mode == "list" {
		list, err := lockbox.Images().List(ctx)
		if err != nil {
			fail(err)
		}
		for _, i := range list {
			fmt.Printf("IMAGE %s %v %s\n", i.Digest, i.Names, i.Source)
		}
		fmt.Println("END")
		os.Exit(0)
	}
	sb, err := lockbox.CreateSandbox(ctx, layerOpts()...)
	if err != nil {
		fail(err)
	}
	if r, err := sb.Shell(ctx, "head -c 67108864 /dev/zero | tr '\\0' x > /big"); err != nil || r.ExitCode != 0 {
		fail(fmt.Errorf("write: %v %+v", err, r))
	}
	fmt.Println("READY")
	for {
		kids, err := sb.Fork(ctx, 1)
		if err != nil {
			fail(err)
		}
		for _, k := range kids {
			_ = k.Remove(ctx)
		}
		fmt.Println("FORKED")
	}
}
