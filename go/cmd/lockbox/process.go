package main

import (
	"context"
	"errors"
	"os"
	"os/signal"
	"syscall"
	"time"

	"golang.org/x/term"

	"lockbox.dev/lockbox"
)

// procFlags shape one command run in a sandbox (run and exec).
type procFlags struct {
	interactive, tty bool
	env              listFlag
	workdir, user    string
	timeout          time.Duration
}

func (f *procFlags) register(fs *flags, sandboxToo bool) {
	fs.BoolVar(&f.interactive, "i", false, "keep stdin open and send it to the command")
	fs.BoolVar(&f.tty, "t", false, "give the command a terminal (stderr then merges into stdout)")
	fs.BoolFunc("it", "-i and -t together", func(string) error { f.interactive, f.tty = true, true; return nil })
	fs.BoolFunc("ti", "-i and -t together", func(string) error { f.interactive, f.tty = true, true; return nil })
	fs.DurationVar(&f.timeout, "timeout", 0, "kill the command after this long (exit code 124)")
	if sandboxToo { // run: -e, -w, -u shape the sandbox and with it the command
		return
	}
	for _, n := range []string{"e", "env"} {
		fs.Var(&f.env, n, "set KEY=VALUE for the command (KEY alone: the host's value); repeatable")
	}
	for _, n := range []string{"w", "workdir"} {
		fs.StringVar(&f.workdir, n, "", "working directory for the command")
	}
	for _, n := range []string{"u", "user"} {
		fs.StringVar(&f.user, n, "", "user for the command: uid, uid:gid or a name")
	}
}

// termSize is the host terminal's size, from stdout or stdin, else 24x80.
func termSize(env *cli) (rows, cols uint16) {
	for _, f := range []*os.File{asFile(env.stdout), env.stdin} {
		if f == nil {
			continue
		}
		if w, h, err := term.GetSize(int(f.Fd())); err == nil && w > 0 && h > 0 {
			return uint16(min(h, 65535)), uint16(min(w, 65535))
		}
	}
	return 24, 80
}

func asFile(w any) *os.File {
	f, _ := w.(*os.File)
	return f
}

// runProcess runs argv in sb with the host's stdio and returns the exit
// code to leave with. With -t the command gets a terminal: the host's
// terminal goes to raw mode (with -i) until it ends, and SIGWINCH becomes
// a resize. Without -t, SIGINT, SIGTERM, SIGHUP and SIGQUIT are passed
// on to the command (a third SIGINT kills it), as docker run does.
func runProcess(ctx context.Context, env *cli, sb *lockbox.Sandbox, argv []string, f procFlags) (int, error) {
	var opts []lockbox.ExecOption
	kv, err := envPairs(f.env)
	if err != nil {
		return exitUsage, err
	}
	for _, p := range kv {
		opts = append(opts, lockbox.WithExecEnv(p[0], p[1]))
	}
	if f.workdir != "" {
		opts = append(opts, lockbox.WithExecDir(f.workdir))
	}
	if f.user != "" {
		opts = append(opts, lockbox.WithExecUser(f.user))
	}
	if f.timeout > 0 {
		opts = append(opts, lockbox.WithExecTimeout(f.timeout))
	}
	if f.tty {
		opts = append(opts, lockbox.WithTTY(termSize(env)))
	}
	if f.interactive {
		opts = append(opts, lockbox.WithStdin(env.stdin))
	}
	restore := func() {}
	if f.tty && f.interactive && term.IsTerminal(int(env.stdin.Fd())) {
		fd := int(env.stdin.Fd())
		old, err := term.MakeRaw(fd)
		if err != nil {
			return exitEngine, err
		}
		restore = func() { _ = term.Restore(fd, old) }
	}
	defer restore()

	sigs := make(chan os.Signal, 8)
	signal.Notify(sigs, syscall.SIGWINCH, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGQUIT)
	defer signal.Stop(sigs)

	// Signals are passed on, not turned into a canceled context: the
	// command decides what an interrupt means.
	es, err := sb.ExecStream(context.WithoutCancel(ctx), argv, opts...)
	switch {
	case errors.Is(err, lockbox.ErrNotFound):
		return exitNotFound, err
	case errors.Is(err, lockbox.ErrPermission):
		return exitCannotRun, err
	case err != nil:
		return exitEngine, err
	}
	if !f.interactive {
		_ = es.Stdin().Close()
	}
	interrupts := 0
	for {
		select {
		case s := <-sigs:
			switch s {
			case syscall.SIGWINCH:
				if f.tty {
					_ = es.Resize(termSize(env))
				}
			case syscall.SIGINT:
				if interrupts++; interrupts >= 3 {
					_ = es.Signal(syscall.SIGKILL)
				} else {
					_ = es.Signal(syscall.SIGINT)
				}
			default:
				_ = es.Signal(s.(syscall.Signal))
			}
		case ev, ok := <-es.Events():
			if !ok {
				return exitEngine, errStreamEnded
			}
			switch ev.Kind {
			case lockbox.EventStdout:
				_, _ = env.stdout.Write(ev.Data)
			case lockbox.EventStderr:
				_, _ = env.stderr.Write(ev.Data)
			case lockbox.EventExit:
				return exitCode(ev.Exit, ev.Err)
			}
		}
	}
}

var errStreamEnded = &lockbox.Error{Op: "exec", Code: lockbox.CodeInternal, Message: "the output stream ended without an exit status"}

func exitCode(st lockbox.ExitStatus, err error) (int, error) {
	switch {
	case st.TimedOut:
		return exitTimeout, nil
	case st.Signal != 0:
		return 128 + st.Signal, nil
	case err != nil:
		return exitEngine, err
	}
	return st.ExitCode, nil
}
