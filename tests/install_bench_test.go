package tests

// Install benchmarks (make bench-install). Timings are reported, never
// asserted:
//   - warm EnsureInstalled: p50/p99 of single calls (target p50 <= 2 ms),
//     for the pinned version of a real dist/ (embedded pin: one marker read)
//     and for a test release (signed manifest re-checked);
//   - cold install of the whole bundle over loopback against curl fetching
//     the same files in the same run (target >= 0.8x of curl's throughput).

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"syscall"
	"testing"
	"time"

	"lockbox.dev/lockbox"
)

func instPercentile(d []time.Duration, p float64) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	return s[int(float64(len(s)-1)*p)]
}

// instBenchSource: the real dist/ when `make release` made one, else a
// synthetic release with a 64 MiB library.
func instBenchSource(b *testing.B) (dist, version string, opts []lockbox.InstallOption, what string) {
	d := os.Getenv("LOCKBOX_DIST")
	if d == "" {
		d, _ = filepath.Abs("../dist")
	}
	if _, err := os.Stat(filepath.Join(d, lockbox.Version, "manifest.json")); err == nil {
		return d, lockbox.Version, nil, "dist/" + lockbox.Version + " (pinned)"
	}
	rel := instBuildRelease(b, "8.0.0-bench", 64<<20)
	return rel.dist, rel.version, []lockbox.InstallOption{lockbox.WithVersion(rel.version), lockbox.WithTrustedKey(rel.pubKey)}, "synthetic 64 MiB release"
}

func BenchmarkInstallWarm(b *testing.B) {
	dist, _, opts, what := instBenchSource(b)
	srv := instServe(b, dist, nil)
	opts = append(opts, lockbox.WithReleaseURL(srv.URL), lockbox.WithInstallDir(b.TempDir()))
	ctx := context.Background()
	if _, err := lockbox.EnsureInstalled(ctx, opts...); err != nil {
		b.Fatal(err)
	}
	const calls = 2000
	for range b.N {
		times := make([]time.Duration, 0, calls)
		for range calls {
			start := time.Now()
			if _, err := lockbox.EnsureInstalled(ctx, opts...); err != nil {
				b.Fatal(err)
			}
			times = append(times, time.Since(start))
		}
		p50, p99 := instPercentile(times, 0.5), instPercentile(times, 0.99)
		b.ReportMetric(float64(p50.Microseconds()), "p50-us")
		b.ReportMetric(float64(p99.Microseconds()), "p99-us")
		b.Logf("warm EnsureInstalled, %s: p50 %v, p99 %v over %d calls (target p50 <= 2ms)", what, p50, p99, calls)
	}
}

func BenchmarkInstallColdVsCurl(b *testing.B) {
	curl, err := exec.LookPath("curl")
	if err != nil {
		b.Skip("curl not installed (scripts/deps.sh installs it)")
	}
	dist, version, opts, what := instBenchSource(b)
	srv := instServe(b, dist, nil)
	raw, err := os.ReadFile(filepath.Join(dist, version, "manifest.json"))
	if err != nil {
		b.Fatal(err)
	}
	var m struct {
		Platforms map[string][]struct {
			Path string `json:"path"`
			Size int64  `json:"size"`
		} `json:"platforms"`
	}
	if err := json.Unmarshal(raw, &m); err != nil {
		b.Fatal(err)
	}
	var total int64
	curlArgs := []string{"-s", "-f"}
	work := b.TempDir()
	for _, arts := range m.Platforms {
		for i, a := range arts {
			total += a.Size
			curlArgs = append(curlArgs, "-o", filepath.Join(work, "curl", string(rune('a'+i))), srv.URL+"/"+version+"/"+a.Path)
		}
	}
	const rounds = 7
	for range b.N {
		var sdk, cu, cuSync []time.Duration
		for r := range rounds {
			os.RemoveAll(filepath.Join(work, "curl"))
			os.MkdirAll(filepath.Join(work, "curl"), 0o755)
			// Each side starts with no dirty pages of the other to flush.
			syscall.Sync()
			start := time.Now()
			if out, err := exec.Command(curl, curlArgs...).CombinedOutput(); err != nil {
				b.Fatalf("curl: %v\n%s", err, out)
			}
			cu = append(cu, time.Since(start))
			// The same bytes made durable, as an install must: curl + fsync.
			entries, _ := os.ReadDir(filepath.Join(work, "curl"))
			for _, e := range entries {
				if f, err := os.Open(filepath.Join(work, "curl", e.Name())); err == nil {
					f.Sync()
					f.Close()
				}
			}
			cuSync = append(cuSync, time.Since(start))

			root := filepath.Join(work, "sdk", string(rune('0'+r)))
			syscall.Sync()
			start = time.Now()
			if _, err := lockbox.EnsureInstalled(context.Background(), append(opts,
				lockbox.WithReleaseURL(srv.URL), lockbox.WithInstallDir(root))...); err != nil {
				b.Fatal(err)
			}
			sdk = append(sdk, time.Since(start))
			os.RemoveAll(root)
		}
		mbps := func(d time.Duration) float64 { return float64(total) / d.Seconds() / 1e6 }
		s, c, cs := instPercentile(sdk, 0.5), instPercentile(cu, 0.5), instPercentile(cuSync, 0.5)
		b.ReportMetric(mbps(s), "sdk-MB/s")
		b.ReportMetric(mbps(c), "curl-MB/s")
		b.ReportMetric(mbps(s)/mbps(c), "ratio")
		b.ReportMetric(mbps(s)/mbps(cs), "ratio-vs-curl+fsync")
		b.Logf("cold install of %s (%d bytes) over loopback, median of %d: EnsureInstalled %.0f MB/s (%v, verified + fsynced); curl %.0f MB/s (%v): ratio %.2fx (target >= 0.8x); curl+fsync %.0f MB/s (%v): ratio %.2fx",
			what, total, rounds, mbps(s), s, mbps(c), c, mbps(s)/mbps(c), mbps(cs), cs, mbps(s)/mbps(cs))
	}
}
