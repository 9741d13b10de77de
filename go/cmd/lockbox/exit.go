package main

import (
	"context"
	"errors"
	"fmt"

	"lockbox.dev/lockbox"
)

// Exit codes (docs/cli.md). run and exec return the command's own code,
// or 128+N when signal N ended it, as a shell does.
const (
	exitOK    = 0
	exitError = 1 // the operation failed (not found, verification, ...)
	exitUsage = 2 // the command line is wrong
	// exitTimeout: exec --timeout killed the command (as timeout(1)).
	exitTimeout = 124
	// exitEngine: the engine could not be loaded, or could not create
	// the sandbox or start the command (docker run's 125).
	exitEngine = 125
	// exitCannotRun: the command was found but may not be run (126) or
	// was not found (127), as a shell and docker report it.
	exitCannotRun = 126
	exitNotFound  = 127
)

// fail prints err for the command name and returns its exit code: 125 for
// an engine that cannot be used at all (not installed, not loadable) or,
// with engine set, any failure of the engine around a command; 2 for a
// usage error; else 1.
func fail(env *cli, name string, err error, engine bool) int {
	fmt.Fprintf(env.stderr, "lockbox %s: %v\n", name, err)
	var ue *usageError
	if errors.As(err, &ue) {
		return exitUsage
	}
	switch {
	case errors.Is(err, lockbox.ErrVerification), errors.Is(err, lockbox.ErrInstallDirUnsafe):
		return exitError
	case errors.Is(err, lockbox.ErrNotInstalled), errors.Is(err, lockbox.ErrLibraryNotLoaded):
		fmt.Fprintln(env.stderr, "hint: install the engine with 'lockbox install', or set LOCKBOX_LIB; 'lockbox doctor' says what this host allows")
		return exitEngine
	case errors.Is(err, context.Canceled):
		return exitError
	case engine:
		return exitEngine
	}
	return exitError
}
