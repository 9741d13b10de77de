// Quickstart: install the engine, create a sandbox, run a command in it.
//
//	go run ./quickstart
//
// EnsureInstalled downloads the pinned engine release once (checking its
// signature and hashes) into a per-user cache; later runs find it there.
// In development, LOCKBOX_LIB can point at a local build instead, and
// LOCKBOX_RELEASE_URL at a mirror or a local copy of a release.
package main

import (
	"context"
	"fmt"
	"log"
	"time"

	"lockbox.dev/lockbox"
)

func main() {
	// Every call that can block takes a context: a deadline here bounds the
	// whole program, including the download on a first run.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	if _, err := lockbox.EnsureInstalled(ctx); err != nil {
		log.Fatalf("install the engine: %v", err)
	}

	// "base" is the small busybox image shipped with the release. Nothing
	// of the host is visible inside: not its files, processes or network.
	sb, err := lockbox.CreateSandbox(ctx, lockbox.WithImage("base"))
	if err != nil {
		log.Fatalf("create sandbox: %v", err)
	}
	// Remove stops the sandbox and deletes everything it wrote.
	defer sb.Remove(ctx)

	res, err := sb.Exec(ctx, "echo", "hello from a sandbox")
	if err != nil {
		// err means the command could not run at all; a command that runs
		// and fails is a result with a non-zero ExitCode.
		log.Fatalf("exec: %v", err)
	}
	fmt.Printf("exit code: %d\n", res.ExitCode)
	fmt.Printf("stdout: %s", res.Stdout)

	// Shell runs a script with /bin/sh -c.
	res, err = sb.Shell(ctx, "echo running as $(id -u) on $(hostname); exit 3")
	if err != nil {
		log.Fatalf("shell: %v", err)
	}
	fmt.Printf("script said: %s", res.Stdout)
	fmt.Printf("script exit code: %d\n", res.ExitCode)
}
