// Volume: a named volume outlives sandboxes and can be shared by several.
//
//	go run ./volume
//
// A sandbox's own writes vanish with it; a named volume is a directory the
// engine keeps (under LOCKBOX_HOME/volumes) until you remove it.
package main

import (
	"context"
	"fmt"
	"log"
	"time"

	"lockbox.dev/lockbox"
)

const volumeName = "example-shared"

func main() {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if _, err := lockbox.EnsureInstalled(ctx); err != nil {
		log.Fatalf("install the engine: %v", err)
	}

	if _, err := lockbox.CreateVolume(ctx, volumeName); err != nil {
		log.Fatalf("create volume: %v", err)
	}
	defer lockbox.RemoveVolume(ctx, volumeName)

	// Two sandboxes mount the same volume at /shared.
	writer, err := lockbox.CreateSandbox(ctx, lockbox.WithImage("base"),
		lockbox.WithNamedVolume(volumeName, "/shared", false))
	if err != nil {
		log.Fatalf("create writer: %v", err)
	}
	defer writer.Remove(ctx)
	reader, err := lockbox.CreateSandbox(ctx, lockbox.WithImage("base"),
		lockbox.WithNamedVolume(volumeName, "/shared", true)) // read-only here
	if err != nil {
		log.Fatalf("create reader: %v", err)
	}
	defer reader.Remove(ctx)

	if res, err := writer.Shell(ctx, "echo written by $(hostname) > /shared/note.txt"); err != nil || res.ExitCode != 0 {
		log.Fatalf("write: %v %+v", err, res)
	}
	res, err := reader.Exec(ctx, "cat", "/shared/note.txt")
	if err != nil {
		log.Fatalf("read: %v", err)
	}
	fmt.Printf("the reader sees: %s", res.Stdout)

	// The reader mounted it read-only: its write fails inside the sandbox.
	res, err = reader.Shell(ctx, "echo overwrite > /shared/note.txt")
	if err != nil {
		log.Fatalf("shell: %v", err)
	}
	fmt.Printf("a write from the read-only side exits with %d\n", res.ExitCode)

	// The data outlives the writer: remove it, start a fresh sandbox.
	if err := writer.Remove(ctx); err != nil {
		log.Fatalf("remove writer: %v", err)
	}
	later, err := lockbox.CreateSandbox(ctx, lockbox.WithImage("base"),
		lockbox.WithNamedVolume(volumeName, "/data", false))
	if err != nil {
		log.Fatalf("create later: %v", err)
	}
	defer later.Remove(ctx)
	res, err = later.Exec(ctx, "cat", "/data/note.txt")
	if err != nil {
		log.Fatalf("read later: %v", err)
	}
	fmt.Printf("a later sandbox still sees: %s", res.Stdout)
}
