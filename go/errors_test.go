package lockbox

import (
	"context"
	"errors"
	"io/fs"
	"testing"

	"lockbox.dev/lockbox/internal/abi"
	"lockbox.dev/lockbox/internal/wire"
)

func asError(err error, e **Error) bool { return errors.As(err, e) }
func isErr(err, target error) bool      { return errors.Is(err, target) }

func TestSentinelsMatchTheirCodeOnly(t *testing.T) {
	for c, sentinel := range abi.Sentinels {
		code := Code(c)
		err := error(&Error{Op: "op", Code: code, Message: "m"})
		if !errors.Is(err, sentinel) {
			t.Errorf("%s: errors.Is(err, %v) = false", code, sentinel)
		}
		for other, s := range abi.Sentinels {
			if Code(other) == code || (code == CodeNotInstalled && s == ErrLibraryNotLoaded) {
				continue
			}
			if errors.Is(err, s) {
				t.Errorf("%s also matches %v", code, s)
			}
		}
	}
	if !errors.Is(&Error{Code: CodeNotInstalled}, ErrLibraryNotLoaded) {
		t.Error("not installed must also be ErrLibraryNotLoaded")
	}
}

func TestContextErrorsWrapContext(t *testing.T) {
	canceled := ctxError("op", context.Canceled)
	if !errors.Is(canceled, context.Canceled) || !errors.Is(canceled, ErrCanceled) {
		t.Errorf("canceled: %v", canceled)
	}
	expired := ctxError("op", context.DeadlineExceeded)
	if !errors.Is(expired, context.DeadlineExceeded) || !errors.Is(expired, ErrTimeout) || errors.Is(expired, ErrCanceled) {
		t.Errorf("expired: %v", expired)
	}
}

func TestErrorStringNamesOpAndCode(t *testing.T) {
	e := &Error{Op: "sandbox.create", Code: CodeNotFound, Message: `no image "x"`}
	if got, want := e.Error(), `lockbox: sandbox.create: no image "x" (not_found)`; got != want {
		t.Errorf("got %q want %q", got, want)
	}
}

func TestLibraryErrorsAreTyped(t *testing.T) {
	ctx := context.Background()
	err := callMethod(ctx, "my.op", wire.HandleKind, &wire.HandleParams{Handle: 1<<56 | 1<<55}, nil)
	e := wantCode(t, err, CodeNotFound, ErrNotFound)
	if e.Op != "my.op" || e.Message == "" {
		t.Errorf("op/message not set: %+v", e)
	}
	var target *Error
	if !errors.As(err, &target) || target != e {
		t.Error("errors.As")
	}
	// A closed handleRef fails before reaching the library.
	r := newHandleRef(newObject(t))
	if err := r.close("t"); err != nil {
		t.Fatal(err)
	}
	err = r.use("t", func(uint64) error { t.Fatal("fn ran after close"); return nil })
	wantCode(t, err, CodeNotFound, ErrNotFound)
	if !errors.Is(err, fs.ErrClosed) {
		t.Errorf("want fs.ErrClosed: %v", err)
	}
}
