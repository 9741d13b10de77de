package abi

import (
	"context"
	"encoding/json"
	"errors"
	"testing"
	"time"
)

// FuzzCall throws arbitrary request bytes at lockbox_call. Every answer
// must be a JSON result or a typed error with a known code; nothing may
// crash or hang (a deadline bounds methods that wait). The seed corpus in
// testdata/fuzz/FuzzCall runs in plain `go test`.
func FuzzCall(f *testing.F) {
	for _, s := range []string{
		`{"method":"noop"}`, `{"method":"version","params":null}`, `{"method":"handle.kind","params":{"handle":1}}`,
		`{"method":"debug.sleep","params":{"ms":1}}`, `{"method":"debug.panic"}`, `{"method":"debug.pipe","params":{"capacity":0}}`,
		`{"method":"","params":[]}`, `{}`, `[`, "\x00", `{"method":"handle.create","params":{"x":1}}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, req []byte) {
		ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
		defer cancel()
		out, err := CallRaw(ctx, "fuzz", req)
		if err == nil {
			if !json.Valid(out) {
				t.Fatalf("result is not JSON: %q", out)
			}
			var h struct{ Handle uint64 }
			if json.Unmarshal(out, &h) == nil && h.Handle != 0 {
				_ = CloseHandle("fuzz", h.Handle)
			}
			return
		}
		var e *Error
		if !errors.As(err, &e) {
			t.Fatalf("untyped error %T: %v", err, err)
		}
		if _, known := Sentinels[e.Code]; !known || e.Message == "" {
			t.Fatalf("unknown code or empty message: %+v", e)
		}
	})
}
