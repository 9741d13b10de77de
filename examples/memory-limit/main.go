// memory-limit: cap a sandbox's memory and see what happens past the cap.
//
//	go run ./memory-limit
//
// WithMemory sets a limit in MiB through the kernel's memory cgroup. A
// process that allocates past it is killed by the kernel (the OOM killer);
// the sandbox itself and your program carry on.
package main

import (
	"context"
	"fmt"
	"log"
	"slices"
	"strings"
	"syscall"
	"time"

	"lockbox.dev/lockbox"
)

func main() {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if _, err := lockbox.EnsureInstalled(ctx); err != nil {
		log.Fatalf("install the engine: %v", err)
	}
	sb, err := lockbox.CreateSandbox(ctx, lockbox.WithImage("base"), lockbox.WithMemory(32))
	if err != nil {
		log.Fatalf("create sandbox: %v", err)
	}
	defer sb.Remove(ctx)

	// Where the kernel cannot enforce a limit (say, rootless without cgroup
	// delegation) the sandbox still starts, and Info says so: check it
	// instead of assuming.
	info, err := sb.Info(ctx)
	if err != nil {
		log.Fatalf("info: %v", err)
	}
	fmt.Printf("memory limit enforced: %v\n", slices.Contains(info.Enforced, "memory"))
	for _, ne := range info.NotEnforced {
		fmt.Printf("not enforced: %s (%s)\n", ne.Feature, ne.Reason)
	}

	// awk doubles a string up to 128 MiB, four times the limit: around
	// 32 MiB in, the kernel's OOM killer ends it with SIGKILL.
	res, err := sb.Exec(ctx, "awk", `BEGIN { s = "x"; for (i = 0; i < 27; i++) s = s s; print length(s) }`)
	if err != nil {
		log.Fatalf("exec: %v", err)
	}
	switch {
	case res.Signal == int(syscall.SIGKILL):
		fmt.Printf("the allocation was stopped: killed by signal %d (SIGKILL, the OOM killer), exit code %d\n",
			res.Signal, res.ExitCode)
	case res.ExitCode != 0:
		fmt.Printf("the allocation was stopped: exit code %d, stderr %q\n", res.ExitCode, res.Stderr)
	default:
		fmt.Printf("the allocation was NOT stopped (no limit in force): a string of %s bytes\n",
			strings.TrimSpace(string(res.Stdout)))
	}
	// The cgroup remembers the high-water mark: right at the limit.
	if m, err := sb.Metrics(ctx); err == nil && m.MemoryPeakBytes > 0 {
		fmt.Printf("peak memory: %d MiB of the 32 MiB allowed\n", m.MemoryPeakBytes>>20)
	}

	// The sandbox is still usable after one of its processes was killed.
	res, err = sb.Exec(ctx, "echo", "still alive")
	if err != nil {
		log.Fatalf("exec after OOM: %v", err)
	}
	fmt.Printf("afterwards the sandbox says: %s", res.Stdout)
}
