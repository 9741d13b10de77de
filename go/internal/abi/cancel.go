package abi

// Cancellation: every call whose context can end gets a fresh cancel id.
// When the context ends, context.AfterFunc calls lockbox_cancel(id); the
// library stops the call (or, if the call has not started or has already
// ended, leaves a tombstone). After the call we wait for a cancel that
// began to finish and release the id, so no tombstone outlives its call.
// Contexts that can never end (Done() == nil) cost nothing: id 0.

import (
	"context"
	"sync/atomic"

	"github.com/ebitengine/purego"
)

var lastCancelID atomic.Uint64

type canceler struct {
	cid   uint64
	stop  func() bool
	fired chan struct{}
}

func (c *canceler) id() uint64 {
	if c == nil {
		return 0
	}
	return c.cid
}

// arm registers the cancel for one call; nil when ctx cannot end.
func (l *library) arm(ctx context.Context) *canceler {
	if ctx.Done() == nil {
		return nil
	}
	c := &canceler{cid: lastCancelID.Add(1), fired: make(chan struct{})}
	c.stop = context.AfterFunc(ctx, func() {
		purego.SyscallN(l.fnCancel, uintptr(c.cid))
		close(c.fired)
	})
	return c
}

// disarm ends the call's cancel registration.
func (l *library) disarm(c *canceler) {
	if c == nil {
		return
	}
	if c.stop() {
		return // the cancel never ran: nothing to release
	}
	<-c.fired
	purego.SyscallN(l.fnCancelRelease, uintptr(c.cid))
}
