package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"

	"lockbox.dev/lockbox"
	"lockbox.dev/lockbox/internal/checkmode"
)

func printJSON(w io.Writer, v any) {
	e := json.NewEncoder(w)
	e.SetIndent("", "  ")
	_ = e.Encode(v)
}

// installFlags are the flags install and verify share.
type installFlags struct {
	version, dir, releaseURL, trustedKey string
	asJSON                               bool
}

func (f *installFlags) register(fs *flags) {
	fs.StringVar(&f.version, "version", lockbox.Version, "engine version (default: the one this CLI pins)")
	fs.StringVar(&f.dir, "dir", "", "install root (default $LOCKBOX_HOME, else ~/.local/share/lockbox)")
	for _, n := range []string{"release-url", "from"} {
		fs.StringVar(&f.releaseURL, n, "", "release mirror: http(s)://, file:// or a directory (default $LOCKBOX_RELEASE_URL)")
	}
	fs.StringVar(&f.trustedKey, "trusted-key", "", "also trust the ed25519 public key in this `file` (base64)")
	fs.BoolVar(&f.asJSON, "json", false, "print the result as JSON")
}

func (f *installFlags) options() ([]lockbox.InstallOption, error) {
	opts := []lockbox.InstallOption{lockbox.WithVersion(f.version)}
	if f.dir != "" {
		opts = append(opts, lockbox.WithInstallDir(f.dir))
	}
	if f.releaseURL != "" {
		opts = append(opts, lockbox.WithReleaseURL(f.releaseURL))
	}
	if f.trustedKey != "" {
		b, err := os.ReadFile(f.trustedKey)
		if err != nil {
			return nil, err
		}
		opts = append(opts, lockbox.WithTrustedKey(string(b)))
	}
	return opts, nil
}

type installJSON struct {
	Version     string `json:"version"`
	Dir         string `json:"dir"`
	LibraryPath string `json:"library"`
	HelperPath  string `json:"helper"`
	ImagesDir   string `json:"images"`
	VMAssetsDir string `json:"vm_assets,omitempty"`
	Engine      string `json:"engine_version,omitempty"`
	GitCommit   string `json:"engine_commit,omitempty"`
}

func toJSON(in *lockbox.Installation) installJSON {
	return installJSON{Version: in.Version, Dir: in.Dir, LibraryPath: in.LibraryPath, HelperPath: in.HelperPath, ImagesDir: in.ImagesDir, VMAssetsDir: in.VMAssetsDir}
}

func runInstall(ctx context.Context, env *cli, args []string) int {
	fs := newFlags("install", "lockbox install [--version V] [--dir D] [--release-url URL] [--trusted-key FILE] [--vm] [--offline] [--json]")
	var f installFlags
	f.register(fs)
	offline := fs.Bool("offline", false, "never download: succeed only if the version is installed already")
	vm := fs.Bool("vm", false, "also install the microVM guest (kernel and initramfs, in <version dir>/vm), added to an install without it")
	if _, err := fs.parseExact(args, 0, false); err != nil {
		return fs.badUsage(env, err)
	}
	opts, err := f.options()
	if err != nil {
		return fail(env, "install", err, false)
	}
	opts = append(opts, lockbox.WithOffline(*offline))
	if *vm {
		opts = append(opts, lockbox.WithVMAssets())
	}
	if !f.asJSON {
		opts = append(opts, lockbox.WithProgress(newInstallProgress(env.stderr).event))
	}
	inst, err := lockbox.EnsureInstalled(ctx, opts...)
	if err != nil {
		return fail(env, "install", err, false)
	}
	if f.asJSON {
		printJSON(env.stdout, toJSON(inst))
	} else {
		fmt.Fprintf(env.stdout, "lockbox %s installed in %s\n", inst.Version, inst.Dir)
		if inst.VMAssetsDir != "" {
			fmt.Fprintf(env.stdout, "microVM guest installed in %s\n", inst.VMAssetsDir)
		}
	}
	return exitOK
}

