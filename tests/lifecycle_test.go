package tests

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"lockbox.dev/lockbox"
)

// lifecycleChild runs in a child process (this test binary re-executed):
// it creates the sandboxes named in LOCKBOX_LIFECYCLE_CHILD, prints their
// helper pids, and waits to be killed.
func TestLifecycleChild(t *testing.T) {
	names := os.Getenv("LOCKBOX_LIFECYCLE_CHILD")
	if names == "" {
		t.Skip("helper process for TestLifecycleHostKilled")
	}
	ctx := context.Background()
	for _, n := range strings.Split(names, ",") {
		opts := []lockbox.Option{lockbox.WithName(strings.TrimPrefix(n, "detached:")), lockbox.WithReplace()}
		if strings.HasPrefix(n, "detached:") {
			opts = append(opts, lockbox.WithDetached())
		}
		sb, err := lockbox.CreateSandbox(ctx, opts...)
		if err != nil {
			fmt.Println("ERROR", err)
			os.Exit(1)
		}
		info, _ := sb.Info(ctx)
		// A process inside, so there is something to leak.
		if _, err := sb.Shell(ctx, "sleep 300 >/dev/null 2>&1 &"); err != nil {
			fmt.Println("ERROR", err)
			os.Exit(1)
		}
		fmt.Printf("HELPER %s %d %s\n", sb.Name(), info.HelperPID, info.ID)
	}
	fmt.Println("READY")
	time.Sleep(time.Hour)
}

// TestLifecycleHostKilled SIGKILLs a host process that owns sandboxes:
// the non-detached one dies with it (lifeline) and the next engine start
// removes its files and cgroups; the detached one keeps running and is
// found again by name.
func TestLifecycleHostKilled(t *testing.T) {
	needEngine(t)
	child := exec.Command(os.Args[0], "-test.run=^TestLifecycleChild$", "-test.v")
	child.Env = append(os.Environ(), "LOCKBOX_LIFECYCLE_CHILD=owned-by-killed,detached:survivor")
	out, _ := child.StdoutPipe()
	child.Stderr = os.Stderr
	if err := child.Start(); err != nil {
		t.Fatal(err)
	}
	helpers := map[string]int{}
	ids := map[string]string{}
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) == 4 && f[0] == "HELPER" {
			helpers[f[1]], _ = strconv.Atoi(f[2])
			ids[f[1]] = f[3]
		}
		if len(f) > 0 && (f[0] == "READY" || f[0] == "ERROR") {
			if f[0] == "ERROR" {
				t.Fatalf("child: %s", sc.Text())
			}
			break
		}
	}
	go func() {
		for sc.Scan() {
		}
	}()
	if len(helpers) != 2 {
		t.Fatalf("child made %v", helpers)
	}
	// (Rootless runs may have no cgroup at all; then there is none to leak.)
	hadCgroups := len(cgroupsNamed(ids["owned-by-killed"])) > 0
	child.Process.Signal(syscall.SIGKILL)
	child.Wait()

	// The non-detached sandbox's helper (and everything under it) dies.
	owned := helpers["owned-by-killed"]
	deadline := time.Now().Add(10 * time.Second)
	for syscall.Kill(owned, 0) == nil && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if syscall.Kill(owned, 0) == nil {
		t.Fatalf("helper %d of a non-detached sandbox outlived its SIGKILLed host", owned)
	}
	// Nothing of the sandbox is still running anywhere on the host.
	if pids := processesMentioning(ids["owned-by-killed"]); len(pids) > 0 {
		t.Fatalf("processes of the dead sandbox still run: %v", pids)
	}

	// The detached one still runs and is found by name.
	ctx := context.Background()
	sb, err := lockbox.GetSandbox(ctx, "survivor")
	if err != nil {
		t.Fatal(err)
	}
	defer sb.Remove(ctx)
	if res, err := sb.Exec(ctx, "echo", "alive"); err != nil || string(res.Stdout) != "alive\n" {
		t.Fatalf("detached sandbox after host death: %v", err)
	}

	// A fresh engine (a new process) removes the dead sandbox's leftovers.
	lister := exec.Command(os.Args[0], "-test.run=^TestLifecycleLister$")
	lister.Env = append(os.Environ(), "LOCKBOX_LIFECYCLE_LIST=1")
	if b, err := lister.CombinedOutput(); err != nil {
		t.Fatalf("lister: %v\n%s", err, b)
	}
	if _, err := lockbox.GetSandbox(ctx, "owned-by-killed"); !errors.Is(err, lockbox.ErrNotFound) {
		t.Fatalf("dead sandbox still there after an engine start: %v", err)
	}
	if home := os.Getenv("LOCKBOX_HOME"); home != "" {
		if _, err := os.Stat(filepath.Join(home, "sandboxes", "owned-by-killed")); err == nil {
			t.Fatal("dead sandbox's directory is still on disk")
		}
	}
	if cg := cgroupsNamed(ids["owned-by-killed"]); hadCgroups && len(cg) > 0 {
		t.Fatalf("dead sandbox's cgroups remain: %v", cg)
	}
}

