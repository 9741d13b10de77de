package abi

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
)

// versionInfo is the "version" method's reply.
type versionInfo struct {
	Version   string `json:"version"`
	ABI       uint32 `json:"abi"`
	GitCommit string `json:"git_commit"`
	Profile   string `json:"profile"`
}

func TestLibraryVersion(t *testing.T) {
	var v versionInfo
	if err := Call(context.Background(), "version", "version", nil, &v); err != nil {
		t.Fatal(err)
	}
	if v.Version == "" || v.ABI != ABIVersion || v.GitCommit == "" || v.Profile == "" || LoadedPath() == "" {
		t.Errorf("bad version info: %+v from %q", v, LoadedPath())
	}
}

func setLibraryLog(ctx context.Context, level, file string) error {
	params := struct {
		Level string `json:"level"`
		File  string `json:"file,omitempty"`
	}{level, file}
	return Call(ctx, "log.set_level", "log.set_level", params, nil)
}

func TestMalformedRequests(t *testing.T) {
	for _, req := range []string{"{", "not json", "[]", `{"params":{}}`, `{"method":7}`, "\xff\xfe", `{"method":"noop"} x`} {
		_, err := CallRaw(context.Background(), "raw", []byte(req))
		wantCode(t, err, CodeInvalidArgument, ErrInvalidArgument)
	}
	_, err := CallRaw(context.Background(), "raw", nil)
	wantCode(t, err, CodeInvalidArgument, ErrInvalidArgument)
}

func TestUnknownMethod(t *testing.T) {
	err := Call(context.Background(), "x", "no.such.method", nil, nil)
	e := wantCode(t, err, CodeUnsupported, ErrUnsupported)
	if !strings.Contains(e.Message, "no.such.method") {
		t.Errorf("message does not name the method: %q", e.Message)
	}
	// Method names that need JSON escaping travel intact.
	err = Call(context.Background(), "x", "we\"ird\n", nil, nil)
	e = wantCode(t, err, CodeUnsupported, ErrUnsupported)
	if !strings.Contains(e.Message, `we\"ird\n`) {
		t.Errorf("method name mangled: %q", e.Message)
	}
}

func TestMissingAndInvalidParams(t *testing.T) {
	ctx := context.Background()
	for _, p := range []any{nil, map[string]any{}, map[string]any{"handle": "x"}, map[string]any{"handle": -1}, map[string]any{"handle": 1, "extra": 1}} {
		wantCode(t, Call(ctx, "t", "handle.kind", p, nil), CodeInvalidArgument, ErrInvalidArgument)
	}
	// Params Go cannot encode never reach the library.
	wantCode(t, Call(ctx, "t", "noop", make(chan int), nil), CodeInvalidArgument, ErrInvalidArgument)
}

func TestResultDecoding(t *testing.T) {
	var r map[string]any
	if err := Call(context.Background(), "t", "noop", nil, &r); err != nil || r == nil || len(r) != 0 {
		t.Fatalf("noop: %v %v", r, err)
	}
	raw, err := CallRaw(context.Background(), "t", []byte(`{"method":"noop","params":{}}`))
	if err != nil || string(raw) != "{}" {
		t.Fatalf("raw noop: %q %v", raw, err)
	}
	var wrong struct{ Version int }
	wantCode(t, Call(context.Background(), "t", "version", nil, &wrong), CodeInternal, ErrInternal)
}

func TestPanicIsInternalAndProcessLives(t *testing.T) {
	requireHooks(t)
	for i := 0; i < 3; i++ {
		e := wantCode(t, Call(context.Background(), "t", "debug.panic", nil, nil), CodeInternal, ErrInternal)
		if !strings.Contains(e.Message, "debug.panic was called") {
			t.Errorf("message: %q", e.Message)
		}
	}
	if err := Call(context.Background(), "t", "noop", nil, nil); err != nil {
		t.Fatal("library dead after panic:", err)
	}
}

// The library must not write to the host's stderr/stdout, even on a panic.
// A child process (this test binary) makes the calls; we read its output.
func TestPanicWritesNothingToHostOutput(t *testing.T) {
	requireHooks(t)
	if os.Getenv("LOCKBOX_CHILD_PANIC") == "1" {
		_ = Call(context.Background(), "t", "debug.panic", nil, nil)
		_ = Call(context.Background(), "t", "no.such", nil, nil)
		_, _ = CallRaw(context.Background(), "t", []byte("{"))
		os.Exit(0)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestPanicWritesNothingToHostOutput$")
	cmd.Env = append(os.Environ(), "LOCKBOX_CHILD_PANIC=1")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("child failed: %v\n%s", err, out)
	}
	if len(out) != 0 {
		t.Fatalf("library wrote to the host's output: %q", out)
	}
}

func TestLogGoesOnlyWhereAsked(t *testing.T) {
	requireHooks(t)
	ctx := context.Background()
	path := t.TempDir() + "/lockbox.log"
	if err := setLibraryLog(ctx, "debug", path); err != nil {
		t.Fatal(err)
	}
	_ = Call(ctx, "t", "debug.panic", nil, nil)
	if err := setLibraryLog(ctx, "off", ""); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), "debug.panic was called") || !strings.Contains(string(b), "call debug.panic") {
		t.Errorf("log file lacks the records: %q", b)
	}
	wantCode(t, setLibraryLog(ctx, "loud", ""), CodeInvalidArgument, ErrInvalidArgument)
	wantCode(t, setLibraryLog(ctx, "info", t.TempDir()+"/no/such/dir/x.log"), CodeInvalidArgument, ErrInvalidArgument)
}

func Test64GoroutinesAtOnce(t *testing.T) {
	requireHooks(t)
	before := libStats(t)
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for g := 0; g < 64; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			for i := 0; i < 200; i++ {
				var err error
				switch (g + i) % 5 {
				case 0:
					err = Call(ctx, "t", "noop", nil, nil)
				case 1:
					var r struct{ Handle uint64 }
					if err = Call(ctx, "t", "handle.create", nil, &r); err == nil {
						ref := NewHandleRef(r.Handle)
						var k struct{ Kind string }
						err = ref.Use("t", func(h uint64) error {
							return Call(ctx, "t", "handle.kind", map[string]uint64{"handle": h}, &k)
						})
						if err == nil && k.Kind != "object" {
							err = &Error{Code: CodeInternal, Message: "kind " + k.Kind}
						}
						if cerr := ref.Close("t"); err == nil {
							err = cerr
						}
					}
				case 2:
					err = Call(ctx, "t", "debug.sleep", map[string]int{"ms": 0}, nil)
				case 3:
					if _, e := CallRaw(ctx, "t", []byte("{bad")); !isErr(e, ErrInvalidArgument) {
						err = e
					}
				case 4:
					var v versionInfo
					err = Call(ctx, "t", "version", nil, &v)
				}
				if err != nil {
					errs <- err
					return
				}
			}
		}(g)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	after := libStats(t)
	if after.Handles > before.Handles || after.CancelSlots != 0 {
		t.Errorf("leak: before %+v after %+v", before, after)
	}
}

func TestAppendRequest(t *testing.T) {
	got := appendRequest(nil, "a.b", json.RawMessage(`{"x":1}`))
	if string(got) != `{"method":"a.b","params":{"x":1}}` {
		t.Errorf("%s", got)
	}
	var back struct{ Method string }
	if err := json.Unmarshal(appendRequest(nil, "ü\"\\", nil), &back); err != nil || back.Method != "ü\"\\" {
		t.Errorf("escaping: %q %v", back.Method, err)
	}
}
