package lockbox

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
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
			target = filepath.Join("..", "target")
		}
		if p := filepath.Join(target, "lockbox-test-hooks", "liblockbox.so"); fileExists(p) {
			os.Setenv("LOCKBOX_LIB", p)
		}
	}
	os.Exit(m.Run())
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

func newObject(t testing.TB) uint64 {
	t.Helper()
	var r struct{ Handle uint64 }
	if err := call(context.Background(), "t", "handle.create", nil, &r); err != nil {
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
	if err := call(context.Background(), "t", "debug.stats", nil, &s); err != nil {
		t.Fatal(err)
	}
	return s
}

func wantCode(t testing.TB, err error, code Code, sentinel error) *Error {
	t.Helper()
	if err == nil {
		t.Fatalf("want %s error, got nil", code)
	}
	var e *Error
	if !asError(err, &e) {
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

func sha256Hex(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}
