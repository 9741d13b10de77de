package abi

import (
	"bytes"
	"context"
	"errors"
	"io"
	"testing"
	"time"
)

func TestStreamWriteReadEOF(t *testing.T) {
	requireHooks(t)
	ctx := context.Background()
	p := newPipe(t, 64)
	defer CloseHandle("t", p)
	for _, s := range []string{"hello, ", "world"} {
		if n, err := StreamWrite(ctx, "t", p, []byte(s)); err != nil || n != len(s) {
			t.Fatalf("write %q: %d %v", s, n, err)
		}
	}
	if err := StreamCloseWrite(ctx, "t", p); err != nil {
		t.Fatal(err)
	}
	var got []byte
	buf := make([]byte, 5)
	for {
		n, err := StreamRead(ctx, "t", p, buf)
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, buf[:n]...)
	}
	if string(got) != "hello, world" {
		t.Fatalf("got %q", got)
	}
	if _, err := StreamRead(ctx, "t", p, buf); err != io.EOF {
		t.Fatalf("EOF must stay EOF: %v", err)
	}
	_, err := StreamWrite(ctx, "t", p, []byte("late"))
	wantCode(t, err, CodeInvalidArgument, ErrInvalidArgument)
	if err := CloseHandle("t", p); err != nil {
		t.Fatal(err)
	}
	_, err = StreamRead(ctx, "t", p, buf)
	wantCode(t, err, CodeNotFound, ErrNotFound)
}

func TestStreamBulkBothDirectionsAtOnce(t *testing.T) {
	requireHooks(t)
	ctx := context.Background()
	p := newPipe(t, 4096)
	defer CloseHandle("t", p)
	data := make([]byte, 4<<20)
	for i := range data {
		data[i] = byte(i * 31 % 253)
	}
	werr := make(chan error, 1)
	go func() {
		for off := 0; off < len(data); off += 100_000 {
			end := min(off+100_000, len(data))
			if _, err := StreamWrite(ctx, "t", p, data[off:end]); err != nil {
				werr <- err
				return
			}
		}
		werr <- StreamCloseWrite(ctx, "t", p)
	}()
	var got bytes.Buffer
	buf := make([]byte, 32<<10)
	for {
		n, err := StreamRead(ctx, "t", p, buf)
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		got.Write(buf[:n])
	}
	if err := <-werr; err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got.Bytes(), data) {
		t.Fatalf("got %d bytes, want %d (or content differs)", got.Len(), len(data))
	}
}

func TestStreamReadCanceled(t *testing.T) {
	requireHooks(t)
	p := newPipe(t, 16)
	defer CloseHandle("t", p)
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(50*time.Millisecond, cancel)
	_, err := StreamRead(ctx, "t", p, make([]byte, 16))
	wantCode(t, err, CodeCanceled, ErrCanceled)
	if !errors.Is(err, context.Canceled) {
		t.Errorf("want context.Canceled: %v", err)
	}
	// The stream still works after a canceled read.
	bg := context.Background()
	if _, err := StreamWrite(bg, "t", p, []byte("ok")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 16)
	if n, err := StreamRead(bg, "t", p, buf); err != nil || string(buf[:n]) != "ok" {
		t.Fatalf("%q %v", buf[:n], err)
	}
}

func TestStreamWriteCanceledUnderBackpressure(t *testing.T) {
	requireHooks(t)
	p := newPipe(t, 16)
	defer CloseHandle("t", p)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	// Nobody reads: the write blocks on the full pipe until the deadline.
	_, err := StreamWrite(ctx, "t", p, make([]byte, 1024))
	wantCode(t, err, CodeTimeout, ErrTimeout)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("want DeadlineExceeded: %v", err)
	}
}
