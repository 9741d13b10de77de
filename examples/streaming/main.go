// Streaming: see a command's output while it runs, not only at the end.
//
//	go run ./streaming
//
// A Cmd works like os/exec.Cmd: set Stdout to any io.Writer and the
// sandboxed process's output is copied there as it is produced. ExecStream
// gives the same output as a channel of events instead.
package main

import (
	"context"
	"fmt"
	"io"
	"log"
	"os"
	"sync"
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

	// A slow producer: one line every 200 ms. Each line reaches our stdout
	// as soon as it is printed inside the sandbox.
	cmd := sb.CommandContext(ctx, "sh", "-c",
		`for i in 1 2 3 4 5; do echo "tick $i"; sleep 0.2; done; echo done >&2`)
	out := &countingWriter{w: os.Stdout}
	cmd.Stdout = out
	cmd.Stderr = out // stderr into the same stream, like 2>&1
	if err := cmd.Run(); err != nil {
		log.Fatalf("run: %v", err)
	}
	// Had the output been collected and handed over at the end, it would
	// have come in one write; streamed, it comes as it is produced.
	fmt.Printf("output arrived in %d separate writes\n", out.writes())

	// ExecStream is the lower-level form: one event per chunk of output,
	// tagged with the stream it came from, and the exit status last.
	stream, err := sb.ExecStream(ctx, []string{"sh", "-c",
		`echo compiling; sleep 0.1; echo "warning: unused variable" >&2; sleep 0.1; echo linked; exit 2`})
	if err != nil {
		log.Fatalf("exec stream: %v", err)
	}
	for ev := range stream.Events() {
		switch ev.Kind {
		case lockbox.EventStdout:
			fmt.Printf("[stdout] %s", ev.Data)
		case lockbox.EventStderr:
			fmt.Printf("[stderr] %s", ev.Data)
		case lockbox.EventExit:
			if ev.Err != nil {
				log.Fatalf("exec stream: %v", ev.Err)
			}
			fmt.Printf("[exit] code %d\n", ev.Exit.ExitCode)
		}
	}
}

// countingWriter passes bytes on and counts the writes. Stdout and Stderr
// are copied by separate goroutines, hence the mutex.
type countingWriter struct {
	mu sync.Mutex
	w  io.Writer
	n  int
}

func (c *countingWriter) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.n++
	return c.w.Write(p)
}

func (c *countingWriter) writes() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n
}
