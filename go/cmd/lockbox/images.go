package main

import (
	"context"
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	"lockbox.dev/lockbox"
)

var imageCommands = map[string]func(context.Context, *cli, []string) int{
	"pull":    runImagePull,
	"import":  runImageImport,
	"ls":      runImageList,
	"inspect": runImageInspect,
	"rm":      runImageRemove,
	"prune":   runImagePrune,
}

func runImages(ctx context.Context, env *cli, args []string) int {
	const use = "Usage: lockbox images pull|import|ls|inspect|rm|prune [flags] [args]"
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" {
		if len(args) == 0 {
			fmt.Fprintln(env.stderr, use)
			return exitUsage
		}
		fmt.Fprintln(env.stdout, use)
		return exitOK
	}
	sub, ok := imageCommands[args[0]]
	if !ok {
		fmt.Fprintf(env.stderr, "lockbox images: unknown command %q\n%s\n", args[0], use)
		return exitUsage
	}
	return sub(ctx, env, args[1:])
}

func printImage(env *cli, img *lockbox.ImageInfo, asJSON bool) {
	if asJSON {
		printJSON(env.stdout, img)
		return
	}
	fmt.Fprintf(env.stdout, "%s %s\n", img.Digest, strings.Join(img.Names, ","))
}

func runImagePull(ctx context.Context, env *cli, args []string) int {
	fs := newFlags("images pull", "lockbox images pull [--platform OS/ARCH] [--plain-http] [--json] REFERENCE")
	platform := fs.String("platform", "", "os/arch to pick from a multi-platform image (default linux and this machine's)")
	plain := fs.Bool("plain-http", false, "talk to the registry over plain HTTP (never a fallback from HTTPS)")
	asJSON := fs.Bool("json", false, "print the image as JSON")
	pos, err := fs.parseExact(args, 1, false)
	if err != nil {
		return fs.badUsage(env, err)
	}
	var opts []lockbox.PullOption
	if *platform != "" {
		opts = append(opts, lockbox.WithPlatform(*platform))
	}
	if *plain {
		opts = append(opts, lockbox.WithPlainHTTP())
	}
	stop := spinner(env.stderr, "pulling "+pos[0])
	img, err := lockbox.Images().Pull(ctx, pos[0], opts...)
	stop()
	if err != nil {
		return fail(env, "images pull", err, false)
	}
	printImage(env, img, *asJSON)
	return exitOK
}

func runImageImport(ctx context.Context, env *cli, args []string) int {
	fs := newFlags("images import", "lockbox images import [--name NAME] [--ref REF] [--json] PATH")
	name := fs.String("name", "", "record the image under this name (letters, digits, '_', '.', '-')")
	ref := fs.String("ref", "", "pick this image from an archive or layout holding several (repo:tag)")
	asJSON := fs.Bool("json", false, "print the image as JSON")
	pos, err := fs.parseExact(args, 1, false)
	if err != nil {
		return fs.badUsage(env, err)
	}
	var opts []lockbox.ImportOption
	if *name != "" {
		opts = append(opts, lockbox.WithImageName(*name))
	}
	if *ref != "" {
		opts = append(opts, lockbox.WithImageReference(*ref))
	}
	stop := spinner(env.stderr, "importing "+pos[0])
	img, err := lockbox.Images().Import(ctx, pos[0], opts...)
	stop()
	if err != nil {
		return fail(env, "images import", err, false)
	}
	printImage(env, img, *asJSON)
	return exitOK
}

func runImageList(ctx context.Context, env *cli, args []string) int {
	fs := newFlags("images ls", "lockbox images ls [--json] [-q]")
	asJSON := fs.Bool("json", false, "print as JSON")
	quiet := fs.Bool("q", false, "print digests only")
	if _, err := fs.parseExact(args, 0, false); err != nil {
		return fs.badUsage(env, err)
	}
	list, err := lockbox.Images().List(ctx)
	if err != nil {
		return fail(env, "images ls", err, false)
	}
	switch {
	case *asJSON:
		if list == nil {
			list = []lockbox.ImageInfo{}
		}
		printJSON(env.stdout, list)
	case *quiet:
		for _, i := range list {
			fmt.Fprintln(env.stdout, i.Digest)
		}
	default:
		tw := tabwriter.NewWriter(env.stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "NAMES\tDIGEST\tSIZE\tCREATED")
		for _, i := range list {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", orDash(strings.Join(i.Names, ",")), shortDigest(i.Digest),
				humanBytes(i.Stats.Bytes), i.Created.Format(time.DateTime))
		}
		tw.Flush()
	}
	return exitOK
}

func shortDigest(d string) string {
	if len(d) > len("sha256:")+12 {
		return d[:len("sha256:")+12]
	}
	return d
}

func humanBytes(n uint64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1fGiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1fMiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1fKiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%dB", n)
}

func runImageInspect(ctx context.Context, env *cli, args []string) int {
	fs := newFlags("images inspect", "lockbox images inspect NAME|DIGEST")
	pos, err := fs.parseExact(args, 1, false)
	if err != nil {
		return fs.badUsage(env, err)
	}
	img, err := lockbox.Images().Inspect(ctx, pos[0])
	if err != nil {
		return fail(env, "images inspect", err, false)
	}
	printJSON(env.stdout, img)
	return exitOK
}

func runImageRemove(ctx context.Context, env *cli, args []string) int {
	fs := newFlags("images rm", "lockbox images rm NAME|DIGEST...")
	names, err := fs.parseExact(args, 1, true)
	if err != nil {
		return fs.badUsage(env, err)
	}
	code := exitOK
	for _, n := range names {
		if err := lockbox.Images().Remove(ctx, n); err != nil {
			code = max(code, fail(env, "images rm", err, false))
			continue
		}
		fmt.Fprintln(env.stdout, n)
	}
	return code
}

func runImagePrune(ctx context.Context, env *cli, args []string) int {
	fs := newFlags("images prune", "lockbox images prune [--json]")
	asJSON := fs.Bool("json", false, "print the report as JSON")
	if _, err := fs.parseExact(args, 0, false); err != nil {
		return fs.badUsage(env, err)
	}
	r, err := lockbox.Images().Prune(ctx)
	if err != nil {
		return fail(env, "images prune", err, false)
	}
	if *asJSON {
		printJSON(env.stdout, r)
		return exitOK
	}
	for _, d := range r.Removed {
		fmt.Fprintln(env.stdout, "removed", d)
	}
	fmt.Fprintf(env.stdout, "%d removed, %d unnamed kept in use, %d leftover unpacks cleared\n", len(r.Removed), len(r.KeptInUse), r.RemovedTempDirs)
	return exitOK
}
