package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"lockbox.dev/lockbox"
)

// sandboxFlags are the flags that shape a new sandbox (run and create).
type sandboxFlags struct {
	volumes, env, publish, tmpfs, labels listFlag
	memory, network, workdir, user       string
	hostname, name                       string
	cpus                                 float64
	pids, disk                           int64
	net                                  netFlags // net_flags.go
}

func (f *sandboxFlags) register(fs *flags) {
	for _, n := range []string{"v", "volume"} {
		fs.Var(&f.volumes, n, "mount HOST:GUEST[:ro] (HOST a path; a bare name is a named volume); repeatable")
	}
	for _, n := range []string{"e", "env"} {
		fs.Var(&f.env, n, "set KEY=VALUE (KEY alone: take the host's value); repeatable")
	}
	for _, n := range []string{"m", "memory"} {
		fs.StringVar(&f.memory, n, "", "memory limit: MiB, or with a unit (512m, 2g)")
	}
	fs.Float64Var(&f.cpus, "cpus", 0, "CPU limit, in CPUs (0.5 = half of one)")
	fs.Int64Var(&f.pids, "pids", 0, "process limit")
	fs.Int64Var(&f.disk, "disk", -1, "writable layer budget in MiB (default 1024)")
	fs.StringVar(&f.network, "network", "none", "none (loopback only) or outbound (the public internet, never the host or private ranges)")
	for _, n := range []string{"p", "publish"} {
		fs.Var(&f.publish, n, "publish HOSTPORT:GUESTPORT on the host's 127.0.0.1 (needs --network outbound or a policy, --allow/--deny); repeatable")
	}
	for _, n := range []string{"w", "workdir"} {
		fs.StringVar(&f.workdir, n, "", "working directory inside the sandbox")
	}
	for _, n := range []string{"u", "user"} {
		fs.StringVar(&f.user, n, "", "user: uid, uid:gid or a name from the image")
	}
	fs.StringVar(&f.hostname, "hostname", "", "hostname inside the sandbox")
	fs.Var(&f.tmpfs, "tmpfs", "mount a tmpfs at PATH[:SIZE_MIB]; repeatable")
	fs.Var(&f.labels, "label", "KEY=VALUE label; repeatable")
	f.net.register(fs)
}

// options turns the flags and IMAGE into SDK options. IMAGE is an image
// name or digest, or a directory to use as the root (starting with / or .).
func (f *sandboxFlags) options(image string) ([]lockbox.Option, error) {
	var opts []lockbox.Option
	if strings.HasPrefix(image, "/") || strings.HasPrefix(image, ".") {
		abs, err := filepath.Abs(image)
		if err != nil {
			return nil, err
		}
		opts = append(opts, lockbox.WithRootfs(abs))
	} else {
		opts = append(opts, lockbox.WithImage(image))
	}
	for _, v := range f.volumes {
		parts := strings.Split(v, ":")
		ro := false
		if len(parts) == 3 && (parts[2] == "ro" || parts[2] == "rw") {
			ro, parts = parts[2] == "ro", parts[:2]
		}
		if len(parts) != 2 || parts[0] == "" || parts[1] == "" {
			return nil, usagef("--volume %q: want HOST:GUEST[:ro]", v)
		}
		if strings.HasPrefix(parts[0], "/") || strings.HasPrefix(parts[0], ".") {
			abs, err := filepath.Abs(parts[0])
			if err != nil {
				return nil, err
			}
			opts = append(opts, lockbox.WithVolume(abs, parts[1], ro))
		} else {
			opts = append(opts, lockbox.WithNamedVolume(parts[0], parts[1], ro))
		}
	}
	kv, err := envPairs(f.env)
	if err != nil {
		return nil, err
	}
	for _, p := range kv {
		opts = append(opts, lockbox.WithEnv(p[0], p[1]))
	}
	if f.memory != "" {
		mib, err := parseMiB(f.memory)
		if err != nil {
			return nil, usagef("--memory %q: %v", f.memory, err)
		}
		opts = append(opts, lockbox.WithMemory(mib))
	}
	if f.cpus != 0 {
		opts = append(opts, lockbox.WithCPUs(f.cpus))
	}
	if f.pids != 0 {
		opts = append(opts, lockbox.WithPids(f.pids))
	}
	if f.disk >= 0 {
		opts = append(opts, lockbox.WithDisk(f.disk))
	}
	switch f.network {
	case "none":
		opts = append(opts, lockbox.WithNetwork(lockbox.NetworkNone))
	case "outbound":
		opts = append(opts, lockbox.WithNetwork(lockbox.NetworkOutbound))
	default:
		return nil, usagef("--network %q: want none or outbound", f.network)
	}
	netOpts, err := f.net.options(f.network)
	if err != nil {
		return nil, err
	}
	opts = append(opts, netOpts...)
	for _, p := range f.publish {
		h, g, ok := strings.Cut(p, ":")
		hp, err1 := strconv.Atoi(h)
		gp, err2 := strconv.Atoi(g)
		if !ok || err1 != nil || err2 != nil {
			return nil, usagef("--publish %q: want HOSTPORT:GUESTPORT", p)
		}
		opts = append(opts, lockbox.WithPort(hp, gp))
	}
	if f.workdir != "" {
		opts = append(opts, lockbox.WithWorkdir(f.workdir))
	}
	if f.user != "" {
		opts = append(opts, lockbox.WithUser(f.user))
	}
	if f.hostname != "" {
		opts = append(opts, lockbox.WithHostname(f.hostname))
	}
	for _, t := range f.tmpfs {
		path, size, hasSize := strings.Cut(t, ":")
		var mib int64
		if hasSize {
			if mib, err = parseMiB(size); err != nil {
				return nil, usagef("--tmpfs %q: %v", t, err)
			}
		}
		opts = append(opts, lockbox.WithTmpfs(path, mib))
	}
	if len(f.labels) > 0 {
		m := map[string]string{}
		for _, l := range f.labels {
			k, v, ok := strings.Cut(l, "=")
			if !ok || k == "" {
				return nil, usagef("--label %q: want KEY=VALUE", l)
			}
			m[k] = v
		}
		opts = append(opts, lockbox.WithLabels(m))
	}
	return opts, nil
}

// envPairs reads -e values: KEY=VALUE, or KEY alone for the host's value
// (skipped when the host has none, as docker does).
func envPairs(list []string) ([][2]string, error) {
	var out [][2]string
	for _, e := range list {
		k, v, ok := strings.Cut(e, "=")
		if k == "" {
			return nil, usagef("--env %q: want KEY=VALUE or KEY", e)
		}
		if !ok {
			hv, set := os.LookupEnv(k)
			if !set {
				continue
			}
			v = hv
		}
		out = append(out, [2]string{k, v})
	}
	return out, nil
}

// parseMiB reads a size in MiB: a number, or a number with b, k, m or g.
func parseMiB(s string) (int64, error) {
	if s == "" {
		return 0, fmt.Errorf("empty size")
	}
	num, unit := s, byte('m')
	if last := s[len(s)-1]; last < '0' || last > '9' {
		num, unit = s[:len(s)-1], last|0x20
	}
	n, err := strconv.ParseInt(num, 10, 64)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("not a size")
	}
	switch unit {
	case 'b':
		return (n + 1<<20 - 1) >> 20, nil
	case 'k':
		return (n + 1023) >> 10, nil
	case 'm':
		return n, nil
	case 'g':
		return n << 10, nil
	}
	return 0, fmt.Errorf("unknown unit %q (b, k, m or g)", unit)
}
