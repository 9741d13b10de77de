package abi

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// wantLoadError checks a loader failure: typed, names the path, says why.
func wantLoadError(t *testing.T, err error, path, why string) {
	t.Helper()
	e := wantCode(t, err, CodeLibraryNotLoaded, ErrLibraryNotLoaded)
	if !strings.Contains(e.Message, path) || !strings.Contains(e.Message, why) {
		t.Fatalf("message %q should name %s and say %q", e.Message, path, why)
	}
}

// headerOf returns the first 4 KiB of the real library, to patch.
func headerOf(t *testing.T) []byte {
	f, err := os.Open(os.Getenv("LOCKBOX_LIB"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, 4096)
	if _, err := f.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

func writeFile(t *testing.T, name string, b []byte) string {
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, b, 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestLoadMissingFile(t *testing.T) {
	p := filepath.Join(t.TempDir(), "liblockbox.so")
	_, err := openLibrary(p)
	wantLoadError(t, err, p, "file does not exist")
	if !errors.Is(err, os.ErrNotExist) {
		t.Error("want os.ErrNotExist as the cause")
	}
}

func TestLoadNotALibrary(t *testing.T) {
	p := writeFile(t, "liblockbox.so", []byte("#!/bin/sh\necho I am text\n"))
	_, err := openLibrary(p)
	wantLoadError(t, err, p, "not a shared library")
	empty := writeFile(t, "empty.so", nil)
	_, err = openLibrary(empty)
	wantLoadError(t, err, empty, "not a shared library")
}

func TestLoadWrongArchitecture(t *testing.T) {
	arm := headerOf(t)
	arm[18], arm[19] = 183, 0 // EM_AARCH64
	p := writeFile(t, "arm64.so", arm)
	_, err := openLibrary(p)
	wantLoadError(t, err, p, "wrong architecture: the library is 64-bit arm64")

	b32 := headerOf(t)
	b32[4], b32[18], b32[19] = 1, 3, 0 // ELFCLASS32, EM_386
	p = writeFile(t, "i386.so", b32)
	_, err = openLibrary(p)
	wantLoadError(t, err, p, "wrong architecture: the library is 32-bit 386")
}

func TestLoadExecutableIsNotALibrary(t *testing.T) {
	exe := headerOf(t)
	exe[16], exe[17] = 2, 0 // ET_EXEC
	p := writeFile(t, "exe.so", exe)
	_, err := openLibrary(p)
	wantLoadError(t, err, p, "not a shared library (ELF type 2)")
}

// buildCLib compiles a tiny shared library with gcc at test time.
func buildCLib(t *testing.T, name, src string) string {
	t.Helper()
	if _, err := exec.LookPath("gcc"); err != nil {
		t.Skip("gcc not installed: cannot build the fixture library")
	}
	dir := t.TempDir()
	c := filepath.Join(dir, name+".c")
	so := filepath.Join(dir, name+".so")
	if err := os.WriteFile(c, []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("gcc", "-shared", "-fPIC", "-o", so, c).CombinedOutput(); err != nil {
		t.Fatalf("gcc: %v\n%s", err, out)
	}
	return so
}

func TestLoadMissingSymbol(t *testing.T) {
	so := buildCLib(t, "libother", "int other_function(void) { return 1; }\n")
	_, err := openLibrary(so)
	wantLoadError(t, err, so, "missing symbol lockbox_abi_version")
}

// A real library with every export, speaking another ABI version.
func TestLoadABIMismatch(t *testing.T) {
	src := `
#include <stdint.h>
#include <stddef.h>
uint32_t lockbox_abi_version(void) { return 99; }
int32_t lockbox_call(const uint8_t *r, size_t n, uint64_t c, uint8_t **o, size_t *ol) { return 2; }
void lockbox_free(uint8_t *p, size_t n) {}
int32_t lockbox_cancel(uint64_t id) { return 0; }
void lockbox_cancel_release(uint64_t id) {}
int32_t lockbox_close(uint64_t h, uint8_t **e, size_t *el) { return 2; }
int32_t lockbox_stream_read(uint64_t h, uint8_t *b, size_t c, uint64_t id, size_t *n, uint8_t **e, size_t *el) { return 2; }
int32_t lockbox_stream_write(uint64_t h, const uint8_t *b, size_t c, uint64_t id, size_t *n, uint8_t **e, size_t *el) { return 2; }
int32_t lockbox_stream_close_write(uint64_t h, uint64_t id, uint8_t **e, size_t *el) { return 2; }
`
	so := buildCLib(t, "liblockbox-abi99", src)
	_, err := openLibrary(so)
	wantLoadError(t, err, so, "ABI mismatch: the library speaks ABI 99, this SDK (lockbox "+testSDKVersion+") needs ABI 1")
}

// A real library that needs a glibc symbol version this system's glibc
// lacks (GLIBC_9.99), as a library built on a much newer distribution
// would: linked against a stub libc.so.6 that defines that version.
func TestLoadNeedsNewerGlibc(t *testing.T) {
	if _, err := exec.LookPath("gcc"); err != nil {
		t.Skip("gcc not installed: cannot build the fixture library")
	}
	dir := t.TempDir()
	stubDir := filepath.Join(dir, "stub")
	files := map[string]string{
		"stub.c": "void lockbox_fake_sym(void) {}\n",
		"v.map":  "GLIBC_9.99 { global: lockbox_fake_sym; };\n",
		"lib.c":  "extern void lockbox_fake_sym(void);\nvoid f(void) { lockbox_fake_sym(); }\n",
	}
	for name, body := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Mkdir(stubDir, 0o755); err != nil {
		t.Fatal(err)
	}
	so := filepath.Join(dir, "liblockbox.so")
	for _, args := range [][]string{
		{"-shared", "-fPIC", "-nostdlib", "-Wl,-soname,libc.so.6", "-Wl,--version-script=" + filepath.Join(dir, "v.map"),
			"-o", filepath.Join(stubDir, "libc.so.6"), filepath.Join(dir, "stub.c")},
		{"-shared", "-fPIC", "-o", so, filepath.Join(dir, "lib.c"), "-L" + stubDir, "-l:libc.so.6"},
	} {
		if out, err := exec.Command("gcc", args...).CombinedOutput(); err != nil {
			t.Fatalf("gcc %v: %v\n%s", args, err, out)
		}
	}
	_, err := openLibrary(so)
	wantLoadError(t, err, so, "needs a newer glibc than this system has")
	if !strings.Contains(err.Error(), "GLIBC_9.99") {
		t.Errorf("the error should name the missing version: %v", err)
	}
}

func TestDescribeDlopenError(t *testing.T) {
	msg := "/x/liblockbox.so: /lib/x86_64-linux-gnu/libc.so.6: version `GLIBC_2.99' not found (required by /x/liblockbox.so)"
	if got := describeDlopenError(msg); !strings.HasPrefix(got, "needs a newer glibc than this system has") {
		t.Errorf("glibc: %q", got)
	}
	if got := describeDlopenError("/x: wrong ELF class: ELFCLASS32"); !strings.HasPrefix(got, "built for a different architecture") {
		t.Errorf("class: %q", got)
	}
}

func TestLoadTwice(t *testing.T) {
	if err := Load(os.Getenv("LOCKBOX_LIB")); err != nil {
		t.Fatalf("same library again: %v", err)
	}
	if err := Load(""); err != nil {
		t.Fatal(err)
	}
	other := buildCLib(t, "libother", "int f(void) { return 0; }\n")
	wantCode(t, Load(other), CodeInvalidArgument, ErrInvalidArgument)
}

// withHost runs the rest of a test with the loader's host replaced and no
// library loaded, and restores both.
func withHost(t *testing.T, h Host) {
	t.Setenv("LOCKBOX_LIB", "")
	saved, savedHost := loaded.Swap(nil), host.Load()
	Configure(h)
	t.Cleanup(func() { loaded.Store(saved); host.Store(savedHost) })
}

func TestNotInstalled(t *testing.T) {
	withHost(t, Host{SDKVersion: testSDKVersion, Installed: func() (string, error) { return "", nil }})
	err := Call(context.Background(), "sandbox.create", "noop", nil, nil)
	e := wantCode(t, err, CodeNotInstalled, ErrNotInstalled)
	if !errors.Is(err, ErrLibraryNotLoaded) || !strings.HasPrefix(e.Op, "sandbox.create") {
		t.Errorf("%+v", e)
	}
}

// An install the host refuses to load (a swapped library, an unsafe tree)
// is a load error naming why, and never reaches dlopen; the control: the
// same host pointing at the real library loads it.
func TestInstalledLibraryRefusedByHost(t *testing.T) {
	real := os.Getenv("LOCKBOX_LIB")
	refusal := errors.New("sha256 differs from the manifest")
	withHost(t, Host{SDKVersion: testSDKVersion, Installed: func() (string, error) { return "", refusal }})
	err := Call(context.Background(), "version", "noop", nil, nil)
	e := wantCode(t, err, CodeLibraryNotLoaded, ErrLibraryNotLoaded)
	if !errors.Is(err, refusal) || !strings.Contains(e.Message, "refusing to load it") {
		t.Errorf("%+v", e)
	}
	if LoadedPath() != "" {
		t.Fatal("a refused install was loaded")
	}
	Configure(Host{SDKVersion: testSDKVersion, Installed: func() (string, error) { return real, nil }})
	if err := Call(context.Background(), "version", "noop", nil, nil); err != nil {
		t.Fatalf("control: the installed library did not load: %v", err)
	}
}
