package lockbox

import (
	"context"
	"errors"
	"testing"
)

// Configurations a pool cannot serve are refused before any sandbox is
// made (no library call happens: these run without one).
func TestNewPoolRefusesBadConfigurations(t *testing.T) {
	ctx := context.Background()
	for name, c := range map[string]struct {
		size int
		opts []Option
	}{
		"size 0":       {0, nil},
		"size too big": {MaxPoolSize + 1, nil},
		"named":        {2, []Option{WithName("one")}},
		"replace":      {2, []Option{WithReplace()}},
	} {
		p, err := NewPool(ctx, c.size, c.opts...)
		if p != nil || !errors.Is(err, ErrInvalidArgument) {
			t.Errorf("%s: NewPool = %v, %v; want ErrInvalidArgument", name, p, err)
		}
	}
}

func TestPoolClosedErrorIsUnavailable(t *testing.T) {
	if !errors.Is(ErrPoolClosed, ErrUnavailable) {
		t.Fatal("ErrPoolClosed should match ErrUnavailable")
	}
}
