package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
)

// listFlag collects a repeatable flag (-e A=1 -e B=2).
type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, ",") }
func (l *listFlag) Set(v string) error { *l = append(*l, v); return nil }

// flags is a command's flag set with its usage line. The standard flag
// package is enough: commands are few and flat, and it keeps the SDK's
// module free of a CLI framework's dependencies. Errors come back to the
// caller (exit code 2), never as an os.Exit inside the parser.
type flags struct {
	*flag.FlagSet
	usage string
}

func newFlags(name, usage string) *flags {
	fs := flag.NewFlagSet("lockbox "+name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	return &flags{fs, usage}
}

func (f *flags) printUsage(w io.Writer) {
	fmt.Fprintf(w, "Usage: %s\n", f.usage)
	f.VisitAll(func(fl *flag.Flag) {
		dash := "--"
		if len(fl.Name) == 1 {
			dash = "-"
		}
		arg, use := flag.UnquoteUsage(fl)
		fmt.Fprintf(w, "  %s%s %s\n      %s", dash, fl.Name, arg, use)
		if fl.DefValue != "" && fl.DefValue != "false" && fl.DefValue != "0" {
			fmt.Fprintf(w, " (default %s)", fl.DefValue)
		}
		fmt.Fprintln(w)
	})
}

// usageError is a mistake in the command line: exit code 2.
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

func usagef(format string, a ...any) error { return &usageError{fmt.Sprintf(format, a...)} }

// parse reads flags placed anywhere before the first "--" and among the
// first want positional arguments (want < 0: no limit); what follows the
// want-th positional, or the "--", is returned untouched as rest. So
// `run -e A=1 IMAGE ls -l` gives IMAGE and [ls -l], as docker does.
// A "--" meant as a flag's value must be written -e=--.
func (f *flags) parse(args []string, want int) (pos, rest []string, err error) {
	for {
		n := len(args)
		if err := f.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return nil, nil, err
			}
			return nil, nil, &usageError{err.Error()}
		}
		left := f.Args()
		if used := n - len(left); used > 0 && args[used-1] == "--" {
			return pos, left, nil
		}
		if len(left) == 0 {
			return pos, nil, nil
		}
		pos, args = append(pos, left[0]), left[1:]
		if want >= 0 && len(pos) == want {
			if len(args) > 0 && args[0] == "--" {
				args = args[1:]
			}
			return pos, args, nil
		}
	}
}

// parseExact is parse for commands that take exactly n positionals (or,
// with atLeast, n or more) and nothing after them.
func (f *flags) parseExact(args []string, n int, atLeast bool) ([]string, error) {
	pos, rest, err := f.parse(args, -1)
	if err != nil {
		return nil, err
	}
	pos = append(pos, rest...)
	if len(pos) < n || (!atLeast && len(pos) > n) {
		return nil, usagef("%s", f.usage)
	}
	return pos, nil
}

// badUsage reports a usage error or prints help; it returns the exit code.
func (f *flags) badUsage(env *cli, err error) int {
	if errors.Is(err, flag.ErrHelp) {
		f.printUsage(env.stdout)
		return exitOK
	}
	fmt.Fprintf(env.stderr, "%s: %v\n", f.Name(), err)
	fmt.Fprintf(env.stderr, "Usage: %s\nRun '%s -h' for the flags.\n", f.usage, f.Name())
	return exitUsage
}
