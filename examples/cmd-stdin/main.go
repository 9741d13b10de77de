// cmd-stdin: the os/exec-shaped Cmd, with input piped into the sandbox.
//
//	go run ./cmd-stdin
//
// If you know os/exec, you know this: Stdin, Stdout, Stderr, Output,
// CombinedOutput, Run, and *ExitError for a command that exits non-zero.
package main

import (
	"context"
	"errors"
	"fmt"
	"log"
	"strings"
	"time"

	"lockbox.dev/lockbox"
)

func main() {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if _, err := lockbox.EnsureInstalled(ctx); err != nil {
		log.Fatalf("install the engine: %v", err)
	}
	sb, err := lockbox.CreateSandbox(ctx, lockbox.WithImage("base"))
	if err != nil {
		log.Fatalf("create sandbox: %v", err)
	}
	defer sb.Remove(ctx)

	// Stdin is any io.Reader; it is streamed in and closed at its end, so
	// the command sees end-of-file like a shell pipe would give it.
	cmd := sb.CommandContext(ctx, "tr", "a-z", "A-Z")
	cmd.Stdin = strings.NewReader("untrusted input, shouted back\n")
	out, err := cmd.Output()
	if err != nil {
		log.Fatalf("tr: %v", err)
	}
	fmt.Printf("tr said: %s", out)

	// Lines in, a count out: `wc -l` only answers once stdin is closed.
	cmd = sb.CommandContext(ctx, "wc", "-l")
	cmd.Stdin = strings.NewReader("one\ntwo\nthree\n")
	out, err = cmd.Output()
	if err != nil {
		log.Fatalf("wc: %v", err)
	}
	fmt.Printf("wc counted %s lines\n", strings.TrimSpace(string(out)))

	// A non-zero exit is an *ExitError, as with os/exec.
	err = sb.CommandContext(ctx, "sh", "-c", "echo failing >&2; exit 3").Run()
	var exitErr *lockbox.ExitError
	if errors.As(err, &exitErr) {
		fmt.Printf("the command failed with exit code %d\n", exitErr.ExitCode())
	} else {
		log.Fatalf("expected an *ExitError, got %v", err)
	}
}
