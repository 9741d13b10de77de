package lockbox

import (
	"context"
	"runtime"
	"testing"
	"time"
)

// goroutineDump is every goroutine's stack, for a failure message.
func goroutineDump() string {
	buf := make([]byte, 1<<20)
	return string(buf[:runtime.Stack(buf, true)])
}

// ExecStreams whose events are never read end all their goroutines once
// their context is canceled or the sandbox closed (or both). The control:
// the count did rise by several per stream while they ran. A reader that
// comes late still gets the exit, last, and the channel closed.
func TestReliabilityUnreadExecStreamsLeaveNoGoroutines(t *testing.T) {
	for _, mode := range []string{"cancel+close", "cancel", "close"} {
		t.Run(mode, func(t *testing.T) { unreadExecStreams(t, mode) })
	}
}

func unreadExecStreams(t *testing.T, mode string) {
	const n = 20
	sb := newSandbox(t)
	// The SDK keeps one permanent goroutine (the completion reader),
	// started by the first library call: the baseline is taken after one,
	// and after earlier tests' finalizers have run.
	if _, err := sb.Info(context.Background()); err != nil {
		t.Fatal(err)
	}
	runtime.GC()
	time.Sleep(100 * time.Millisecond)
	base := runtime.NumGoroutine()

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	streams := make([]*ExecStream, n)
	for i := range streams {
		es, err := sb.ExecStream(ctx, []string{"sh", "-c", "yes lockbox-unread-output"})
		if err != nil {
			t.Fatal(err)
		}
		streams[i] = es
	}
	// Wait until the event buffers have filled and every pump is stuck
	// delivering to a reader that never comes.
	var peak int
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		full := 0
		for _, es := range streams {
			if len(es.events) == cap(es.events) {
				full++
			}
		}
		peak = runtime.NumGoroutine()
		if full == n {
			break
		}
	}
	if peak < base+2*n {
		t.Fatalf("control: %d goroutines with %d streams running, baseline %d", peak, n, base)
	}
	if mode != "close" {
		cancel()
	}
	if mode != "cancel" {
		if err := sb.Close(); err != nil {
			t.Fatal(err)
		}
	}
	const slack = 2
	var now int
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		now = runtime.NumGoroutine()
		if now <= base+slack {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("goroutines: baseline %d, peak %d, %d 10s after %s\n%s", base, peak, now, mode, goroutineDump())
		}
	}
	t.Logf("goroutines: baseline %d, peak %d with %d unread streams, %d after %s", base, peak, n, now, mode)
	for i, es := range streams {
		var last ExecEvent
		for ev := range es.Events() {
			last = ev
		}
		if last.Kind != EventExit || last.Err == nil && last.Exit.Signal == 0 {
			t.Fatalf("stream %d: last event %+v, want the exit of a killed process", i, last)
		}
		if i == 0 {
			t.Logf("late reader's exit: %+v", last)
		}
	}
}
