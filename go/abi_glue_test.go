package lockbox

import (
	"context"
	"errors"
	"io/fs"
	"testing"

	"lockbox.dev/lockbox/internal/abi"
	"lockbox.dev/lockbox/internal/install"
)

// Every code the call path can return is a public Code with the same
// sentinel, and fromABI keeps op, code, message and cause.
func TestABIErrorsBecomePublicErrors(t *testing.T) {
	public := []Code{CodeNotFound, CodeAlreadyExists, CodeInvalidArgument, CodeTimeout,
		CodeCanceled, CodeUnsupported, CodePermissionDenied, CodeUnavailable,
		CodeResourceExhausted, CodeInternal, CodeNotInstalled, CodeLibraryNotLoaded}
	if len(abi.Sentinels) != len(public) {
		t.Fatalf("abi has %d codes, lockbox %d", len(abi.Sentinels), len(public))
	}
	for _, c := range public {
		s, ok := abi.Sentinels[abi.Code(c)]
		if !ok || !errors.Is(&Error{Code: c}, s) {
			t.Errorf("%s: no abi code, or lockbox's sentinel is not abi's", c)
		}
	}
	for code, s := range abi.Sentinels {
		err := fromABI(&abi.Error{Op: "op", Code: code, Message: "m", Cause: fs.ErrClosed})
		var e *Error
		if !errors.As(err, &e) || e.Op != "op" || e.Code != Code(code) || e.Message != "m" {
			t.Fatalf("%s: %#v", code, err)
		}
		if !errors.Is(err, s) || !errors.Is(err, fs.ErrClosed) {
			t.Errorf("%s: %v lost its sentinel or cause", code, err)
		}
	}
	if fromABI(nil) != nil {
		t.Fatal("nil became an error")
	}
}

// Through the glue, a library error is a *Error; the control: the same
// call straight through internal/abi is not, so the test would see a
// path that skipped the conversion.
func TestLibraryErrorsCrossTheGlueAsPublicErrors(t *testing.T) {
	ctx := context.Background()
	var e *Error
	if err := call(ctx, "op", "no.such.method", nil, nil); !errors.As(err, &e) || e.Code != CodeUnsupported {
		t.Fatalf("through the glue: %T %v", err, err)
	}
	raw := abi.Call(ctx, "op", "no.such.method", nil, nil)
	if errors.As(raw, &e) {
		t.Fatal("control: an *abi.Error passed for a *Error")
	}
	if !errors.Is(raw, ErrUnsupported) {
		t.Fatalf("an unconverted error still matches the sentinel: %v", raw)
	}
}

// The installer reports the steps the public InstallEventKind constants
// name.
func TestInstallEventKindsMatchTheInstaller(t *testing.T) {
	for got, want := range map[string]InstallEventKind{
		install.AlreadyInstalled: InstallAlreadyInstalled,
		install.ManifestVerified: InstallManifestVerified,
		install.Downloading:      InstallDownloading,
		install.Retrying:         InstallRetrying,
		install.ArtifactVerified: InstallArtifactVerified,
		install.Complete:         InstallComplete,
	} {
		if InstallEventKind(got) != want {
			t.Errorf("installer says %q, lockbox %q", got, want)
		}
	}
}
