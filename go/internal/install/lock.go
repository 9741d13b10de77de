package install

import (
	"context"
	"errors"
	"os"
	"syscall"
	"time"
)

// lockFile takes the cross-process install lock (flock, the same one the
// Rust CLI takes). The kernel drops it when a holder dies, so a killed
// install never blocks the next. Waiting polls so ctx is honoured.
func lockFile(ctx context.Context, path string) (unlock func(), err error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|noFollow, 0o600)
	if err != nil {
		return nil, err
	}
	if fi, err := f.Stat(); err != nil || checkNode(path, fi, false, true) != nil {
		f.Close()
		if err == nil {
			err = checkNode(path, fi, false, true)
		}
		return nil, err
	}
	wait := time.Millisecond
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			return func() { f.Close() }, nil
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) && !errors.Is(err, syscall.EINTR) {
			f.Close()
			return nil, err
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, ctx.Err()
		case <-time.After(wait):
		}
		if wait < 50*time.Millisecond {
			wait *= 2
		}
	}
}
