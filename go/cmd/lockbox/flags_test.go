package main

import (
	"errors"
	"flag"
	"slices"
	"testing"
)

// run's shape: flags up to IMAGE, then the command untouched, with or
// without "--"; a flag after IMAGE belongs to the command.
func TestParseStopsAfterWantedPositionals(t *testing.T) {
	for _, c := range []struct {
		args      []string
		pos, rest []string
		env       []string
	}{
		{[]string{"-e", "A=1", "base", "ls", "-l"}, []string{"base"}, []string{"ls", "-l"}, []string{"A=1"}},
		{[]string{"base", "--", "sh", "-c", "x"}, []string{"base"}, []string{"sh", "-c", "x"}, nil},
		{[]string{"base", "-e", "B=2"}, []string{"base"}, []string{"-e", "B=2"}, nil},
		{[]string{"-e=--", "base"}, []string{"base"}, nil, []string{"--"}},
		{[]string{"--", "base", "true"}, nil, []string{"base", "true"}, nil},
	} {
		fs := newFlags("run", "run")
		var env listFlag
		fs.Var(&env, "e", "")
		pos, rest, err := fs.parse(c.args, 1)
		if err != nil || !slices.Equal(pos, c.pos) || !slices.Equal(rest, c.rest) || !slices.Equal(env, c.env) {
			t.Errorf("%q: pos %q rest %q env %q err %v; want %q %q %q", c.args, pos, rest, env, err, c.pos, c.rest, c.env)
		}
	}
}

// create's shape: flags anywhere among its two positionals.
func TestParseExactInterspersed(t *testing.T) {
	fs := newFlags("create", "create NAME IMAGE")
	m := fs.String("m", "", "")
	pos, err := fs.parseExact([]string{"box", "-m", "64m", "base"}, 2, false)
	if err != nil || !slices.Equal(pos, []string{"box", "base"}) || *m != "64m" {
		t.Fatalf("%q %q %v", pos, *m, err)
	}
	var ue *usageError
	if _, err := newFlags("create", "create NAME IMAGE").parseExact([]string{"box"}, 2, false); !errors.As(err, &ue) {
		t.Errorf("one positional of two: %v", err)
	}
	if _, err := newFlags("create", "create NAME IMAGE").parseExact([]string{"a", "b", "c"}, 2, false); !errors.As(err, &ue) {
		t.Errorf("three positionals of two: %v", err)
	}
	if _, _, err := newFlags("x", "x").parse([]string{"-h"}, 0); !errors.Is(err, flag.ErrHelp) {
		t.Errorf("-h: %v", err)
	}
	if _, _, err := newFlags("x", "x").parse([]string{"--nope"}, 0); !errors.As(err, &ue) {
		t.Errorf("unknown flag: %v", err)
	}
}

func TestParseMiB(t *testing.T) {
	for in, want := range map[string]int64{"512": 512, "512m": 512, "512M": 512, "2g": 2048, "1024k": 1, "1025k": 2, "1b": 1, "0": 0} {
		if got, err := parseMiB(in); err != nil || got != want {
			t.Errorf("%q: %d %v, want %d", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "m", "-1", "1x", "lots", "1.5g"} {
		if got, err := parseMiB(bad); err == nil {
			t.Errorf("%q: %d, want an error", bad, got)
		}
	}
}

func TestSplitSandboxPath(t *testing.T) {
	for in, want := range map[string][3]string{
		"box:/tmp/f": {"box", "/tmp/f", "y"},
		"./a:b":      {"", "", ""},
		"/abs:x":     {"", "", ""},
		"plain":      {"", "", ""},
		"box:":       {"box", "", ""},
	} {
		n, p, ok := splitSandboxPath(in)
		if (want[2] == "y") != ok || (ok && (n != want[0] || p != want[1])) {
			t.Errorf("%q: %q %q %v", in, n, p, ok)
		}
	}
}
