package tests

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"lockbox.dev/lockbox"
)

// 32 concurrent Gets from a pool of 8: every sandbox is distinct (name,
// id, filesystem) and answers; Close removes the idle ones and later Gets
// fail; nothing is left after the taken ones are removed.
func TestPoolConcurrentGets(t *testing.T) {
	needEngine(t)
	ctx, cancel := context.WithTimeout(context.Background(), 180*time.Second)
	defer cancel()
	// What a create costs here and now: a Get served from the pool must
	// take a small part of it. (A fixed 5 ms bar can fail on a loaded
	// machine, where a goroutine may wait that long for a CPU.)
	t0 := time.Now()
	ctrl, err := lockbox.CreateSandbox(ctx, lockbox.WithMemory(128))
	if err != nil {
		t.Fatalf("control create: %v", err)
	}
	created := time.Since(t0)
	if err := ctrl.Remove(ctx); err != nil {
		t.Fatal(err)
	}
	fastBar := max(created/4, 5*time.Millisecond)
	pool, err := lockbox.NewPool(ctx, 8, lockbox.WithMemory(128))
	if err != nil {
		t.Fatalf("NewPool: %v", err)
	}
	defer pool.Close()
	// Filling is eight creates in the background: a generous deadline.
	for deadline := time.Now().Add(90 * time.Second); pool.Ready() < 8 && time.Now().Before(deadline); {
		time.Sleep(50 * time.Millisecond)
	}
	if pool.Ready() != 8 {
		t.Fatalf("pool filled to %d of 8 (last error %v)", pool.Ready(), pool.Err())
	}
	const n = 32
	got := make([]*lockbox.Sandbox, n)
	waits := make([]time.Duration, n)
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			start := time.Now()
			sb, err := pool.Get(ctx)
			waits[i] = time.Since(start)
			if err != nil {
				errs <- err
				return
			}
			got[i] = sb
			// Usable, and its filesystem is its own.
			if _, err := sb.Shell(ctx, fmt.Sprintf("echo %d > /mine", i)); err != nil {
				errs <- err
			}
		}(i)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	names, ids := map[string]bool{}, map[string]bool{}
	var taken []string
	for i, sb := range got {
		info, err := sb.Info(ctx)
		if err != nil {
			t.Fatal(err)
		}
		taken = append(taken, info.ID)
		if names[sb.Name()] || ids[info.ID] {
			t.Fatalf("sandbox %d (%s) handed out twice", i, sb.Name())
		}
		names[sb.Name()], ids[info.ID] = true, true
		out, err := sb.Shell(ctx, "cat /mine")
		if err != nil || strings.TrimSpace(string(out.Stdout)) != fmt.Sprint(i) {
			t.Fatalf("sandbox %d sees /mine = %q (%v): shared filesystem?", i, out.Stdout, err)
		}
	}
	fast := 0
	for _, w := range waits {
		if w < fastBar {
			fast++
		}
	}
	if fast < 8 {
		t.Fatalf("only %d of %d Gets were served from the pool at once (under %v, a quarter of a create's %v; waits %v)", fast, n, fastBar, created, waits)
	}
	// Close: idle ones removed, refilling stops, Get fails.
	for deadline := time.Now().Add(90 * time.Second); pool.Ready() < 8 && time.Now().Before(deadline); {
		time.Sleep(50 * time.Millisecond)
	}
	var idle []string
	if list, err := lockbox.ListSandboxes(ctx); err == nil {
		for _, s := range list {
			if !names[s.Name] {
				idle = append(idle, s.ID)
			}
		}
	}
	if err := pool.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if _, err := pool.Get(ctx); !errors.Is(err, lockbox.ErrPoolClosed) {
		t.Fatalf("Get after Close: %v", err)
	}
	for _, sb := range got {
		if err := sb.Remove(ctx); err != nil {
			t.Fatal(err)
		}
	}
	list, err := lockbox.ListSandboxes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	ours := append(taken, idle...)
	for _, s := range list {
		for _, id := range ours {
			if s.ID == id {
				t.Fatalf("left after Close and Remove: %s", s.Name)
			}
		}
	}
	for _, id := range ours {
		assertNoCgroups(t, id)
	}
	if home := os.Getenv("LOCKBOX_HOME"); home != "" {
		left, _ := filepath.Glob(filepath.Join(home, "sandboxes", "*"))
		for _, l := range left {
			b, _ := os.ReadFile(filepath.Join(l, "config.json"))
			for _, id := range ours {
				if strings.Contains(string(b), id) {
					t.Fatalf("sandbox dir left: %s", l)
				}
			}
		}
	}
}

// Get honours its context; a pool whose configuration cannot be made
// fails in NewPool.
func TestPoolContextAndBadImage(t *testing.T) {
	needEngine(t)
	ctx := context.Background()
	if _, err := lockbox.NewPool(ctx, 2, lockbox.WithImage("no-such-image-x")); !errors.Is(err, lockbox.ErrNotFound) {
		t.Fatalf("NewPool with a missing image: %v", err)
	}
	pool, err := lockbox.NewPool(ctx, 1)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	done, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := pool.Get(done); !errors.Is(err, context.Canceled) && !errors.Is(err, lockbox.ErrCanceled) {
		t.Fatalf("Get with a canceled ctx: %v", err)
	}
}
