package lockbox_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"os"
	"strings"
	"time"

	"lockbox.dev/lockbox"
)

func ExampleCreateSandbox() {
	ctx := context.Background()
	sb, err := lockbox.CreateSandbox(ctx,
		lockbox.WithImage("base"),
		lockbox.WithMemory(256),
		lockbox.WithPids(64),
		lockbox.WithEnv("GREETING", "hello"),
	)
	if err != nil {
		log.Fatal(err)
	}
	defer sb.Remove(ctx)

	res, err := sb.Exec(ctx, "sh", "-c", "echo $GREETING from $(hostname -s | cut -c1-3)")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("%s", res.Stdout)
	fmt.Println("exit", res.ExitCode)
	// Output:
	// hello from sb-
	// exit 0
}

func ExampleSandbox_Exec_exitCode() {
	ctx := context.Background()
	sb, err := lockbox.CreateSandbox(ctx)
	if err != nil {
		log.Fatal(err)
	}
	defer sb.Remove(ctx)

	// A failing program is a result, not an error.
	res, err := sb.Shell(ctx, "echo oops >&2; exit 3")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("exit %d, stderr %q\n", res.ExitCode, res.Stderr)
	// Output: exit 3, stderr "oops\n"
}

func ExampleSandbox_CommandContext() {
	ctx := context.Background()
	sb, err := lockbox.CreateSandbox(ctx)
	if err != nil {
		log.Fatal(err)
	}
	defer sb.Remove(ctx)

	cmd := sb.CommandContext(ctx, "tr", "a-z", "A-Z")
	cmd.Stdin = strings.NewReader("shout\n")
	out, err := cmd.Output()
	if err != nil {
		log.Fatal(err)
	}
	fmt.Print(string(out))

	err = sb.CommandContext(ctx, "false").Run()
	var ee *lockbox.ExitError
	if errors.As(err, &ee) {
		fmt.Println("false exited with", ee.ExitCode())
	}
	// Output:
	// SHOUT
	// false exited with 1
}

func ExampleSandbox_ExecStream() {
	ctx := context.Background()
	sb, err := lockbox.CreateSandbox(ctx)
	if err != nil {
		log.Fatal(err)
	}
	defer sb.Remove(ctx)

	es, err := sb.ExecStream(ctx, []string{"sh", "-c", "echo one; echo two"})
	if err != nil {
		log.Fatal(err)
	}
	for ev := range es.Events() {
		switch ev.Kind {
		case lockbox.EventStdout:
			fmt.Print("out: ", string(ev.Data))
		case lockbox.EventExit:
			fmt.Println("exit", ev.Exit.ExitCode)
		}
	}
}

func ExampleFS() {
	ctx := context.Background()
	sb, err := lockbox.CreateSandbox(ctx)
	if err != nil {
		log.Fatal(err)
	}
	defer sb.Remove(ctx)

	fs := sb.FS()
	if err := fs.WriteFile(ctx, "/work/in.txt", []byte("6*7\n"), 0o644); err != nil {
		log.Fatal(err)
	}
	res, _ := sb.Shell(ctx, "echo $(( $(cat /work/in.txt) )) > /work/out.txt")
	_ = res
	out, err := fs.ReadFile(ctx, "/work/out.txt")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Print(string(out))

	// Large files stream: nothing is held in memory at once.
	w, _ := fs.Create(ctx, "/work/big")
	io.Copy(w, io.LimitReader(zeros{}, 64<<20))
	if err := w.Close(); err != nil {
		log.Fatal(err)
	}
	st, _ := fs.Stat(ctx, "/work/big")
	fmt.Println(st.Size())
	// Output:
	// 42
	// 67108864
}

type zeros struct{}

func (zeros) Read(p []byte) (int, error) { clear(p); return len(p), nil }

