package install

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

const (
	fetchAttempts = 5
	fetchBufSize  = 256 << 10
	// writebackEvery: how much a download writes before it asks the
	// kernel to start flushing it (see startWriteback).
	writebackEvery = 2 << 20
)

// Defaults of WithStallTimeout, WithMinDownloadRate and WithInstallTimeout.
// A server that drips bytes defeats a plain "no byte for N s" timeout, so
// each stall window must bring a minimum number of bytes.
const (
	defaultStallTimeout   = 30 * time.Second
	defaultMinRate        = 1024 // bytes per second, averaged over a stall window
	defaultInstallTimeout = time.Hour
)

// installHTTP does not ask for compression: Range offsets and sizes are
// about the bytes on the server, and transparent gunzip would hide them.
var installHTTP = &http.Client{Transport: func() http.RoundTripper {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.DisableCompression = true
	return t
}()}

// releaseSource is where a release comes from: an HTTP(S) mirror or a
// local directory. Layout: <base>/<version>/<path>.
type releaseSource struct {
	url string // http(s) base without trailing slash; "" for a directory
	dir string
	// An attempt that receives fewer than minBytes in a stall window is
	// abandoned and retried (with Range), whatever the caller's ctx says.
	stall    time.Duration
	minBytes int64
}

func parseReleaseSource(spec string) (*releaseSource, error) {
	switch {
	case strings.HasPrefix(spec, "http://"), strings.HasPrefix(spec, "https://"):
		return &releaseSource{url: strings.TrimRight(spec, "/"), stall: defaultStallTimeout, minBytes: 1}, nil
	case strings.HasPrefix(spec, "file://"):
		return &releaseSource{dir: strings.TrimPrefix(spec, "file://"), stall: defaultStallTimeout, minBytes: 1}, nil
	case strings.Contains(spec, "://"):
		return nil, fmt.Errorf("lockbox: release URL %q: want http(s)://, file:// or a directory", spec)
	default:
		return &releaseSource{dir: spec, stall: defaultStallTimeout, minBytes: 1}, nil
	}
}

func (s *releaseSource) describe(rel string) string {
	if s.url != "" {
		return s.url + "/" + rel
	}
	return filepath.Join(s.dir, rel)
}

// attemptError says whether a failed attempt is worth another try.
type attemptError struct {
	err   error
	retry bool
}

func (e *attemptError) Error() string { return e.err.Error() }
func (e *attemptError) Unwrap() error { return e.err }

func retryable(err error) error { return &attemptError{err, true} }

func backoff(attempt int) time.Duration {
	d := 100 * time.Millisecond << min(attempt, 5)
	return min(d, 2*time.Second)
}

// withRetries runs attempt until it succeeds, fails for good, the attempts
// run out, or ctx ends (its error is returned as is, so errors.Is works).
func withRetries(ctx context.Context, what string, onRetry func(int, error), attempt func(context.Context) error) error {
	var last error
	for i := 0; i < fetchAttempts; i++ {
		if i > 0 {
			onRetry(i, last)
			select {
			case <-ctx.Done():
				return fmt.Errorf("lockbox: %s: %w", what, ctx.Err())
			case <-time.After(backoff(i)):
			}
		}
		err := attempt(ctx)
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return fmt.Errorf("lockbox: %s: %w", what, ctx.Err())
		}
		var ae *attemptError
		if !errors.As(err, &ae) || !ae.retry {
			return err
		}
		last = ae.err
	}
	return fmt.Errorf("%w: %v (after %d attempts)", ErrDownload, last, fetchAttempts)
}

func statusError(code int, what string) error {
	switch {
	case code == http.StatusNotFound || code == http.StatusGone:
		return fmt.Errorf("%w: %s (HTTP %d)", ErrReleaseNotFound, what, code)
	case code >= 500 || code == http.StatusRequestTimeout || code == http.StatusTooManyRequests:
		return retryable(fmt.Errorf("%s: HTTP %d", what, code))
	default:
		return fmt.Errorf("%w: %s: HTTP %d", ErrDownload, what, code)
	}
}

