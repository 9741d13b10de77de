package tests

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"lockbox.dev/lockbox"
)

// TestLoadManySandboxesManyExecs runs 50 sandboxes at once, 20 execs in
// each (all concurrently), and checks every byte of output and every exit
// code.
func TestLoadManySandboxesManyExecs(t *testing.T) {
	needEngine(t)
	const sandboxes, execs = 50, 20
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()

	sbs := make([]*lockbox.Sandbox, sandboxes)
	var wg sync.WaitGroup
	errs := make(chan error, sandboxes*execs)
	for i := range sbs {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			sb, err := lockbox.CreateSandbox(ctx, lockbox.WithName(fmt.Sprintf("load-%02d", i)), lockbox.WithReplace())
			if err != nil {
				errs <- fmt.Errorf("create %d: %w", i, err)
				return
			}
			sbs[i] = sb
		}(i)
	}
	wg.Wait()
	t.Cleanup(func() {
		for _, sb := range sbs {
			if sb != nil {
				sb.Remove(context.Background())
			}
		}
	})
	select {
	case err := <-errs:
		t.Fatal(err)
	default:
	}

	for i, sb := range sbs {
		for e := 0; e < execs; e++ {
			wg.Add(1)
			go func(i, e int, sb *lockbox.Sandbox) {
				defer wg.Done()
				if err := oneLoadExec(ctx, sb, i, e); err != nil {
					errs <- fmt.Errorf("sandbox %d exec %d: %w", i, e, err)
				}
			}(i, e, sb)
		}
	}
	wg.Wait()
	close(errs)
	n := 0
	for err := range errs {
		n++
		if n <= 10 {
			t.Error(err)
		}
	}
	if n > 0 {
		t.Fatalf("%d of %d execs were wrong", n, sandboxes*execs)
	}
}

// oneLoadExec alternates two shapes: generated output on both streams with
// a chosen exit code, and random bytes echoed back through stdin.
func oneLoadExec(ctx context.Context, sb *lockbox.Sandbox, i, e int) error {
	if e%2 == 0 {
		script := fmt.Sprintf(`i=0; while [ $i -lt 300 ]; do echo "sb-%d exec-%d line-$i"; i=$((i+1)); done; echo "err-%d-%d" >&2; exit %d`, i, e, i, e, e%7)
		res, err := sb.Shell(ctx, script)
		if err != nil {
			return err
		}
		var want strings.Builder
		for l := 0; l < 300; l++ {
			fmt.Fprintf(&want, "sb-%d exec-%d line-%d\n", i, e, l)
		}
		if string(res.Stdout) != want.String() {
			return fmt.Errorf("stdout differs (%d bytes, want %d)", len(res.Stdout), want.Len())
		}
		if string(res.Stderr) != fmt.Sprintf("err-%d-%d\n", i, e) {
			return fmt.Errorf("stderr %q", res.Stderr)
		}
		if res.ExitCode != e%7 {
			return fmt.Errorf("exit code %d, want %d", res.ExitCode, e%7)
		}
		return nil
	}
	payload := make([]byte, 64<<10+e)
	rand.Read(payload)
	res, err := sb.ExecArgs(ctx, []string{"cat"}, lockbox.WithStdin(bytes.NewReader(payload)))
	if err != nil {
		return err
	}
	if !bytes.Equal(res.Stdout, payload) || res.ExitCode != 0 || len(res.Stderr) != 0 {
		return fmt.Errorf("cat echoed %d bytes (want %d), exit %d", len(res.Stdout), len(payload), res.ExitCode)
	}
	return nil
}
