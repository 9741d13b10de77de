// detach: a sandbox that outlives the program that made it.
//
//	go run ./detach create   # makes a detached sandbox, leaves it running, exits
//	go run ./detach attach   # a later process finds it by name, uses it, removes it
//
// Normally a sandbox dies with the Go process that created it. With
// WithDetached it keeps running after Close and after the process exits,
// and any later program finds it again by name with GetSandbox.
package main

import (
	"context"
	"errors"
	"fmt"
	"log"
	"os"
	"time"

	"lockbox.dev/lockbox"
)

const name = "example-detached"

func main() {
	if len(os.Args) != 2 || (os.Args[1] != "create" && os.Args[1] != "attach") {
		log.Fatal("usage: detach create|attach")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if _, err := lockbox.EnsureInstalled(ctx); err != nil {
		log.Fatalf("install the engine: %v", err)
	}
	if os.Args[1] == "create" {
		create(ctx)
	} else {
		attach(ctx)
	}
}

func create(ctx context.Context) {
	// WithReplace removes a leftover sandbox of the same name, for example
	// from an earlier run that never got to `attach`.
	sb, err := lockbox.CreateSandbox(ctx, lockbox.WithImage("base"),
		lockbox.WithName(name), lockbox.WithDetached(), lockbox.WithReplace())
	if err != nil {
		log.Fatalf("create sandbox: %v", err)
	}
	if err := sb.FS().WriteFile(ctx, "/state.txt", []byte("remembered\n"), 0o644); err != nil {
		log.Fatalf("write: %v", err)
	}
	// Close only lets go of this handle; a detached sandbox keeps running
	// when this process exits.
	if err := sb.Close(); err != nil {
		log.Fatalf("close: %v", err)
	}
	fmt.Printf("created %s; this process now exits and leaves it running\n", name)
}

func attach(ctx context.Context) {
	sb, err := lockbox.GetSandbox(ctx, name)
	if errors.Is(err, lockbox.ErrNotFound) {
		log.Fatalf("no sandbox named %s: run `detach create` first", name)
	} else if err != nil {
		log.Fatalf("get sandbox: %v", err)
	}
	res, err := sb.Exec(ctx, "cat", "/state.txt")
	if err != nil {
		log.Fatalf("exec: %v", err)
	}
	fmt.Printf("reattached to %s from another process, it still has: %s", sb.Name(), res.Stdout)

	// A detached sandbox stays until removed.
	if err := sb.Remove(ctx); err != nil {
		log.Fatalf("remove: %v", err)
	}
	_, err = lockbox.GetSandbox(ctx, name)
	fmt.Printf("after Remove, GetSandbox reports not found: %v\n", errors.Is(err, lockbox.ErrNotFound))
}
