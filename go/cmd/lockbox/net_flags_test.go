package main

import (
	"slices"
	"strings"
	"testing"

	"lockbox.dev/lockbox"
)

func TestRuleFlags(t *testing.T) {
	for _, c := range []struct {
		in   string
		want string // NetworkRule.String()
	}{
		{"pypi.org:443", "allow domain pypi.org ports 443"},
		{"*.pythonhosted.org:443,8000-8100/tcp", "allow domain *.pythonhosted.org ports 443,8000-8100 tcp"},
		{"10.9.0.0/24", "allow cidr 10.9.0.0/24"},
		{"10.9.0.5:53/udp", "allow cidr 10.9.0.5/32 ports 53 udp"},
		{"2001:db8::/32", "allow cidr 2001:db8::/32"},
		{"[2001:db8::1]:443", "allow cidr 2001:db8::1/128 ports 443"},
		{"public-internet", "allow preset public-internet"},
		{"public-internet:443/tcp", "allow preset public-internet ports 443 tcp"},
	} {
		r, err := parseRuleFlag(lockbox.ActionAllow, c.in)
		if err != nil || r.String() != c.want {
			t.Errorf("--allow %s: %q %v, want %q", c.in, r.String(), err, c.want)
		}
	}
	for _, bad := range []string{"pypi.org:http", "pypi.org:0", "[2001:db8::1:443", "[2001:db8::1]443", "pypi.org:90-80", "bad..name"} {
		f := netFlags{allow: listFlag{bad}}
		if _, err := f.policy(); err == nil {
			t.Errorf("--allow %s: accepted", bad)
		}
	}
	f := netFlags{allow: listFlag{"pypi.org:443"}, deny: listFlag{"non-public"}}
	p, err := f.policy()
	if err != nil || len(p.Rules) != 2 || p.Rules[1].String() != "deny preset non-public" {
		t.Fatalf("control: %v %v", p, err)
	}
}

func TestNetFlagsModes(t *testing.T) {
	if opts, err := (&netFlags{}).options("outbound"); opts != nil || err != nil {
		t.Fatalf("no policy flags: %v %v", opts, err)
	}
	f := netFlags{allow: listFlag{"pypi.org:443"}}
	if _, err := f.options("outbound"); err == nil || !strings.Contains(err.Error(), "one or the other") {
		t.Fatalf("--network outbound with --allow: %v", err)
	}
	if opts, err := f.options("none"); err != nil || len(opts) != 2 {
		t.Fatalf("control: %v %v", opts, err)
	}
}

func TestSecretFlag(t *testing.T) {
	env := func(k string) (string, bool) {
		if k == "FROM_HOST" {
			return "host-value", true
		}
		return "", false
	}
	name, value, hosts, err := parseSecretFlag("API_KEY=sk@x@api.example.com,b.example.com", env)
	if err != nil || name != "API_KEY" || value != "sk@x" || !slices.Equal(hosts, []string{"api.example.com", "b.example.com"}) {
		t.Fatalf("%q %q %q %v", name, value, hosts, err)
	}
	if _, value, _, err := parseSecretFlag("FROM_HOST@api.example.com", env); err != nil || value != "host-value" {
		t.Fatalf("value from the host's env: %q %v", value, err)
	}
	for _, bad := range []string{"NOT_SET@api.example.com", "API_KEY=v", "API_KEY=v@"} {
		if _, _, _, err := parseSecretFlag(bad, env); err == nil {
			t.Errorf("--secret %s: accepted", bad)
		} else if strings.Contains(err.Error(), "=v") {
			t.Errorf("--secret %s: the error shows the value: %v", bad, err)
		}
	}
	// NAME= forgotten: the value sits where the name belongs and must not
	// be echoed back as one.
	if _, _, _, err := parseSecretFlag("sk-live-0123@api.example.com", env); err == nil {
		t.Error("--secret VALUE@HOST: accepted")
	} else if strings.Contains(err.Error(), "sk-live-0123") {
		t.Errorf("--secret VALUE@HOST: the error shows the value: %v", err)
	}
	// Control: a valid name that is unset is named in the error.
	if _, _, _, err := parseSecretFlag("NOT_SET@api.example.com", env); err == nil || !strings.Contains(err.Error(), "NOT_SET") {
		t.Errorf("an unset NAME is not named: %v", err)
	}
}
