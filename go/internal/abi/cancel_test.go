package abi

import (
	"context"
	"errors"
	"testing"
	"time"
	"unsafe"

	"github.com/ebitengine/purego"
)

func sleepCall(ctx context.Context, ms int) error {
	return Call(ctx, "sleep", "debug.sleep", map[string]int{"ms": ms}, nil)
}

func TestCancelBeforeCall(t *testing.T) {
	requireHooks(t)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	err := sleepCall(ctx, 600_000)
	wantCode(t, err, CodeCanceled, ErrCanceled)
	if !errors.Is(err, context.Canceled) {
		t.Errorf("want context.Canceled: %v", err)
	}
}

func TestCancelDuringCall(t *testing.T) {
	requireHooks(t)
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(50*time.Millisecond, cancel)
	err := sleepCall(ctx, 600_000)
	wantCode(t, err, CodeCanceled, ErrCanceled)
	if !errors.Is(err, context.Canceled) {
		t.Errorf("want context.Canceled: %v", err)
	}
	if s := libStats(t); s.CancelSlots != 0 {
		t.Errorf("cancel slots left: %+v", s)
	}
}

func TestDeadlineDuringCall(t *testing.T) {
	requireHooks(t)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	err := sleepCall(ctx, 600_000)
	wantCode(t, err, CodeTimeout, ErrTimeout)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("want context.DeadlineExceeded: %v", err)
	}
}

func TestCancelAfterCall(t *testing.T) {
	requireHooks(t)
	ctx, cancel := context.WithCancel(context.Background())
	if err := sleepCall(ctx, 1); err != nil {
		t.Fatal(err)
	}
	cancel()
	if s := libStats(t); s.CancelSlots != 0 {
		t.Errorf("a cancel after the call left state behind: %+v", s)
	}
}

// Cancels racing the start of the call: some land before lockbox_call (a
// tombstone), some during. Every call must come back canceled, and no
// tombstone may be left.
func TestCancelRacingCallStart(t *testing.T) {
	requireHooks(t)
	for i := 0; i < 300; i++ {
		ctx, cancel := context.WithCancel(context.Background())
		go cancel()
		err := sleepCall(ctx, 600_000)
		if !errors.Is(err, context.Canceled) || !errors.Is(err, ErrCanceled) {
			t.Fatalf("iteration %d: %v", i, err)
		}
	}
	if s := libStats(t); s.CancelSlots != 0 {
		t.Errorf("tombstones left: %+v", s)
	}
}

// The library's own contract, driven directly: a cancel for an id that has
// no call yet makes the call with that id fail at once, until released.
func TestLibraryTombstone(t *testing.T) {
	requireHooks(t)
	l, err := lib()
	if err != nil {
		t.Fatal(err)
	}
	id := lastCancelID.Add(1)
	purego.SyscallN(l.fnCancel, uintptr(id))
	req := []byte(`{"method":"debug.sleep","params":{"ms":600000}}`)
	o := new(outParams)
	st, _, _ := purego.SyscallN(l.fnCall, uintptr(unsafe.Pointer(&req[0])), uintptr(len(req)), uintptr(id),
		uintptr(unsafe.Pointer(&o.ptr)), uintptr(unsafe.Pointer(&o.len)))
	err = l.errorFrom(context.Background(), "t", o, st)
	wantCode(t, err, CodeCanceled, ErrCanceled)
	if errors.Is(err, context.Canceled) {
		t.Error("no context was canceled here")
	}
	purego.SyscallN(l.fnCancelRelease, uintptr(id))
	if s := libStats(t); s.CancelSlots != 0 {
		t.Errorf("release left the tombstone: %+v", s)
	}
}
