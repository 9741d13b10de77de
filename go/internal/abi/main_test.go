package abi

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
)

// The tests load the real library named by LOCKBOX_LIB (make test-go points
// it at the test-hooks build). Without it they look for that build where
// the Makefile puts it.
func TestMain(m *testing.M) {
	if os.Getenv("LOCKBOX_LIB") == "" {
		target := os.Getenv("CARGO_TARGET_DIR")
		if target == "" {
			target = filepath.Join("..", "..", "..", "target")
		}
		p := filepath.Join(target, "lockbox-test-hooks", "liblockbox.so")
		if _, err := os.Stat(p); err == nil {
			os.Setenv("LOCKBOX_LIB", p)
		}
	}
	Configure(Host{SDKVersion: testSDKVersion})
	os.Exit(m.Run())
}

// testSDKVersion stands in for lockbox.Version, which this package cannot
// import; the ABI mismatch message must carry whatever the host says.
const testSDKVersion = "0.0.0-abi-test"

// requireHooks fails unless the loaded library has the debug.* methods.
func requireHooks(t testing.TB) {
	t.Helper()
	var v struct {
		TestHooks bool `json:"test_hooks"`
	}
	if err := Call(context.Background(), "t", "version", nil, &v); err != nil {
		t.Fatalf("%v (run `make test-go`: it builds the test-hooks library and sets LOCKBOX_LIB)", err)
	}
	if !v.TestHooks {
		t.Fatalf("LOCKBOX_LIB=%s is not a test-hooks build (make ffi-test-lib)", os.Getenv("LOCKBOX_LIB"))
	}
}

func newObject(t testing.TB) uint64 {
	t.Helper()
	var r struct{ Handle uint64 }
	if err := Call(context.Background(), "t", "handle.create", nil, &r); err != nil {
		t.Fatal(err)
	}
	return r.Handle
}

func newPipe(t testing.TB, capacity int) uint64 {
	t.Helper()
	var r struct{ Handle uint64 }
	if err := Call(context.Background(), "t", "debug.pipe", map[string]int{"capacity": capacity}, &r); err != nil {
		t.Fatal(err)
	}
	return r.Handle
}

type stats struct {
	Handles     int `json:"handles"`
	CancelSlots int `json:"cancel_slots"`
	Completions int `json:"completions"` // submitted calls not yet taken
}

func libStats(t testing.TB) stats {
	t.Helper()
	var s stats
	if err := Call(context.Background(), "t", "debug.stats", nil, &s); err != nil {
		t.Fatal(err)
	}
	return s
}

func isErr(err, target error) bool { return errors.Is(err, target) }

func wantCode(t testing.TB, err error, code Code, sentinel error) *Error {
	t.Helper()
	if err == nil {
		t.Fatalf("want %s error, got nil", code)
	}
	var e *Error
	if !errors.As(err, &e) {
		t.Fatalf("want *Error, got %T: %v", err, err)
	}
	if e.Code != code {
		t.Fatalf("want code %s, got %s: %v", code, e.Code, err)
	}
	if sentinel != nil && !isErr(err, sentinel) {
		t.Fatalf("errors.Is(%v, %v) = false", err, sentinel)
	}
	return e
}