// stallGuard cancels an attempt (through timer) when a stall window
// passes without minBytes arriving: the timer is pushed back only once
// that many have come since the last push.
type stallGuard struct {
	r     io.Reader
	timer *time.Timer
	src   *releaseSource
	got   int64
}

func (g *stallGuard) Read(p []byte) (int, error) {
	n, err := g.r.Read(p)
	g.got += int64(n)
	if g.got >= g.src.minBytes {
		g.got = 0
		g.timer.Reset(g.src.stall)
	}
	return n, err
}

func (s *releaseSource) stallError(what string) error {
	return retryable(fmt.Errorf("%s: fewer than %d bytes in %v (too slow or stalled)", what, s.minBytes, s.stall))
}

func (s *releaseSource) open(ctx context.Context, rel string, from int64) (io.ReadCloser, *http.Response, error) {
	what := s.describe(rel)
	if s.url == "" {
		f, err := openSourceFile(filepath.Join(s.dir, rel))
		if errors.Is(err, os.ErrNotExist) {
			return nil, nil, fmt.Errorf("%w: %s", ErrReleaseNotFound, what)
		}
		if err != nil {
			return nil, nil, err
		}
		return f, nil, nil
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, what, nil)
	if err != nil {
		return nil, nil, err
	}
	if from > 0 {
		req.Header.Set("Range", fmt.Sprintf("bytes=%d-", from))
	}
	resp, err := installHTTP.Do(req)
	var certErr *tls.CertificateVerificationError
	if errors.As(err, &certErr) {
		// Retrying does not make a certificate trusted. A private CA can be
		// added with SSL_CERT_FILE / SSL_CERT_DIR.
		return nil, nil, fmt.Errorf("%w: %v", ErrDownload, err)
	}
	if err != nil {
		return nil, nil, retryable(err)
	}
	return resp.Body, resp, nil
}

// fetchSmall reads a manifest or signature, refusing more than limit bytes.
func (s *releaseSource) fetchSmall(ctx context.Context, rel string, limit int64, onRetry func(int, error)) ([]byte, error) {
	what := s.describe(rel)
	var out []byte
	err := withRetries(ctx, what, onRetry, func(ctx context.Context) error {
		actx, cancel := context.WithCancel(ctx)
		defer cancel()
		timer := time.AfterFunc(s.stall, cancel)
		defer timer.Stop()
		body, resp, err := s.open(actx, rel, 0)
		if err != nil {
			if ctx.Err() == nil && actx.Err() != nil {
				return s.stallError(what)
			}
			return err
		}
		defer body.Close()
		if resp != nil && resp.StatusCode != http.StatusOK {
			return statusError(resp.StatusCode, what)
		}
		b, err := io.ReadAll(io.LimitReader(&stallGuard{r: body, timer: timer, src: s}, limit+1))
		if err != nil {
			if ctx.Err() == nil && actx.Err() != nil {
				return s.stallError(what)
			}
			return retryable(fmt.Errorf("%s: %v", what, err))
		}
		if int64(len(b)) > limit {
			return fmt.Errorf("%w: %s is larger than %d bytes", ErrVerification, what, limit)
		}
		out = b
		return nil
	})
	return out, err
}

// received is one artifact's bytes so far, hashed as they arrive.
type received struct {
	f       *os.File
	h       hash.Hash
	have    int64
	flushed int64 // writeback started up to here
	size    int64
	what    string
}

func (r *received) restart() error {
	if r.have == 0 {
		return nil
	}
	r.have, r.flushed = 0, 0
	r.h = sha256.New()
	if err := r.f.Truncate(0); err != nil {
		return err
	}
	_, err := r.f.Seek(0, io.SeekStart)
	return err
}