func ExampleFS_As() {
	ctx := context.Background()
	// The workload runs as uid 1000; so do file calls, unless asked.
	sb, err := lockbox.CreateSandbox(ctx, lockbox.WithUser("1000"))
	if err != nil {
		log.Fatal(err)
	}
	defer sb.Remove(ctx)

	if err := sb.FS().WriteFile(ctx, "/tmp/mine", []byte("x"), 0o644); err != nil {
		log.Fatal(err)
	}
	// Root only where the program means it.
	if err := sb.FS().As("root").WriteFile(ctx, "/etc/motd", []byte("hi\n"), 0o644); err != nil {
		log.Fatal(err)
	}
	res, _ := sb.Shell(ctx, "stat -c %u /tmp/mine /etc/motd")
	fmt.Print(string(res.Stdout))
	// Output:
	// 1000
	// 0
}

func ExampleFS_CopyToHost() {
	ctx := context.Background()
	sb, err := lockbox.CreateSandbox(ctx)
	if err != nil {
		log.Fatal(err)
	}
	defer sb.Remove(ctx)

	sb.Shell(ctx, "mkdir -p /work/results && echo ok > /work/results/status")
	dst, _ := os.MkdirTemp("", "results-")
	defer os.RemoveAll(dst)
	if err := sb.FS().CopyToHost(ctx, "/work/results", dst+"/results"); err != nil {
		log.Fatal(err)
	}
	b, _ := os.ReadFile(dst + "/results/status")
	fmt.Print(string(b))
	// Output: ok
}

func ExampleWithDetached() {
	ctx := context.Background()
	sb, err := lockbox.CreateSandbox(ctx, lockbox.WithName("example-worker"), lockbox.WithDetached(), lockbox.WithReplace())
	if err != nil {
		log.Fatal(err)
	}
	sb.Close() // the sandbox keeps running

	// Later, possibly in another process:
	again, err := lockbox.GetSandbox(ctx, "example-worker")
	if err != nil {
		log.Fatal(err)
	}
	info, _ := again.Info(ctx)
	fmt.Println(info.Name, info.Status)
	again.Remove(ctx)
	// Output: example-worker running
}

func ExampleCreateVolume() {
	ctx := context.Background()
	lockbox.RemoveVolume(ctx, "example-cache")
	if _, err := lockbox.CreateVolume(ctx, "example-cache"); err != nil {
		log.Fatal(err)
	}
	defer lockbox.RemoveVolume(ctx, "example-cache")

	a, _ := lockbox.CreateSandbox(ctx, lockbox.WithNamedVolume("example-cache", "/cache", false))
	a.Shell(ctx, "echo warm > /cache/state")
	a.Remove(ctx)

	b, _ := lockbox.CreateSandbox(ctx, lockbox.WithNamedVolume("example-cache", "/cache", true))
	res, _ := b.Exec(ctx, "cat", "/cache/state")
	b.Remove(ctx)
	fmt.Print(string(res.Stdout))
	// Output: warm
}

func ExampleSandbox_Info() {
	ctx := context.Background()
	sb, err := lockbox.CreateSandbox(ctx, lockbox.WithMemory(128))
	if err != nil {
		log.Fatal(err)
	}
	defer sb.Remove(ctx)
	info, _ := sb.Info(ctx)
	for _, n := range info.NotEnforced {
		// Rootless without cgroup delegation, for example.
		fmt.Printf("not enforced: %s (%s)\n", n.Feature, n.Reason)
	}
	m, _ := sb.Metrics(ctx)
	_ = m.MemoryBytes
}

func ExampleWithExecTimeout() {
	ctx := context.Background()
	sb, err := lockbox.CreateSandbox(ctx)
	if err != nil {
		log.Fatal(err)
	}
	defer sb.Remove(ctx)
	res, _ := sb.ExecArgs(ctx, []string{"sleep", "60"}, lockbox.WithExecTimeout(100*time.Millisecond))
	fmt.Println("timed out:", res.TimedOut)
	// Output: timed out: true
}
