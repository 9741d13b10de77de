package main

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"lockbox.dev/lockbox"
)

// splitSandboxPath reads NAME:PATH. A host path holding ':' is written
// with a directory in front (./a:b), as with docker cp.
func splitSandboxPath(s string) (name, path string, ok bool) {
	if strings.HasPrefix(s, "/") || strings.HasPrefix(s, ".") {
		return "", "", false
	}
	name, path, ok = strings.Cut(s, ":")
	return name, path, ok && name != "" && path != ""
}

// runCopy copies between a named sandbox and the host, in either
// direction. Nothing is followed through a symlink on either side (the
// SDK's CopyFromHost and CopyToHost rules), and a copy out of the sandbox
// is capped (--max-bytes).
func runCopy(ctx context.Context, env *cli, args []string) int {
	fs := newFlags("cp", "lockbox cp [--max-bytes N] NAME:PATH HOSTPATH | HOSTPATH NAME:PATH")
	maxBytes := fs.Int64("max-bytes", 0, "stop a copy out of the sandbox past this many bytes (default: the SDK's DefaultCopyLimit)")
	pos, err := fs.parseExact(args, 2, false)
	if err != nil {
		return fs.badUsage(env, err)
	}
	srcName, srcPath, fromSandbox := splitSandboxPath(pos[0])
	dstName, dstPath, toSandbox := splitSandboxPath(pos[1])
	if fromSandbox == toSandbox {
		return fs.badUsage(env, usagef("exactly one of SRC and DST must be NAME:PATH"))
	}
	name := srcName
	if toSandbox {
		name = dstName
	}
	sb, err := lockbox.GetSandbox(ctx, name)
	if err != nil {
		return fail(env, "cp", err, !errors.Is(err, lockbox.ErrNotFound))
	}
	defer sb.Close()
	if toSandbox {
		err = sb.FS().CopyFromHost(ctx, pos[0], dstPath)
	} else {
		var opts []lockbox.FileOption
		if *maxBytes > 0 {
			opts = append(opts, lockbox.WithMaxBytes(*maxBytes))
		}
		err = sb.FS().CopyToHost(ctx, srcPath, pos[1], opts...)
	}
	if err != nil {
		return fail(env, "cp", err, false)
	}
	fmt.Fprintf(env.stderr, "copied %s to %s\n", pos[0], pos[1])
	return exitOK
}