func (r *received) stream(ctx context.Context, src io.Reader, progress func(int64)) error {
	buf := make([]byte, fetchBufSize)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			if r.have+int64(n) > r.size {
				return fmt.Errorf("%w: %s: more than the %d bytes the manifest declares", ErrVerification, r.what, r.size)
			}
			if _, werr := r.f.Write(buf[:n]); werr != nil {
				return werr
			}
			r.h.Write(buf[:n])
			r.have += int64(n)
			if r.have-r.flushed >= writebackEvery {
				startWriteback(r.f, r.flushed, r.have-r.flushed)
				r.flushed = r.have
			}
			progress(r.have)
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return retryable(fmt.Errorf("%s: truncated at %d of %d bytes: %v", r.what, r.have, r.size, err))
		}
	}
	if r.have < r.size {
		return retryable(fmt.Errorf("%s: truncated at %d of %d bytes", r.what, r.have, r.size))
	}
	return nil
}

// download fetches one artifact into f (new and empty), hashing while it
// streams and checking size and sha256. An interrupted HTTP transfer is
// resumed with a Range request within this call; nothing is resumed
// across calls.
func (s *releaseSource) download(ctx context.Context, rel string, a releaseArtifact, f *os.File, progress func(int64), onRetry func(int, error)) error {
	r := &received{f: f, h: sha256.New(), size: a.Size, what: s.describe(rel)}
	err := withRetries(ctx, r.what, onRetry, func(ctx context.Context) error {
		actx, cancel := context.WithCancel(ctx)
		defer cancel()
		timer := time.AfterFunc(s.stall, cancel)
		defer timer.Stop()
		body, resp, err := s.open(actx, rel, r.have)
		if err != nil {
			if ctx.Err() == nil && actx.Err() != nil {
				return s.stallError(r.what)
			}
			return err
		}
		defer body.Close()
		if resp == nil { // a local file: restart from 0, and retrying cannot make it longer
			if err := r.restart(); err != nil {
				return err
			}
			if err := r.stream(ctx, body, progress); err != nil {
				var ae *attemptError
				if errors.As(err, &ae) {
					return fmt.Errorf("%w: %v", ErrVerification, ae.err)
				}
				return err
			}
			return nil
		}
		switch {
		case resp.StatusCode == http.StatusPartialContent && r.have > 0:
			if rangeStart(resp.Header.Get("Content-Range")) != r.have {
				if err := r.restart(); err != nil {
					return err
				}
				return retryable(fmt.Errorf("%s: unexpected Content-Range", r.what))
			}
		case resp.StatusCode == http.StatusOK:
			if err := r.restart(); err != nil {
				return err
			}
		case resp.StatusCode == http.StatusRequestedRangeNotSatisfiable:
			if err := r.restart(); err != nil {
				return err
			}
			return retryable(fmt.Errorf("%s: range not satisfiable", r.what))
		default:
			return statusError(resp.StatusCode, r.what)
		}
		if resp.ContentLength >= 0 && r.have+resp.ContentLength != r.size {
			return fmt.Errorf("%w: %s: server sends %d bytes, manifest says %d", ErrVerification, r.what, r.have+resp.ContentLength, r.size)
		}
		err = r.stream(actx, &stallGuard{r: body, timer: timer, src: s}, progress)
		if err != nil && ctx.Err() == nil && actx.Err() != nil {
			return s.stallError(r.what)
		}
		return err
	})
	if err != nil {
		return err
	}
	return r.check(a)
}

func (r *received) check(a releaseArtifact) error {
	if sum := hex.EncodeToString(r.h.Sum(nil)); sum != a.SHA256 {
		return fmt.Errorf("%w: %s: sha256 %s, manifest says %s", ErrVerification, r.what, sum, a.SHA256)
	}
	return nil
}

// rangeStart reads "bytes 100-199/200" as 100 (-1 if malformed).
func rangeStart(v string) int64 {
	rest, ok := strings.CutPrefix(v, "bytes ")
	if !ok {
		return -1
	}
	start, _, _ := strings.Cut(rest, "-")
	n, err := strconv.ParseInt(strings.TrimSpace(start), 10, 64)
	if err != nil {
		return -1
	}
	return n
}
