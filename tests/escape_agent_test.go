package tests

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"lockbox.dev/lockbox"
)

// Attacks on the agent (PID 1) through the API and from inside: each must
// end as a clean error while the sandbox keeps running, and each has a
// control showing the probe would have seen a success.

// stillServes asserts the sandbox is running and answers an exec.
func stillServes(t *testing.T, sb *lockbox.Sandbox) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	res, err := sb.Shell(ctx, "echo alive")
	if err != nil || string(res.Stdout) != "alive\n" {
		t.Fatalf("AGENT DOWN: exec after the attack: %v %+v", err, res)
	}
	info, err := sb.Info(ctx)
	if err != nil || !info.Running() {
		t.Fatalf("AGENT DOWN: sandbox info after the attack: %v %+v", err, info)
	}
}

// The sandbox's user (1000) plants links to a root-only file; the API's
// file calls act as that user, so they neither read nor overwrite it.
func TestEscapeAgentFileCallsActAsSandboxUser(t *testing.T) {
	needEngine(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	sb := newSandbox(t, lockbox.WithUser("1000:1000"))
	info, err := sb.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if reason, ok := hasFeature(info.NotEnforced, "uid_mapping"); ok {
		t.Skipf("the sandbox has a single id, no less-privileged user (reported: %s)", reason)
	}
	root := lockbox.WithExecUser("0")
	if res, err := sb.Shell(ctx, "echo top > /secret && chmod 600 /secret", root); err != nil || res.ExitCode != 0 {
		t.Fatalf("setup: %v %+v", err, res)
	}
	if res, err := sb.Shell(ctx, "ln -s /secret /tmp/rl && ln -s /secret /tmp/wl && id -u"); err != nil || string(res.Stdout) != "1000\n" {
		t.Fatalf("plant: %v %+v", err, res)
	}
	// Control: the link does lead to the secret (root reads it through it).
	if res, err := sb.Shell(ctx, "cat /tmp/rl", root); err != nil || string(res.Stdout) != "top\n" {
		t.Fatalf("control: %v %+v", err, res)
	}
	b, err := sb.FS().ReadFile(ctx, "/tmp/rl")
	if !errors.Is(err, lockbox.ErrPermission) || len(b) != 0 {
		t.Fatalf("ESCAPE: ReadFile through the user's link: %q %v", b, err)
	}
	if err := sb.FS().WriteFile(ctx, "/tmp/wl", []byte("pwned"), 0o644); !errors.Is(err, lockbox.ErrPermission) {
		t.Fatalf("ESCAPE: WriteFile through the user's link: %v", err)
	}
	res, err := sb.Shell(ctx, "cat /secret; stat -c %a:%u /secret", root)
	if err != nil || string(res.Stdout) != "top\n600:0\n" {
		t.Fatalf("CHANGED: the root-only file: %v %q", err, res.Stdout)
	}
	// What the user may do, the API does, as the user.
	if err := sb.FS().WriteFile(ctx, "/tmp/mine", []byte("m"), 0o644); err != nil {
		t.Fatal(err)
	}
	if res, _ := sb.Shell(ctx, "stat -c %u /tmp/mine"); string(res.Stdout) != "1000\n" {
		t.Fatalf("owner of an API-written file: %q", res.Stdout)
	}
	// Acting as root is an explicit opt-in, and it is root: the same read
	// through the user's link now returns the secret (the probe above
	// would have seen it).
	if b, err := sb.FS().As("root").ReadFile(ctx, "/tmp/rl"); err != nil || string(b) != "top\n" {
		t.Fatalf("FS().As(\"root\") read through the link: %q %v", b, err)
	}
	if err := sb.FS().As("0:0").WriteFile(ctx, "/tmp/rootfile", []byte("r"), 0o600); err != nil {
		t.Fatal(err)
	}
	if res, _ := sb.Shell(ctx, "stat -c %u:%g /tmp/rootfile", root); string(res.Stdout) != "0:0\n" {
		t.Fatalf("owner of a file written As(\"0:0\"): %q", res.Stdout)
	}
	if _, err := sb.FS().As("nosuchuser").Stat(ctx, "/"); !errors.Is(err, lockbox.ErrNotFound) {
		t.Fatalf("As an unknown user: want ErrNotFound, got %v", err)
	}
}

// A FIFO or device given to the file API, an exec argument larger than a
// protocol frame, and /dev/shm filled to the memory limit: each is an
// error for that call only.
func TestEscapeAgentStaysUp(t *testing.T) {
	needEngine(t)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	sb := newSandbox(t, lockbox.WithMemory(48))
	if res, err := sb.Shell(ctx, "mkfifo /tmp/fifo && echo ok"); err != nil || string(res.Stdout) != "ok\n" {
		t.Fatalf("setup: %v %+v", err, res)
	}
	// Control: a reader of the FIFO really blocks.
	fctx, fcancel := context.WithTimeout(ctx, 500*time.Millisecond)
	_, err := sb.Shell(fctx, "cat /tmp/fifo")
	fcancel()
	if err == nil {
		t.Fatal("control: cat of a writerless FIFO returned")
	}
	for _, p := range []string{"/tmp/fifo", "/dev/zero"} {
		cctx, c := context.WithTimeout(ctx, 10*time.Second)
		_, err := sb.FS().ReadFile(cctx, p)
		c()
		if !errors.Is(err, lockbox.ErrInvalidArgument) {
			t.Fatalf("ReadFile %s: %v", p, err)
		}
	}
	stillServes(t, sb)

	big := strings.Repeat("x", 5<<20)
	if _, err := sb.ExecArgs(ctx, []string{"echo", big}); !errors.Is(err, lockbox.ErrInvalidArgument) {
		t.Fatalf("exec with a 5 MiB argument: %v", err)
	}
	// Over the kernel's per-argument limit but inside a frame: E2BIG.
	if _, err := sb.ExecArgs(ctx, []string{"echo", big[:200<<10]}); !errors.Is(err, lockbox.ErrInvalidArgument) {
		t.Fatalf("exec with a 200 KiB argument: %v", err)
	}
	// Control: an argument that fits runs.
	res, err := sb.ExecArgs(ctx, []string{"sh", "-c", "echo ${#1}", "sh", big[:100<<10]})
	if err != nil || string(res.Stdout) != "102400\n" {
		t.Fatalf("control: 100 KiB argument: %v %+v", err, res)
	}
	stillServes(t, sb)

	info, err := sb.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if reason, ok := hasFeature(info.NotEnforced, "memory"); ok {
		t.Logf("memory limit not enforced here (%s): no OOM to survive", reason)
		return
	}
	// /dev/shm takes at most half the memory limit; with it full, a
	// workload asking for the rest meets the OOM killer, which must take
	// the workload and leave the agent serving.
	res, err = sb.Shell(ctx, "dd if=/dev/zero of=/dev/shm/fill bs=1M count=128 2>/dev/null; echo fill=$?; "+
		"dd if=/dev/zero of=/dev/null bs=40M count=1 2>/dev/null; echo dd=$?")
	if err != nil {
		t.Fatalf("shm fill: %v", err)
	}
	// Control: /dev/shm stopped short (ENOSPC) and the limit was reached
	// (the allocating writer was killed).
	if string(res.Stdout) != "fill=1\ndd=137\n" {
		t.Fatalf("shm fill and allocation: %q %q", res.Stdout, res.Stderr)
	}
	stillServes(t, sb)
}
