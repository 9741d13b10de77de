package main

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	"lockbox.dev/lockbox"
)

// closeTimeout bounds removing a run's sandbox once its command ended.
const closeTimeout = 30 * time.Second

// runRun is `docker run --rm`: a sandbox lives as long as its command.
// --rm is accepted for muscle memory; there is no other kind of run (a
// sandbox that outlives its command is `create`).
func runRun(ctx context.Context, env *cli, args []string) int {
	fs := newFlags("run", "lockbox run [flags] IMAGE [--] [COMMAND [ARG...]]")
	var sf sandboxFlags
	var pf procFlags
	sf.register(fs)
	pf.register(fs, true)
	fs.StringVar(&sf.name, "name", "", "sandbox name (default: generated)")
	fs.Bool("rm", true, "remove the sandbox when the command ends (always: sandboxes are ephemeral; see create)")
	pos, argv, err := fs.parse(args, 1)
	if err == nil && len(pos) != 1 {
		err = usagef("an IMAGE is needed")
	}
	if err != nil {
		return fs.badUsage(env, err)
	}
	opts, err := sf.options(pos[0])
	if err != nil {
		return fail(env, "run", err, false)
	}
	if sf.name != "" {
		opts = append(opts, lockbox.WithName(sf.name))
	}
	sb, err := lockbox.CreateSandbox(ctx, opts...)
	if err != nil {
		return fail(env, "run", err, true)
	}
	defer closeSandbox(env, sb)
	if len(argv) == 0 {
		info, err := sb.Info(ctx)
		if err != nil {
			return fail(env, "run", err, true)
		}
		if argv = info.ImageUsed.DefaultCommand(); len(argv) == 0 {
			return fail(env, "run", usagef("no COMMAND given and image %s names none", pos[0]), false)
		}
	}
	code, err := runProcess(ctx, env, sb, argv, pf)
	if err != nil {
		fmt.Fprintf(env.stderr, "lockbox run: %v\n", err)
	}
	return code
}

func closeSandbox(env *cli, sb *lockbox.Sandbox) {
	ctx, cancel := context.WithTimeout(context.Background(), closeTimeout)
	defer cancel()
	if err := sb.Remove(ctx); err != nil && !errors.Is(err, lockbox.ErrNotFound) {
		fmt.Fprintf(env.stderr, "lockbox: removing sandbox %s: %v\n", sb.Name(), err)
	}
	_ = sb.Close()
}

// runCreate makes a detached, named sandbox: it runs until `lockbox rm`,
// whatever happens to this process.
func runCreate(ctx context.Context, env *cli, args []string) int {
	fs := newFlags("create", "lockbox create [flags] NAME IMAGE")
	var sf sandboxFlags
	sf.register(fs)
	replace := fs.Bool("replace", false, "remove a sandbox of the same name first")
	pos, err := fs.parseExact(args, 2, false)
	if err != nil {
		return fs.badUsage(env, err)
	}
	opts, err := sf.options(pos[1])
	if err != nil {
		return fail(env, "create", err, false)
	}
	opts = append(opts, lockbox.WithName(pos[0]), lockbox.WithDetached())
	if *replace {
		opts = append(opts, lockbox.WithReplace())
	}
	sb, err := lockbox.CreateSandbox(ctx, opts...)
	if err != nil {
		return fail(env, "create", err, true)
	}
	defer sb.Close()
	fmt.Fprintln(env.stdout, sb.Name())
	return exitOK
}

func runExec(ctx context.Context, env *cli, args []string) int {
	fs := newFlags("exec", "lockbox exec [flags] NAME [--] COMMAND [ARG...]")
	var pf procFlags
	pf.register(fs, false)
	pos, argv, err := fs.parse(args, 1)
	if err == nil && (len(pos) != 1 || len(argv) == 0) {
		err = usagef("a NAME and a COMMAND are needed")
	}
	if err != nil {
		return fs.badUsage(env, err)
	}
	sb, err := lockbox.GetSandbox(ctx, pos[0])
	if err != nil {
		return fail(env, "exec", err, !errors.Is(err, lockbox.ErrNotFound))
	}
	defer sb.Close()
	code, err := runProcess(ctx, env, sb, argv, pf)
	if err != nil {
		fmt.Fprintf(env.stderr, "lockbox exec: %v\n", err)
	}
	return code
}

func runList(ctx context.Context, env *cli, args []string) int {
	fs := newFlags("ls", "lockbox ls [--json] [-q]")
	asJSON := fs.Bool("json", false, "print as JSON")
	quiet := fs.Bool("q", false, "print names only")
	if _, err := fs.parseExact(args, 0, false); err != nil {
		return fs.badUsage(env, err)
	}
	list, err := lockbox.ListSandboxes(ctx)
	if err != nil {
		return fail(env, "ls", err, false)
	}
	switch {
	case *asJSON:
		if list == nil {
			list = []lockbox.SandboxInfo{}
		}
		printJSON(env.stdout, list)
	case *quiet:
		for _, s := range list {
			fmt.Fprintln(env.stdout, s.Name)
		}
	default:
		tw := tabwriter.NewWriter(env.stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "NAME\tSTATUS\tIMAGE\tCREATED\tNOT ENFORCED")
		for _, s := range list {
			var ne []string
			for _, n := range s.NotEnforced {
				ne = append(ne, n.Feature)
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", s.Name, s.Status, orDash(s.Image), s.Created.Format(time.DateTime), orDash(strings.Join(ne, ",")))
		}
		tw.Flush()
	}
	return exitOK
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func runRemove(ctx context.Context, env *cli, args []string) int {
	fs := newFlags("rm", "lockbox rm [-f] NAME...")
	force := fs.Bool("f", false, "a sandbox that does not exist is not an error")
	names, err := fs.parseExact(args, 1, true)
	if err != nil {
		return fs.badUsage(env, err)
	}
	code := exitOK
	for _, n := range names {
		err := lockbox.RemoveSandbox(ctx, n)
		if err != nil && !(*force && errors.Is(err, lockbox.ErrNotFound)) {
			code = max(code, fail(env, "rm", err, false))
			continue
		}
		fmt.Fprintln(env.stdout, n)
	}
	return code
}
