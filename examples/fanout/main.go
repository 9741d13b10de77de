// fanout: many sandboxes at once, one per task, with errgroup.
//
//	go run ./fanout
//
// Every Lockbox call is safe from many goroutines. Here 20 tasks run in 20
// sandboxes in parallel; the first error cancels the others.
package main

import (
	"context"
	"fmt"
	"log"
	"strings"
	"time"

	"golang.org/x/sync/errgroup"
	"lockbox.dev/lockbox"
)

const tasks = 20

func main() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if _, err := lockbox.EnsureInstalled(ctx); err != nil {
		log.Fatalf("install the engine: %v", err)
	}

	results := make([]string, tasks) // each goroutine writes only its own slot
	g, ctx := errgroup.WithContext(ctx)
	for i := range tasks {
		g.Go(func() error {
			sb, err := lockbox.CreateSandbox(ctx, lockbox.WithImage("base"),
				lockbox.WithHostname(fmt.Sprintf("task-%02d", i)))
			if err != nil {
				return fmt.Errorf("task %d: create: %w", i, err)
			}
			defer sb.Remove(context.WithoutCancel(ctx))
			// Each task squares its number inside its own sandbox.
			res, err := sb.Shell(ctx, fmt.Sprintf("echo $(hostname) $((%d * %d))", i, i))
			if err != nil {
				return fmt.Errorf("task %d: exec: %w", i, err)
			}
			if res.ExitCode != 0 {
				return fmt.Errorf("task %d: exit %d: %s", i, res.ExitCode, res.Stderr)
			}
			results[i] = strings.TrimSpace(string(res.Stdout))
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		log.Fatal(err)
	}
	for _, r := range results {
		fmt.Println(r)
	}
	fmt.Printf("%d sandboxes answered\n", tasks)
}
