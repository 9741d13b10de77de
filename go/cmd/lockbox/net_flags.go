package main

import (
	"fmt"
	"os"
	"strconv"
	"strings"

	"lockbox.dev/lockbox"
)

// netFlags are the network policy flags of run and create: any --allow or
// --deny makes the sandbox's network a policy (default deny).
type netFlags struct {
	allow, deny, secrets listFlag
}

func (f *netFlags) register(fs *flags) {
	fs.Var(&f.allow, "allow", "allow DEST[:PORTS][/tcp|/udp]: DEST a domain, *.suffix, an address or CIDR ([v6]:PORTS), "+
		"public-internet or non-public; PORTS 443 or 8000-8100, comma separated; repeatable (default deny)")
	fs.Var(&f.deny, "deny", "deny DEST[:PORTS][/tcp|/udp] as for --allow; wins over every allow; repeatable")
	fs.Var(&f.secrets, "secret", "NAME[=VALUE]@HOST[,HOST...]: $NAME inside is a placeholder, replaced by VALUE "+
		"(default: the host's $NAME) only in requests to HOST; needs --allow HOST; repeatable")
}

// options: none without --allow, --deny or --secret. network is the
// --network flag: a policy is a network mode of its own.
func (f *netFlags) options(network string) ([]lockbox.Option, error) {
	if len(f.allow)+len(f.deny)+len(f.secrets) == 0 {
		return nil, nil
	}
	if network != "none" {
		return nil, usagef("--network %s: --allow/--deny are a network of their own; use one or the other", network)
	}
	p, err := f.policy()
	if err != nil {
		return nil, err
	}
	// WithNetwork("") undoes the flags' default WithNetwork(NetworkNone):
	// with a policy the network field is left out.
	opts := []lockbox.Option{lockbox.WithNetwork(""), lockbox.WithNetworkPolicy(p)}
	for _, s := range f.secrets {
		name, value, hosts, err := parseSecretFlag(s, os.LookupEnv)
		if err != nil {
			return nil, err
		}
		opts = append(opts, lockbox.WithSecret(name, value, hosts...))
	}
	return opts, nil
}

func (f *netFlags) policy() (lockbox.NetworkPolicy, error) {
	var p lockbox.NetworkPolicy
	for _, set := range []struct {
		flag   string
		action lockbox.NetworkAction
		values []string
	}{{"--allow", lockbox.ActionAllow, f.allow}, {"--deny", lockbox.ActionDeny, f.deny}} {
		for _, v := range set.values {
			r, err := parseRuleFlag(set.action, v)
			if err != nil {
				return p, usagef("%s %q: %v", set.flag, v, err)
			}
			p.Rules = append(p.Rules, r)
		}
	}
	if err := p.Validate(); err != nil {
		return p, usagef("%v", err)
	}
	return p, nil
}

// parseRuleFlag reads DEST[:PORTS][/tcp|/udp]. An IPv6 DEST with ports is
// bracketed ([2001:db8::/32]:443); without brackets a DEST holding more
// than one ':' is all address.
func parseRuleFlag(action lockbox.NetworkAction, v string) (lockbox.NetworkRule, error) {
	var proto lockbox.NetworkProtocol
	if rest, ok := strings.CutSuffix(v, "/tcp"); ok {
		v, proto = rest, lockbox.TCP
	} else if rest, ok := strings.CutSuffix(v, "/udp"); ok {
		v, proto = rest, lockbox.UDP
	}
	dest, ports := v, ""
	if strings.HasPrefix(v, "[") {
		end := strings.Index(v, "]")
		tail := ""
		if end >= 0 {
			tail = v[end+1:]
		}
		if end < 0 || tail != "" && !strings.HasPrefix(tail, ":") {
			return lockbox.NetworkRule{}, fmt.Errorf("want [ADDRESS]:PORTS")
		}
		dest, ports = v[1:end], strings.TrimPrefix(tail, ":")
	} else if strings.Count(v, ":") == 1 {
		dest, ports, _ = strings.Cut(v, ":")
	}
	var r lockbox.NetworkRule
	switch p := lockbox.NetworkPreset(dest); {
	case p == lockbox.PublicInternet || p == lockbox.NonPublic:
		r = lockbox.NetworkRule{Action: action, Preset: p}
	case action == lockbox.ActionAllow:
		r = lockbox.Allow(dest)
	default:
		r = lockbox.Deny(dest)
	}
	r.Protocol = proto
	if ports == "" {
		return r, nil
	}
	for _, p := range strings.Split(ports, ",") {
		a, b, isRange := strings.Cut(p, "-")
		if !isRange {
			b = a
		}
		first, err1 := strconv.ParseUint(a, 10, 16)
		last, err2 := strconv.ParseUint(b, 10, 16)
		if err1 != nil || err2 != nil {
			return r, fmt.Errorf("port %q: want a port (443) or a range (8000-8100)", p)
		}
		r = r.PortRange(uint16(first), uint16(last))
	}
	return r, nil
}

// parseSecretFlag reads NAME[=VALUE]@HOST[,HOST...]; the value may hold
// '@' (the last one splits). Without =VALUE the value is the host's
// $NAME, so that it need not appear in a command line (ps shows those).
func parseSecretFlag(v string, lookup func(string) (string, bool)) (name, value string, hosts []string, err error) {
	i := strings.LastIndex(v, "@")
	if i < 0 || i == len(v)-1 {
		return "", "", nil, usagef("--secret: want NAME[=VALUE]@HOST[,HOST...]")
	}
	spec, hostList := v[:i], v[i+1:]
	name, value, hasValue := strings.Cut(spec, "=")
	if !envName(name) {
		// Not echoed: "--secret sk-live@host" (NAME= forgotten) puts the
		// value where the name belongs.
		return "", "", nil, usagef("--secret: want NAME[=VALUE]@HOST[,HOST...] with NAME an environment variable name (what was given is not shown: it may be a value)")
	}
	if !hasValue {
		var ok bool
		if value, ok = lookup(name); !ok {
			return "", "", nil, usagef("--secret %s: no =VALUE and $%s is not set here", name, name)
		}
	}
	// The value is never part of an error message.
	return name, value, strings.Split(hostList, ","), nil
}

// envName reports whether n is a portable environment variable name.
func envName(n string) bool {
	if n == "" || n[0] >= '0' && n[0] <= '9' {
		return false
	}
	for _, c := range n {
		if !(c == '_' || c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9') {
			return false
		}
	}
	return true
}
