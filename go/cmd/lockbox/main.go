// Command lockbox runs and manages Lockbox sandboxes from a shell or a CI
// script: install and verify the engine, check the host, run commands in
// throwaway or named sandboxes, copy files, manage images. It is a thin
// layer over the Go SDK (lockbox.dev/lockbox); docs/cli.md describes every
// command, flag and exit code.
//
//	go run lockbox.dev/lockbox/cmd/lockbox@<version> install --version <version>
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"sort"
	"syscall"
)

// command is one subcommand: run gets the arguments after its name and
// returns the process's exit code.
type command struct {
	summary string
	run     func(ctx context.Context, env *cli, args []string) int
}

// cli is what every command writes to; tests swap nothing: they run the
// built binary.
type cli struct {
	stdin  *os.File
	stdout io.Writer
	stderr io.Writer
}

var commands map[string]command

func init() {
	commands = map[string]command{
		"install": {"download, verify and install an engine version", runInstall},
		"verify":  {"check an installed engine against its signed manifest", runVerify},
		"doctor":  {"report what this host allows sandboxes (exit 1 if anything fails)", runDoctor},
		"run":     {"run a command in a new sandbox, removed when it ends", runRun},
		"create":  {"create a named sandbox that outlives this command", runCreate},
		"exec":    {"run a command in a named sandbox", runExec},
		"ls":      {"list sandboxes", runList},
		"rm":      {"stop and remove named sandboxes", runRemove},
		"cp":      {"copy files between a sandbox (NAME:PATH) and the host", runCopy},
		"images":  {"manage images: pull, import, ls, inspect, rm, prune", runImages},
		"version": {"print the CLI's and the engine's versions", runVersion},
	}
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	env := &cli{stdin: os.Stdin, stdout: os.Stdout, stderr: os.Stderr}
	code := dispatch(ctx, env, os.Args[1:])
	stop()
	os.Exit(code)
}

func dispatch(ctx context.Context, env *cli, args []string) int {
	if len(args) == 0 {
		usage(env.stderr)
		return exitUsage
	}
	switch args[0] {
	case "-h", "--help", "help":
		usage(env.stdout)
		return exitOK
	case "--version":
		return runVersion(ctx, env, nil)
	}
	c, ok := commands[args[0]]
	if !ok {
		fmt.Fprintf(env.stderr, "lockbox: unknown command %q\n", args[0])
		usage(env.stderr)
		return exitUsage
	}
	return c.run(ctx, env, args[1:])
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "Usage: lockbox COMMAND [flags] [args]")
	fmt.Fprintln(w)
	names := make([]string, 0, len(commands))
	for n := range commands {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintf(w, "  %-8s %s\n", n, commands[n].summary)
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Run 'lockbox COMMAND -h' for a command's flags. Exit codes: 0 ok, 1 error,")
	fmt.Fprintln(w, "2 usage, 125 the engine failed; run and exec return the command's code")
	fmt.Fprintln(w, "(128+N when signal N ended it). Environment: LOCKBOX_HOME, LOCKBOX_RELEASE_URL,")
	fmt.Fprintln(w, "LOCKBOX_LIB (see docs/cli.md).")
}
