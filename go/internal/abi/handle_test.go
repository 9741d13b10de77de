package abi

import (
	"context"
	"runtime"
	"sync"
	"testing"
	"time"
)

func kindOf(h uint64) (string, error) {
	var r struct{ Kind string }
	err := Call(context.Background(), "t", "handle.kind", map[string]uint64{"handle": h}, &r)
	return r.Kind, err
}

func TestHandleLifecycle(t *testing.T) {
	h := newObject(t)
	if h>>56 != 4 {
		t.Fatalf("object kind not in the top byte: %#x", h)
	}
	if k, err := kindOf(h); err != nil || k != "object" {
		t.Fatalf("kind %q %v", k, err)
	}
	if err := CloseHandle("t", h); err != nil {
		t.Fatal(err)
	}
	if err := CloseHandle("t", h); err != nil {
		t.Fatal("double close:", err)
	}
	_, err := kindOf(h)
	wantCode(t, err, CodeNotFound, ErrNotFound)
}

func TestForgedAndWrongKindHandles(t *testing.T) {
	forged := uint64(4)<<56 | (1<<56 - 1)
	_, err := kindOf(forged)
	wantCode(t, err, CodeNotFound, ErrNotFound)
	wantCode(t, CloseHandle("t", forged), CodeNotFound, ErrNotFound)
	wantCode(t, CloseHandle("t", 0), CodeNotFound, ErrNotFound)
	wantCode(t, CloseHandle("t", 0xee<<56|3), CodeNotFound, ErrNotFound)

	obj := newObject(t)
	defer CloseHandle("t", obj)
	_, err = StreamRead(context.Background(), "t", obj, make([]byte, 8))
	wantCode(t, err, CodeInvalidArgument, ErrInvalidArgument)
	_, err = StreamWrite(context.Background(), "t", obj, []byte("x"))
	wantCode(t, err, CodeInvalidArgument, ErrInvalidArgument)
	asStream := obj&(1<<56-1) | 3<<56
	_, err = StreamRead(context.Background(), "t", asStream, make([]byte, 8))
	wantCode(t, err, CodeNotFound, ErrNotFound)
}

func TestHandleRefCloseIsIdempotentAcrossGoroutines(t *testing.T) {
	r := NewHandleRef(newObject(t))
	var wg sync.WaitGroup
	for i := 0; i < 32; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := r.Close("t"); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	_, err := kindOf(r.ID())
	wantCode(t, err, CodeNotFound, ErrNotFound)
}

func TestFinalizerReleasesDroppedHandle(t *testing.T) {
	h := func() uint64 {
		r := NewHandleRef(newObject(t))
		return r.ID()
	}()
	for i := 0; i < 100; i++ {
		runtime.GC()
		if _, err := kindOf(h); isErr(err, ErrNotFound) {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("handle %#x still open after the owner was dropped", h)
}
