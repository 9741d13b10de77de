// branching: try several fixes from one state, keep the one that works.
//
//	go run ./branching
//
// An agent set up a project in a sandbox. Instead of redoing that setup
// for every attempt, it forks the sandbox: each child starts from the same
// files, and none sees another's changes. The state is also saved as an
// image with Snapshot, to start from later. Pause stops everything in a
// sandbox without losing it; a Pool hands out ready sandboxes at once.
package main

import (
	"context"
	"fmt"
	"log"
	"strings"
	"time"

	"lockbox.dev/lockbox"
)

func sh(ctx context.Context, sb *lockbox.Sandbox, script string) string {
	res, err := sb.Shell(ctx, script)
	if err != nil {
		log.Fatalf("%s: %v", script, err)
	}
	return strings.TrimSpace(string(res.Stdout))
}

func main() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if _, err := lockbox.EnsureInstalled(ctx); err != nil {
		log.Fatalf("install the engine: %v", err)
	}

	// Fork's fork-point images have no name: Prune removes them once no
	// sandbox uses them (deferred first, so it runs last).
	defer lockbox.Images().Prune(context.WithoutCancel(ctx))

	// The expensive setup, done once: a "project" whose test fails.
	sb, err := lockbox.CreateSandbox(ctx, lockbox.WithImage("base"))
	if err != nil {
		log.Fatal(err)
	}
	defer sb.Remove(context.WithoutCancel(ctx))
	sh(ctx, sb, `mkdir -p /src && echo 'answer=41' > /src/config &&
		printf '. /src/config\n[ "$answer" = 42 ]\n' > /src/test.sh`)

	// Three attempts from the same state, in three sandboxes at once.
	fixes := []string{"answer=40", "answer=42", "answer=43"}
	kids, err := sb.Fork(ctx, len(fixes))
	if err != nil {
		log.Fatal(err)
	}
	winner := -1
	for i, k := range kids {
		defer k.Remove(context.WithoutCancel(ctx))
		sh(ctx, k, fmt.Sprintf("echo '%s' > /src/config", fixes[i]))
		res, err := k.Shell(ctx, "sh /src/test.sh")
		if err != nil {
			log.Fatal(err)
		}
		fmt.Printf("fix %q: test exit %d\n", fixes[i], res.ExitCode)
		if res.ExitCode == 0 {
			winner = i
		}
	}
	fmt.Printf("the parent still has: %s\n", sh(ctx, sb, "cat /src/config"))
	fmt.Printf("winning fix: %s\n", fixes[winner])

	// Keep the winner's state as an image, and start from it later.
	img, err := kids[winner].Snapshot(ctx, "example-branching-fixed")
	if err != nil {
		log.Fatal(err)
	}
	defer lockbox.Images().Remove(context.WithoutCancel(ctx), img.Digest)
	later, err := lockbox.CreateSandbox(ctx, lockbox.WithImage("example-branching-fixed"))
	if err != nil {
		log.Fatal(err)
	}
	defer later.Remove(context.WithoutCancel(ctx))
	fmt.Printf("a sandbox from the snapshot has: %s\n", sh(ctx, later, "cat /src/config"))

	// Pause: nothing runs, calls fail fast, Resume carries on.
	if err := later.Pause(ctx); err != nil {
		log.Fatal(err)
	}
	_, err = later.Shell(ctx, "true")
	fmt.Printf("exec while paused fails at once: %v\n", err != nil)
	if err := later.Resume(ctx); err != nil {
		log.Fatal(err)
	}
	fmt.Printf("after resume: %s\n", sh(ctx, later, "echo running"))

	// A pool: ready sandboxes, one per tool call.
	pool, err := lockbox.NewPool(ctx, 2, lockbox.WithImage("base"))
	if err != nil {
		log.Fatal(err)
	}
	defer pool.Close()
	for i := 0; i < 3; i++ {
		s, err := pool.Get(ctx)
		if err != nil {
			log.Fatal(err)
		}
		fmt.Printf("pooled sandbox %d says: %s\n", i, sh(ctx, s, "echo ready"))
		s.Remove(ctx)
	}
}