// TestLifecycleLister starts an engine in a fresh process (which runs the
// startup cleanup) and lists sandboxes.
func TestLifecycleLister(t *testing.T) {
	if os.Getenv("LOCKBOX_LIFECYCLE_LIST") == "" {
		t.Skip("helper process for TestLifecycleHostKilled")
	}
	if _, err := lockbox.ListSandboxes(context.Background()); err != nil {
		t.Fatal(err)
	}
}

// TestLifecycleCanceledCreateLeavesNothing cancels creates at many points
// and checks that no sandbox, directory or process is left.
func TestLifecycleCanceledCreateLeavesNothing(t *testing.T) {
	needEngine(t)
	for i := 0; i < 30; i++ {
		ctx, cancel := context.WithTimeout(context.Background(), time.Duration(i)*time.Millisecond)
		sb, err := lockbox.CreateSandbox(ctx, lockbox.WithName(fmt.Sprintf("cancel-%02d", i)))
		cancel()
		if err == nil {
			sb.Remove(context.Background())
			continue
		}
		if !errors.Is(err, lockbox.ErrCanceled) && !errors.Is(err, lockbox.ErrTimeout) {
			t.Fatalf("create %d: want canceled/timeout, got %v", i, err)
		}
	}
	// Some teardown finishes just after the canceled call returns: polled
	// with a generous deadline (a fixed 500 ms sleep could be too short on
	// a loaded machine), then every kind of leftover is checked.
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if list, err := lockbox.ListSandboxes(context.Background()); err == nil && !slices.ContainsFunc(list, func(s lockbox.SandboxInfo) bool {
			return strings.HasPrefix(s.Name, "cancel-")
		}) && len(processesMentioning("/sandboxes/cancel-")) == 0 {
			break
		}
	}
	list, err := lockbox.ListSandboxes(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range list {
		if strings.HasPrefix(s.Name, "cancel-") {
			t.Errorf("canceled create left sandbox %s (%s)", s.Name, s.Status)
		}
	}
	if home := os.Getenv("LOCKBOX_HOME"); home != "" {
		ents, _ := os.ReadDir(filepath.Join(home, "sandboxes"))
		for _, e := range ents {
			if strings.HasPrefix(e.Name(), "cancel-") {
				t.Errorf("canceled create left directory %s", e.Name())
			}
		}
	}
	if pids := processesMentioning("/sandboxes/cancel-"); len(pids) > 0 {
		t.Errorf("canceled creates left processes: %v", pids)
	}
}

// processesMentioning lists host pids whose command line contains s.
func processesMentioning(s string) []int {
	var out []int
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err == nil && strings.Contains(string(b), s) {
			out = append(out, pid)
		}
	}
	return out
}

// cgroupsNamed finds cgroup directories (v1 controllers and v2) whose name
// contains id.
func cgroupsNamed(id string) []string {
	if id == "" {
		return nil
	}
	var out []string
	filepath.WalkDir("/sys/fs/cgroup", func(p string, d os.DirEntry, err error) error {
		if err != nil || !d.IsDir() {
			return nil
		}
		if strings.Contains(d.Name(), id) {
			out = append(out, p)
		}
		if strings.Count(p, "/") > 7 {
			return filepath.SkipDir
		}
		return nil
	})
	return out
}