// runVerify checks an install without downloading: the marker, the
// signed (or pinned) manifest, every artifact's owner, mode and size; the
// VM assets' sha256s when a vm/ dir is there (or --vm requires them);
// then it loads the library, which re-hashes it against the manifest
// first, and asks it its version.
func runVerify(ctx context.Context, env *cli, args []string) int {
	fs := newFlags("verify", "lockbox verify [--version V] [--dir D] [--trusted-key FILE] [--vm] [--json]")
	var f installFlags
	f.register(fs)
	requireVM := fs.Bool("vm", false, "fail unless the microVM guest is installed too")
	if _, err := fs.parseExact(args, 0, false); err != nil {
		return fs.badUsage(env, err)
	}
	opts, err := f.options()
	if err != nil {
		return fail(env, "verify", err, false)
	}
	inst, err := lockbox.EnsureInstalled(ctx, append(opts, lockbox.WithOffline(true))...)
	if err != nil {
		return fail(env, "verify", err, false)
	}
	// An install without a vm/ dir has no VM assets, which is fine unless
	// asked; one with it must hold both, as the manifest says.
	if _, err := os.Lstat(filepath.Join(inst.Dir, "vm")); err == nil || *requireVM {
		vmInst, err := lockbox.EnsureInstalled(ctx, append(opts, lockbox.WithOffline(true), lockbox.WithVMAssets())...)
		if err != nil {
			return fail(env, "verify", fmt.Errorf("VM assets: %w (lockbox install --vm replaces them)", err), false)
		}
		inst.VMAssetsDir = vmInst.VMAssetsDir
	}
	// The install is what is verified: a development LOCKBOX_LIB must not
	// stand in for it. A plain Load takes the install EnsureInstalled just
	// checked and re-hashes the library before loading it.
	os.Unsetenv("LOCKBOX_LIB")
	if err := lockbox.Load(); err != nil {
		return fail(env, "verify", err, false)
	}
	v, err := lockbox.LibraryVersion(ctx)
	if err != nil {
		return fail(env, "verify", err, false)
	}
	out := toJSON(inst)
	out.Engine, out.GitCommit = v.Version, v.GitCommit
	if f.asJSON {
		printJSON(env.stdout, out)
	} else {
		fmt.Fprintf(env.stdout, "lockbox %s in %s: verified (engine %s, commit %s)\n", inst.Version, inst.Dir, v.Version, v.GitCommit)
		if inst.VMAssetsDir != "" {
			fmt.Fprintf(env.stdout, "microVM guest in %s: verified (sha256)\n", inst.VMAssetsDir)
		} else {
			fmt.Fprintln(env.stdout, "microVM guest: not installed (lockbox install --vm)")
		}
	}
	return exitOK
}

func runDoctor(ctx context.Context, env *cli, args []string) int {
	fs := newFlags("doctor", "lockbox doctor [--json]")
	asJSON := fs.Bool("json", false, "print the report as JSON")
	if _, err := fs.parseExact(args, 0, false); err != nil {
		return fs.badUsage(env, err)
	}
	// With the engine loaded, the microvm item has the engine's KVM boot
	// probe (bounded, ~20 s at most the first time, then cached). An engine
	// that does not load is the engine item's to report.
	if lockbox.Load() == nil {
		checkmode.UseEngine()
	}
	r, err := lockbox.Check(ctx)
	if err != nil {
		return fail(env, "doctor", err, false)
	}
	if *asJSON {
		printJSON(env.stdout, r)
	} else {
		fmt.Fprintf(env.stdout, "kernel %s, uid %d\n", r.Kernel, r.UID)
		tw := tabwriter.NewWriter(env.stdout, 0, 4, 2, ' ', 0)
		for _, it := range r.Items {
			if it.Name == "microvm" { // the verdict, then one fact a line
				parts := strings.Split(it.Found, "; ")
				fmt.Fprintf(tw, "%s\t%s\t%s\n", it.Status, it.Name, parts[0])
				for _, p := range parts[1:] {
					fmt.Fprintf(tw, "\t\t  %s\n", p)
				}
			} else {
				fmt.Fprintf(tw, "%s\t%s\t%s\n", it.Status, it.Name, it.Found)
			}
			if it.Fix != "" {
				fmt.Fprintf(tw, "\t\tfix: %s\n", it.Fix)
			}
		}
		tw.Flush()
	}
	if r.Failed() {
		return exitError
	}
	return exitOK
}

func runVersion(ctx context.Context, env *cli, args []string) int {
	fs := newFlags("version", "lockbox version [--json]")
	asJSON := fs.Bool("json", false, "print as JSON")
	if _, err := fs.parseExact(args, 0, false); err != nil {
		return fs.badUsage(env, err)
	}
	out := struct {
		CLI    string `json:"cli"`
		Engine string `json:"engine,omitempty"`
		Commit string `json:"engine_commit,omitempty"`
		Error  string `json:"engine_error,omitempty"`
	}{CLI: lockbox.Version}
	if v, err := lockbox.LibraryVersion(ctx); err == nil {
		out.Engine, out.Commit = v.Version, v.GitCommit
	} else {
		out.Error = err.Error()
	}
	if *asJSON {
		printJSON(env.stdout, out)
		return exitOK
	}
	fmt.Fprintf(env.stdout, "lockbox CLI %s\n", out.CLI)
	if out.Error != "" {
		fmt.Fprintf(env.stdout, "engine: %s\n", out.Error)
	} else {
		fmt.Fprintf(env.stdout, "engine %s (commit %s)\n", out.Engine, out.Commit)
	}
	return exitOK
}
