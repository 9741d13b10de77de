package lockbox

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"
)

// MaxPoolSize is the most idle sandboxes one Pool keeps.
const MaxPoolSize = 256

// ErrPoolClosed is returned by Get after Close. It matches
// ErrUnavailable too.
var ErrPoolClosed = &Error{Op: "pool.get", Code: CodeUnavailable, Message: "the pool is closed"}

// Pool keeps up to size sandboxes of one configuration created and idle,
// so Get hands one out without waiting for a create. Taken sandboxes are
// the caller's (Remove or Close them as usual); the pool refills in the
// background. Its memory is bounded by size idle sandboxes (each about
// 1 MiB of host memory idle, and at most its WithMemory limit). Safe for
// concurrent use.
type Pool struct {
	opts  []Option
	ready chan *Sandbox
	done  chan struct{}
	fill  context.CancelFunc
	wg    sync.WaitGroup

	mu      sync.Mutex
	closed  bool
	lastErr error
}

// NewPool starts a pool of size (1..MaxPoolSize) sandboxes made with
// opts. The first one is made before NewPool returns, within ctx, so a bad
// configuration fails here; the rest are made in the background, two at a
// time. WithName is refused (every sandbox needs its own name).
func NewPool(ctx context.Context, size int, opts ...Option) (*Pool, error) {
	if size < 1 || size > MaxPoolSize {
		return nil, &Error{Op: "pool.new", Code: CodeInvalidArgument,
			Message: fmt.Sprintf("pool size must be 1..%d, not %d", MaxPoolSize, size)}
	}
	var cfg sandboxConfig
	for _, o := range opts {
		o(&cfg)
	}
	if cfg.Name != "" {
		return nil, &Error{Op: "pool.new", Code: CodeInvalidArgument,
			Message: "WithName cannot be used in a pool: each sandbox gets its own name"}
	}
	if cfg.Replace {
		return nil, &Error{Op: "pool.new", Code: CodeInvalidArgument,
			Message: "WithReplace cannot be used in a pool"}
	}
	first, err := CreateSandbox(ctx, opts...)
	if err != nil {
		return nil, err
	}
	fillCtx, cancel := context.WithCancel(context.Background())
	p := &Pool{
		opts:  append([]Option(nil), opts...),
		ready: make(chan *Sandbox, size),
		done:  make(chan struct{}),
		fill:  cancel,
	}
	p.ready <- first
	for i := 0; i < min(size, 2); i++ {
		p.wg.Add(1)
		go p.filler(fillCtx)
	}
	return p, nil
}

// filler makes sandboxes while there is room. A failing create is retried
// with a growing pause (up to 2s), so a broken host is not hammered; Get
// still creates on demand and reports the real error.
func (p *Pool) filler(ctx context.Context) {
	defer p.wg.Done()
	backoff := 10 * time.Millisecond
	for {
		select {
		case <-p.done:
			return
		default:
		}
		sb, err := CreateSandbox(ctx, p.opts...)
		if err != nil {
			p.mu.Lock()
			p.lastErr = err
			p.mu.Unlock()
			select {
			case <-p.done:
				return
			case <-time.After(backoff):
			}
			backoff = min(backoff*2, 2*time.Second)
			continue
		}
		backoff = 10 * time.Millisecond
		select {
		case p.ready <- sb:
		case <-p.done:
			_ = sb.Remove(context.Background())
			return
		}
	}
}

// Get returns a ready sandbox, taking an idle one when there is one and
// otherwise creating one within ctx. After Close it fails with
// ErrPoolClosed.
func (p *Pool) Get(ctx context.Context) (*Sandbox, error) {
	if err := ctx.Err(); err != nil {
		return nil, ctxError("pool.get", err)
	}
	select {
	case <-p.done:
		return nil, ErrPoolClosed
	default:
	}
	select {
	case sb := <-p.ready:
		return sb, nil
	default:
	}
	return CreateSandbox(ctx, p.opts...)
}

// Ready is how many idle sandboxes the pool holds now.
func (p *Pool) Ready() int { return len(p.ready) }

// Err is the last error a background create met (nil if none yet).
func (p *Pool) Err() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.lastErr
}

// Close stops refilling and removes every idle sandbox; sandboxes already
// taken are not touched. Safe to call twice.
func (p *Pool) Close() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	close(p.done)
	p.mu.Unlock()
	p.fill()
	p.wg.Wait()
	var errs []error
	for {
		select {
		case sb := <-p.ready:
			if err := sb.Remove(context.Background()); err != nil && !errors.Is(err, ErrNotFound) {
				errs = append(errs, err)
			}
		default:
			return errors.Join(errs...)
		}
	}
}
