package tests

// End-to-end tests of EnsureInstalled, the one installer, against real
// HTTP servers on 127.0.0.1 serving real releases made by the release
// tool (lockbox-installer release), whose verify re-checks what landed.

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"lockbox.dev/lockbox"
)

const instLibPath = "/lib/liblockbox.so"

func instOpts(rel *instRelease, url, root string) []lockbox.InstallOption {
	return []lockbox.InstallOption{
		lockbox.WithVersion(rel.version),
		lockbox.WithReleaseURL(url),
		lockbox.WithInstallDir(root),
		lockbox.WithTrustedKey(rel.pubKey),
	}
}

func TestInstallFreshThenWarm(t *testing.T) {
	t.Parallel()
	rel := instBuildRelease(t, "7.0.0-test", 3<<20)
	srv := instServe(t, rel.dist, nil)
	root := t.TempDir()
	var mu sync.Mutex
	kinds := map[lockbox.InstallEventKind]int{}
	progress := lockbox.WithProgress(func(ev lockbox.InstallEvent) {
		mu.Lock()
		kinds[ev.Kind]++
		mu.Unlock()
	})
	inst, err := lockbox.EnsureInstalled(context.Background(), append(instOpts(rel, srv.URL, root), progress)...)
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(root, "versions", rel.version)
	want := lockbox.Installation{
		Version:     rel.version,
		Dir:         dir,
		LibraryPath: filepath.Join(dir, "lib", "liblockbox.so"),
		HelperPath:  filepath.Join(dir, "bin", "lockbox-helper"),
		ImagesDir:   filepath.Join(dir, "images"),
	}
	if *inst != want {
		t.Fatalf("installation %+v, want %+v", *inst, want)
	}
	lib, err := os.ReadFile(inst.LibraryPath)
	if err != nil || string(lib) != string(rel.lib) {
		t.Fatalf("installed library differs from the release (%v)", err)
	}
	if st, err := os.Stat(inst.HelperPath); err != nil || st.Mode().Perm() != 0o755 {
		t.Fatalf("helper mode: %v %v", st, err)
	}
	manifest, _ := os.ReadFile(filepath.Join(dir, "manifest.json"))
	sum := sha256.Sum256(manifest)
	if marker, _ := os.ReadFile(filepath.Join(dir, ".complete")); string(marker) != hex.EncodeToString(sum[:])+"\n" {
		t.Fatalf(".complete = %q", marker)
	}
	if kinds[lockbox.InstallManifestVerified] != 1 || kinds[lockbox.InstallComplete] != 1 || kinds[lockbox.InstallDownloading] == 0 {
		t.Fatalf("events: %v", kinds)
	}
	if got := instSnapshot(t, dir); len(got) == 0 || !reflect.DeepEqual(got, instDistPlusMarker(t, instSnapshot(t, filepath.Join(rel.dist, rel.version)), got)) {
		t.Fatalf("installed tree differs from dist")
	}
	instMustCLI(t, "verify", dir, "--trusted-key", rel.keyFile+".pub")

	// Warm: a marker check, nothing fetched.
	before := len(srv.requests)
	inst2, err := lockbox.EnsureInstalled(context.Background(), append(instOpts(rel, srv.URL, root), progress)...)
	if err != nil || *inst2 != want {
		t.Fatalf("warm: %+v %v", inst2, err)
	}
	if len(srv.requests) != before || kinds[lockbox.InstallAlreadyInstalled] != 1 {
		t.Fatalf("warm path fetched %d requests; events %v", len(srv.requests)-before, kinds)
	}
	if !lockbox.IsInstalled(instOpts(rel, "", root)...) {
		t.Fatal("IsInstalled = false after install")
	}
}

// instDistPlusMarker returns dist's snapshot plus the installed marker:
// dist has no .complete, everything else must be equal but directory
// modes: the installer makes every directory 0700 (checked here).
func instDistPlusMarker(t *testing.T, dist, installed map[string]instFile) map[string]instFile {
	t.Helper()
	dist[".complete"] = installed[".complete"]
	for p, f := range installed {
		if f.mode.IsDir() {
			if f.mode.Perm() != 0o700 {
				t.Errorf("installed directory %s has mode %v, want 0700", p, f.mode)
			}
			dist[p] = f
		}
	}
	return dist
}

func TestInstallCorruptedArtifact(t *testing.T) {
	t.Parallel()
	rel := instBuildRelease(t, "7.0.1-test", 1<<20)
	srv := instServe(t, rel.dist, func(w http.ResponseWriter, r *http.Request, _ int) bool {
		if !strings.HasSuffix(r.URL.Path, instLibPath) {
			return false
		}
		instServeFile(t, w, rel.dist, r.URL.Path, func(b []byte) []byte { b[len(b)/2] ^= 1; return b })
		return true
	})
	root := t.TempDir()
	_, err := lockbox.EnsureInstalled(context.Background(), instOpts(rel, srv.URL, root)...)
	if !errors.Is(err, lockbox.ErrVerification) || !strings.Contains(err.Error(), "sha256") {
		t.Fatalf("corrupted artifact: %v", err)
	}
	instAssertNotInstalled(t, root, rel.version, lockbox.WithTrustedKey(rel.pubKey))
	// The bad bytes are not kept for a resume: an honest mirror then works.
	if _, err := os.Stat(filepath.Join(root, "versions", ".partial-"+rel.version, instSHA256(rel.lib)+"-lib_liblockbox.so")); err == nil {
		t.Fatal("corrupted download kept for resuming")
	}
	honest := instServe(t, rel.dist, nil)
	if _, err := lockbox.EnsureInstalled(context.Background(), instOpts(rel, honest.URL, root)...); err != nil {
		t.Fatal(err)
	}
}

func TestInstallTruncatedDownload(t *testing.T) {
	t.Parallel()
	rel := instBuildRelease(t, "7.0.2-test", 1<<20)
	srv := instServe(t, rel.dist, func(w http.ResponseWriter, r *http.Request, _ int) bool {
		if !strings.HasSuffix(r.URL.Path, instLibPath) {
			return false
		}
		w.Header().Set("Content-Length", strconv.Itoa(len(rel.lib)))
		w.Write(rel.lib[:len(rel.lib)/3]) // the server drops the connection
		return true
	})
	root := t.TempDir()
	_, err := lockbox.EnsureInstalled(context.Background(), instOpts(rel, srv.URL, root)...)
	if !errors.Is(err, lockbox.ErrDownload) || !strings.Contains(err.Error(), "truncated") {
		t.Fatalf("truncated download: %v", err)
	}
	if n := srv.count(instLibPath); n != 5 {
		t.Fatalf("library requested %d times, want 5 attempts", n)
	}
	instAssertNotInstalled(t, root, rel.version, lockbox.WithTrustedKey(rel.pubKey))
}

func TestInstallResumesInterruptedDownload(t *testing.T) {
	t.Parallel()
	rel := instBuildRelease(t, "7.0.3-test", 4<<20)
	cut := len(rel.lib) / 4
	srv := instServe(t, rel.dist, func(w http.ResponseWriter, r *http.Request, hit int) bool {
		if !strings.HasSuffix(r.URL.Path, instLibPath) || hit != 1 {
			return false
		}
		w.Header().Set("Content-Length", strconv.Itoa(len(rel.lib)))
		w.Write(rel.lib[:cut])
		return true
	})
	root := t.TempDir()
	retried := false
	inst, err := lockbox.EnsureInstalled(context.Background(), append(instOpts(rel, srv.URL, root),
		lockbox.WithProgress(func(ev lockbox.InstallEvent) { retried = retried || ev.Kind == lockbox.InstallRetrying }))...)
	if err != nil {
		t.Fatal(err)
	}
	ranges := srv.ranges(instLibPath)
	if len(ranges) != 2 || ranges[0] != "" || !strings.HasPrefix(ranges[1], "bytes=") || ranges[1] == "bytes=0-" {
		t.Fatalf("library requests' Range headers: %q (want a resume)", ranges)
	}
	if !retried {
		t.Fatal("no retry event")
	}
	if b, _ := os.ReadFile(inst.LibraryPath); string(b) != string(rel.lib) {
		t.Fatal("resumed library differs")
	}
}

func TestInstallRetriesServerErrors(t *testing.T) {
	t.Parallel()
	rel := instBuildRelease(t, "7.0.4-test", 64<<10)
	srv := instServe(t, rel.dist, func(w http.ResponseWriter, r *http.Request, hit int) bool {
		if hit <= 2 && (strings.HasSuffix(r.URL.Path, "/manifest.json") || strings.HasSuffix(r.URL.Path, instLibPath)) {
			http.Error(w, "busy", http.StatusServiceUnavailable)
			return true
		}
		return false
	})
	if _, err := lockbox.EnsureInstalled(context.Background(), instOpts(rel, srv.URL, t.TempDir())...); err != nil {
		t.Fatal(err)
	}
	if srv.count("/manifest.json") != 3 || srv.count(instLibPath) != 3 {
		t.Fatalf("requests: manifest %d, library %d (want 3 each)", srv.count("/manifest.json"), srv.count(instLibPath))
	}
}

func TestInstallWrongSize(t *testing.T) {
	t.Parallel()
	rel := instBuildRelease(t, "7.0.5-test", 256<<10)
	for _, chunked := range []bool{false, true} {
		srv := instServe(t, rel.dist, func(w http.ResponseWriter, r *http.Request, _ int) bool {
			if !strings.HasSuffix(r.URL.Path, instLibPath) {
				return false
			}
			if chunked { // no Content-Length: the reader must stop at the declared size
				w.(http.Flusher).Flush()
			}
			w.Write(append(append([]byte{}, rel.lib...), "extra"...))
			return true
		})
		root := t.TempDir()
		_, err := lockbox.EnsureInstalled(context.Background(), instOpts(rel, srv.URL, root)...)
		if !errors.Is(err, lockbox.ErrVerification) || !strings.Contains(err.Error(), "bytes") {
			t.Fatalf("chunked=%v: oversized artifact: %v", chunked, err)
		}
		instAssertNotInstalled(t, root, rel.version, lockbox.WithTrustedKey(rel.pubKey))
	}
}

func TestInstallTamperedManifest(t *testing.T) {
	t.Parallel()
	rel := instBuildRelease(t, "7.0.6-test", 64<<10)
	srv := instServe(t, rel.dist, func(w http.ResponseWriter, r *http.Request, _ int) bool {
		if !strings.HasSuffix(r.URL.Path, "/manifest.json") {
			return false
		}
		instServeFile(t, w, rel.dist, r.URL.Path, func(b []byte) []byte {
			return []byte(strings.Replace(string(b), `"kind": "helper"`, `"kind": "helper" `, 1))
		})
		return true
	})
	root := t.TempDir()
	_, err := lockbox.EnsureInstalled(context.Background(), instOpts(rel, srv.URL, root)...)
	if !errors.Is(err, lockbox.ErrVerification) || !strings.Contains(err.Error(), "signature") {
		t.Fatalf("tampered manifest: %v", err)
	}
	if n := srv.count(instLibPath); n != 0 {
		t.Fatalf("artifacts fetched (%d) for an unverified manifest", n)
	}
	instAssertNotInstalled(t, root, rel.version, lockbox.WithTrustedKey(rel.pubKey))
}

func TestInstallUntrustedKey(t *testing.T) {
	t.Parallel()
	rel := instBuildRelease(t, "7.0.7-test", 64<<10)
	other := instBuildRelease(t, "7.0.7-other", 1024)
	srv := instServe(t, rel.dist, nil)
	root := t.TempDir()
	// Trusted: the embedded keys and another test key, not the signer.
	_, err := lockbox.EnsureInstalled(context.Background(), lockbox.WithVersion(rel.version),
		lockbox.WithReleaseURL(srv.URL), lockbox.WithInstallDir(root), lockbox.WithTrustedKey(other.pubKey))
	if !errors.Is(err, lockbox.ErrVerification) {
		t.Fatalf("untrusted signer: %v", err)
	}
	instAssertNotInstalled(t, root, rel.version, lockbox.WithTrustedKey(other.pubKey))
	if _, err := lockbox.EnsureInstalled(context.Background(), lockbox.WithTrustedKey("not a key")); err == nil {
		t.Fatal("a malformed trusted key was accepted")
	}
}

func TestInstallNotFound(t *testing.T) {
	t.Parallel()
	rel := instBuildRelease(t, "7.0.8-test", 64<<10)
	srv := instServe(t, rel.dist, nil)
	root := t.TempDir()
	opts := append(instOpts(rel, srv.URL, root), lockbox.WithVersion("7.0.9-missing"))
	if _, err := lockbox.EnsureInstalled(context.Background(), opts...); !errors.Is(err, lockbox.ErrReleaseNotFound) {
		t.Fatalf("missing version: %v", err)
	}
	// A listed artifact the mirror does not have.
	if err := os.Remove(filepath.Join(rel.dist, rel.version, "images", "base.tar.zst")); err != nil {
		t.Fatal(err)
	}
	_, err := lockbox.EnsureInstalled(context.Background(), instOpts(rel, srv.URL, root)...)
	if !errors.Is(err, lockbox.ErrReleaseNotFound) || !strings.Contains(err.Error(), "base.tar.zst") {
		t.Fatalf("missing artifact: %v", err)
	}
	instAssertNotInstalled(t, root, rel.version, lockbox.WithTrustedKey(rel.pubKey))
}

func TestInstallStalledServerHonoursDeadline(t *testing.T) {
	t.Parallel()
	rel := instBuildRelease(t, "7.1.0-test", 2<<20)
	srv := instServe(t, rel.dist, func(w http.ResponseWriter, r *http.Request, _ int) bool {
		if !strings.HasSuffix(r.URL.Path, instLibPath) {
			return false
		}
		w.Header().Set("Content-Length", strconv.Itoa(len(rel.lib)))
		w.Write(rel.lib[:1<<20])
		w.(http.Flusher).Flush()
		<-r.Context().Done() // stall until the client gives up
		return true
	})
	root := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	_, err := lockbox.EnsureInstalled(ctx, instOpts(rel, srv.URL, root)...)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("stalled server: %v", err)
	}
	instAssertNotInstalled(t, root, rel.version, lockbox.WithTrustedKey(rel.pubKey))
}

func TestInstallConcurrentProcesses(t *testing.T) {
	t.Parallel()
	rel := instBuildRelease(t, "7.2.0-test", 8<<20)
	srv := instServe(t, rel.dist, nil)
	root := t.TempDir()
	const n = 8
	results := make([]map[string]string, n)
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cmd := instChild("LOCKBOX_HOME="+root, "LOCKBOX_RELEASE_URL="+srv.URL,
				"LOCKBOX_INSTALL_CHILD_VERSION="+rel.version, "LOCKBOX_INSTALL_CHILD_KEY="+rel.pubKey)
			out, err := cmd.CombinedOutput()
			if err != nil {
				errs <- fmt.Errorf("child %d: %v\n%s", i, err, out)
				return
			}
			results[i] = instChildResult(t, out)
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if t.Failed() {
		return
	}
	for i, r := range results {
		if r["dir"] != results[0]["dir"] || r["lib"] != results[0]["lib"] {
			t.Fatalf("child %d installed %v, child 0 %v", i, r, results[0])
		}
	}
	if got := srv.count(instLibPath); got != 1 {
		t.Fatalf("library downloaded %d times by %d processes, want once", got, n)
	}
	instMustCLI(t, "verify", results[0]["dir"], "--trusted-key", rel.keyFile+".pub")
}

func TestInstallKilledMidwayThenRerun(t *testing.T) {
	t.Parallel()
	rel := instBuildRelease(t, "7.3.0-test", 4<<20)
	started := make(chan struct{})
	var once sync.Once
	srv := instServe(t, rel.dist, func(w http.ResponseWriter, r *http.Request, hit int) bool {
		if !strings.HasSuffix(r.URL.Path, instLibPath) || hit != 1 {
			return false
		}
		w.Header().Set("Content-Length", strconv.Itoa(len(rel.lib)))
		w.Write(rel.lib[:1<<20])
		w.(http.Flusher).Flush()
		once.Do(func() { close(started) })
		<-r.Context().Done()
		return true
	})
	root := t.TempDir()
	env := []string{"LOCKBOX_HOME=" + root, "LOCKBOX_RELEASE_URL=" + srv.URL,
		"LOCKBOX_INSTALL_CHILD_VERSION=" + rel.version, "LOCKBOX_INSTALL_CHILD_KEY=" + rel.pubKey}
	child := instChild(env...)
	if err := child.Start(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-started:
	case <-time.After(60 * time.Second):
		child.Process.Kill()
		t.Fatal("child never started downloading")
	}
	// Mid-download: only a staging dir exists.
	entries, _ := os.ReadDir(filepath.Join(root, "versions"))
	staging := 0
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), ".staging-"+rel.version+"-") {
			staging++
		}
	}
	if staging != 1 || lockbox.IsInstalled(instOpts(rel, "", root)...) {
		t.Fatalf("mid-install state: %d staging dirs, entries %v", staging, entries)
	}
	// Kill once the child holds the first MiB (in a file of unpredictable
	// name inside its staging dir).
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		parts, _ := filepath.Glob(filepath.Join(root, "versions", ".staging-"+rel.version+"-*", "lib", ".download-*"))
		if len(parts) == 1 {
			if st, err := os.Stat(parts[0]); err == nil && st.Size() == 1<<20 {
				break
			}
		}
		if time.Now().After(deadline) {
			child.Process.Kill()
			t.Fatalf("the child never wrote 1 MiB to its staging dir (%v)", parts)
		}
	}
	if err := child.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	child.Wait()

	// What the killed run left does not look installed, offline or to the loader.
	if lockbox.IsInstalled(instOpts(rel, "", root)...) {
		t.Fatal("killed install looks installed")
	}
	_, err := lockbox.EnsureInstalled(context.Background(), append(instOpts(rel, "", root), lockbox.WithOffline(true))...)
	if !errors.Is(err, lockbox.ErrNotInstalled) {
		t.Fatalf("offline after kill: %v", err)
	}
	loadOut, _ := instChild(append(env, "LOCKBOX_INSTALL_CHILD_MODE=load-only",
		"LOCKBOX_INSTALL_CHILD_VERSION=")...).CombinedOutput()
	if r := instChildResult(t, loadOut); r["not_installed"] != "true" {
		t.Fatalf("loader after a killed install: %v", r)
	}

	out, err := instChild(env...).CombinedOutput()
	if err != nil {
		t.Fatalf("re-run: %v\n%s", err, out)
	}
	dir := instChildResult(t, out)["dir"]
	instMustCLI(t, "verify", dir, "--trusted-key", rel.keyFile+".pub")
	// The killed run's bytes were never verified: the re-run fetches it all.
	if r := srv.ranges(instLibPath); len(r) != 2 || r[1] != "" {
		t.Fatalf("the re-run reused the killed download: Range headers %q", r)
	}
	entries, _ = os.ReadDir(filepath.Join(root, "versions"))
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), ".") {
			t.Fatalf("leftover after re-run: %s", e.Name())
		}
	}
}

func TestInstallOffline(t *testing.T) {
	t.Parallel()
	rel := instBuildRelease(t, "7.4.0-test", 64<<10)
	srv := instServe(t, rel.dist, nil)
	root := t.TempDir()
	offline := append(instOpts(rel, srv.URL, root), lockbox.WithOffline(true))
	_, err := lockbox.EnsureInstalled(context.Background(), offline...)
	if !errors.Is(err, lockbox.ErrNotInstalled) || !strings.Contains(err.Error(), "missing") {
		t.Fatalf("offline, nothing installed: %v", err)
	}
	if len(srv.requests) != 0 {
		t.Fatal("offline mode made requests")
	}
	if _, err := lockbox.EnsureInstalled(context.Background(), instOpts(rel, srv.URL, root)...); err != nil {
		t.Fatal(err)
	}
	// A partial tree (marker gone) lists what is missing.
	dir := filepath.Join(root, "versions", rel.version)
	srv.Close()
	inst, err := lockbox.EnsureInstalled(context.Background(), offline...)
	if err != nil || inst.Dir != dir {
		t.Fatalf("offline with a complete install: %v %v", inst, err)
	}
	// LOCKBOX_OFFLINE=1 in another process, with a dead mirror configured.
	out, err := instChild("LOCKBOX_HOME="+root, "LOCKBOX_RELEASE_URL="+srv.URL, "LOCKBOX_OFFLINE=1",
		"LOCKBOX_INSTALL_CHILD_VERSION="+rel.version, "LOCKBOX_INSTALL_CHILD_KEY="+rel.pubKey).CombinedOutput()
	if err != nil || instChildResult(t, out)["dir"] != dir {
		t.Fatalf("LOCKBOX_OFFLINE=1 with a complete install: %v\n%s", err, out)
	}
	os.Remove(filepath.Join(dir, "images", "base.tar.zst"))
	os.Remove(filepath.Join(dir, ".complete"))
	_, err = lockbox.EnsureInstalled(context.Background(), offline...)
	if !errors.Is(err, lockbox.ErrNotInstalled) || !strings.Contains(err.Error(), "images/base.tar.zst") {
		t.Fatalf("offline, partial tree: %v", err)
	}
}

func TestInstallNoReleaseURL(t *testing.T) {
	t.Parallel()
	rel := instBuildRelease(t, "7.4.1-test", 1024)
	_, err := lockbox.EnsureInstalled(context.Background(), instOpts(rel, "", t.TempDir())...)
	if !errors.Is(err, lockbox.ErrNoReleaseURL) || !strings.Contains(err.Error(), "LOCKBOX_RELEASE_URL") {
		t.Fatalf("no release URL: %v", err)
	}
}

func TestInstallFromDirectoryAndTwoVersions(t *testing.T) {
	t.Parallel()
	rel := instBuildRelease(t, "7.5.0-test", 64<<10)
	rel2 := instAddVersion(t, filepath.Dir(rel.dist), rel.keyFile, "7.5.1-test", 32<<10)
	root := t.TempDir()
	a, err := lockbox.EnsureInstalled(context.Background(), instOpts(rel, rel.dist, root)...)
	if err != nil {
		t.Fatal(err)
	}
	b, err := lockbox.EnsureInstalled(context.Background(), instOpts(rel2, "file://"+rel.dist, root)...)
	if err != nil {
		t.Fatal(err)
	}
	for _, inst := range []*lockbox.Installation{a, b} {
		instMustCLI(t, "verify", inst.Dir, "--trusted-key", rel.keyFile+".pub")
	}
	if !lockbox.IsInstalled(instOpts(rel, "", root)...) || !lockbox.IsInstalled(instOpts(rel2, "", root)...) {
		t.Fatal("two versions do not coexist")
	}
}

// The release tool's exit codes (installer/README.md): what a release
// script branches on.
func TestInstallReleaseToolExitCodes(t *testing.T) {
	t.Parallel()
	rel := instBuildRelease(t, "7.7.0-test", 64<<10)
	dir := filepath.Join(rel.dist, rel.version)
	key := "--trusted-key=" + rel.keyFile + ".pub"
	tampered := filepath.Join(t.TempDir(), rel.version)
	if out, err := exec.Command("cp", "-a", dir, tampered).CombinedOutput(); err != nil {
		t.Fatalf("cp: %v\n%s", err, out)
	}
	lib := filepath.Join(tampered, "lib", "liblockbox.so")
	b, _ := os.ReadFile(lib)
	b[0] ^= 1
	instWrite(t, lib, b, 0o644)
	cases := []struct {
		name string
		args []string
		code int
	}{
		{"usage", []string{"verify"}, 2},
		{"no signing key", []string{"release", "--version", "7.7.1-test", "--out", t.TempDir()}, 2},
		{"keygen over an existing key", []string{"keygen", "--out", rel.keyFile, "--public", filepath.Join(t.TempDir(), "k.pub")}, 2},
		{"tampered artifact", []string{"verify", tampered, key}, 3},
		{"signer not trusted", []string{"verify", dir}, 3},
		{"ok", []string{"verify", dir, key}, 0},
	}
	for _, c := range cases {
		if _, stderr, code := instCLI(t, c.args...); code != c.code {
			t.Errorf("%s: exit %d, want %d\n%s", c.name, code, c.code, stderr)
		}
	}
}

// TestInstallRealDist installs the release `make release` built (dist/)
// through the SDK's pinned path, with only the embedded keys and pin,
// then loads the installed library in a fresh process.
func TestInstallRealDist(t *testing.T) {
	dist := os.Getenv("LOCKBOX_DIST")
	if dist == "" {
		dist, _ = filepath.Abs("../dist")
	}
	if _, err := os.Stat(filepath.Join(dist, lockbox.Version, "manifest.json")); err != nil {
		t.Skipf("no release in %s (make release makes one)", dist)
	}
	srv := instServe(t, dist, nil)
	root := t.TempDir()
	out, err := instChild("LOCKBOX_HOME="+root, "LOCKBOX_RELEASE_URL="+srv.URL, "LOCKBOX_INSTALL_CHILD_MODE=load").CombinedOutput()
	if err != nil {
		t.Fatalf("install + load of dist/%s: %v\n%s", lockbox.Version, err, out)
	}
	r := instChildResult(t, out)
	if r["loaded_path"] != r["lib"] || !strings.HasPrefix(r["lib"], root) || r["lib_version"] != lockbox.Version {
		t.Fatalf("loaded %v", r)
	}
	// The release as published and as installed both verify against the
	// key of the pin this binary trusts, and hold the same bytes.
	key := filepath.Join(instPinDir(), "keys", "dev.pub")
	instMustCLI(t, "verify", filepath.Join(dist, lockbox.Version), "--trusted-key", key)
	instMustCLI(t, "verify", r["dir"], "--trusted-key", key)
	// Without WithVMAssets the microVM guest is neither requested nor
	// installed: the tree is dist's without vm/.
	distTree := instSnapshot(t, filepath.Join(dist, lockbox.Version))
	native := maps.Clone(distTree)
	maps.DeleteFunc(native, func(p string, _ instFile) bool { return p == "vm" || strings.HasPrefix(p, "vm/") })
	installed := instSnapshot(t, r["dir"])
	if !reflect.DeepEqual(installed, instDistPlusMarker(t, native, installed)) {
		t.Fatalf("installed tree of dist/%s differs from dist", lockbox.Version)
	}
	if n := srv.count("/vm/vmlinuz") + srv.count("/vm/initramfs.img"); n != 0 {
		t.Fatalf("a native install requested the VM assets %d times", n)
	}
	if _, ok := distTree["vm/vmlinuz"]; !ok {
		t.Logf("dist/%s carries no VM assets (make vm-assets): not adding them", lockbox.Version)
		return
	}
	// Adding them: the installed tree is then all of dist's.
	out, err = instChild("LOCKBOX_HOME="+root, "LOCKBOX_RELEASE_URL="+srv.URL, "LOCKBOX_INSTALL_CHILD_VM=1").CombinedOutput()
	if err != nil {
		t.Fatalf("adding the VM assets of dist/%s: %v\n%s", lockbox.Version, err, out)
	}
	if got := instChildResult(t, out)["vm_assets"]; got != filepath.Join(r["dir"], "vm") {
		t.Fatalf("VMAssetsDir %q", got)
	}
	instMustCLI(t, "verify", r["dir"], "--trusted-key", key)
	installed = instSnapshot(t, r["dir"])
	if !reflect.DeepEqual(installed, instDistPlusMarker(t, distTree, installed)) {
		t.Fatalf("installed tree of dist/%s with its VM assets differs from dist", lockbox.Version)
	}
}

// TestInstallChildProcess is the body of the child processes the tests
// above start; it does nothing in a normal run.
func TestInstallChildProcess(t *testing.T) {
	if os.Getenv("LOCKBOX_INSTALL_CHILD") != "1" {
		t.Skip("child process of the install tests")
	}
	var opts []lockbox.InstallOption
	if v := os.Getenv("LOCKBOX_INSTALL_CHILD_VERSION"); v != "" {
		opts = append(opts, lockbox.WithVersion(v))
	}
	if k := os.Getenv("LOCKBOX_INSTALL_CHILD_KEY"); k != "" {
		opts = append(opts, lockbox.WithTrustedKey(k))
	}
	if os.Getenv("LOCKBOX_INSTALL_CHILD_VM") == "1" {
		opts = append(opts, lockbox.WithVMAssets())
	}
	ctx := context.Background()
	res := map[string]string{}
	switch mode := os.Getenv("LOCKBOX_INSTALL_CHILD_MODE"); mode {
	case "load-only":
		err := lockbox.Load()
		res["load_error"] = fmt.Sprint(err)
		res["not_installed"] = strconv.FormatBool(errors.Is(err, lockbox.ErrNotInstalled))
	case "install-load": // the library need not be an engine: report Load's error
		inst, err := lockbox.EnsureInstalled(ctx, opts...)
		if err != nil {
			t.Fatalf("EnsureInstalled: %v", err)
		}
		res["lib"], res["load_error"] = inst.LibraryPath, fmt.Sprint(lockbox.Load())
	default:
		inst, err := lockbox.EnsureInstalled(ctx, opts...)
		if err != nil {
			t.Fatalf("EnsureInstalled: %v", err)
		}
		res["dir"], res["lib"], res["vm_assets"] = inst.Dir, inst.LibraryPath, inst.VMAssetsDir
		if mode == "load" {
			v, err := lockbox.LibraryVersion(ctx)
			if err != nil {
				t.Fatalf("LibraryVersion: %v", err)
			}
			res["loaded_path"], res["lib_version"] = v.Path, v.Version
		}
	}
	b, _ := json.Marshal(res)
	fmt.Printf("RESULT %s\n", b)
}

// A download that stalls is abandoned after a stall window and resumed
// where it stopped; a server that always stalls runs into the overall
// bound, and nothing is left installed.
func TestInstallStallThenResume(t *testing.T) {
	t.Parallel()
	rel := instBuildRelease(t, "7.8.0-test", 2<<20)
	var stallAlways atomic.Bool
	srv := instServe(t, rel.dist, func(w http.ResponseWriter, r *http.Request, hit int) bool {
		if !strings.HasSuffix(r.URL.Path, instLibPath) || (hit > 1 && !stallAlways.Load()) {
			return false
		}
		w.Header().Set("Content-Length", strconv.Itoa(len(rel.lib)))
		w.Write(rel.lib[:1<<20])
		w.(http.Flusher).Flush()
		<-r.Context().Done()
		return true
	})
	inst, err := lockbox.EnsureInstalled(context.Background(), append(instOpts(rel, srv.URL, t.TempDir()), lockbox.WithStallTimeout(time.Second))...)
	if err != nil {
		t.Fatalf("stall then resume: %v", err)
	}
	if r := srv.ranges(instLibPath); len(r) != 2 || r[1] != fmt.Sprintf("bytes=%d-", 1<<20) {
		t.Fatalf("library requests' Range headers: %q", r)
	}
	if b, _ := os.ReadFile(inst.LibraryPath); !bytes.Equal(b, rel.lib) {
		t.Fatal("resumed library differs from the release")
	}
	stallAlways.Store(true)
	root := t.TempDir()
	start := time.Now()
	_, err = lockbox.EnsureInstalled(context.Background(), append(instOpts(rel, srv.URL, root),
		lockbox.WithStallTimeout(time.Second), lockbox.WithInstallTimeout(2*time.Second))...)
	// The bound catches an install that outlives its 2 s timeout by far
	// (the stalls would go on forever); 30 s of slack for a loaded machine.
	if !errors.Is(err, context.DeadlineExceeded) || time.Since(start) > 30*time.Second {
		t.Fatalf("always stalled: %v after %v", err, time.Since(start))
	}
	instAssertNotInstalled(t, root, rel.version, lockbox.WithTrustedKey(rel.pubKey))
}

// Item 10(c) of issue 9: bytes an earlier install left (older SDKs kept
// them in versions/.partial-<v>/ under a predictable name and resumed
// them) are never trusted. With a wrong prefix planted, the first honest
// install used to fail; now it succeeds first time, fetches everything
// (no Range), and deletes the leftovers unread.
func TestInstallLeftoverPartialsAreNeverReused(t *testing.T) {
	t.Parallel()
	rel := instBuildRelease(t, "7.9.0-test", 1<<20)
	srv := instServe(t, rel.dist, nil)
	for _, prefix := range [][]byte{[]byte("not the library's first bytes"), rel.lib[:1000]} {
		root := t.TempDir()
		partDir := filepath.Join(root, "versions", ".partial-"+rel.version)
		instWrite(t, filepath.Join(partDir, instSHA256(rel.lib)+"-lib_liblockbox.so"), prefix, 0o600)
		before := len(srv.ranges(instLibPath))
		if _, err := lockbox.EnsureInstalled(context.Background(), instOpts(rel, srv.URL, root)...); err != nil {
			t.Fatalf("first honest install after a planted partial: %v", err)
		}
		if r := srv.ranges(instLibPath)[before:]; len(r) != 1 || r[0] != "" {
			t.Fatalf("Range headers %q, want one full fetch", r)
		}
		if _, err := os.Lstat(partDir); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("leftover partials kept: %v", err)
		}
		instMustCLI(t, "verify", filepath.Join(root, "versions", rel.version), "--trusted-key", rel.keyFile+".pub")
	}
}

// Two artifacts with the same bytes download at the same time without
// sharing a temp file.
func TestInstallDuplicateContentArtifacts(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	key := filepath.Join(dir, "key")
	instMustCLI(t, "keygen", "--out", key, "--public", key+".pub")
	img := bytes.Repeat([]byte("same image bytes "), 200_000)
	instWrite(t, filepath.Join(dir, "src", "liblockbox.so"), []byte("lib"), 0o644)
	instWrite(t, filepath.Join(dir, "src", "lockbox-helper"), []byte("#!/bin/sh\n"), 0o755)
	for _, name := range []string{"a.tar.zst", "b.tar.zst", "c.tar.zst"} {
		instWrite(t, filepath.Join(dir, "src", "images", name), img, 0o644)
	}
	instMustCLI(t, "release", "--version", "7.9.2-test", "--out", filepath.Join(dir, "dist"), "--key", key,
		"--lib", filepath.Join(dir, "src", "liblockbox.so"), "--helper", filepath.Join(dir, "src", "lockbox-helper"),
		"--images", filepath.Join(dir, "src", "images"))
	pub, _ := os.ReadFile(key + ".pub")
	srv := instServe(t, filepath.Join(dir, "dist"), nil)
	inst, err := lockbox.EnsureInstalled(context.Background(), lockbox.WithVersion("7.9.2-test"),
		lockbox.WithReleaseURL(srv.URL), lockbox.WithInstallDir(t.TempDir()), lockbox.WithTrustedKey(string(pub)))
	if err != nil {
		t.Fatal(err)
	}
	instMustCLI(t, "verify", inst.Dir, "--trusted-key", key+".pub")
}

// An https mirror with a private CA: the SDK trusts it through
// SSL_CERT_FILE, and not without it.
func TestInstallOverHTTPSWithPrivateCA(t *testing.T) {
	t.Parallel()
	rel := instBuildRelease(t, "7.9.3-test", 256<<10)
	caPEM, leaf := instTestCA(t)
	srv := httptest.NewUnstartedServer(http.FileServer(http.Dir(rel.dist)))
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{leaf}}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	ca := filepath.Join(t.TempDir(), "ca.pem")
	instWrite(t, ca, caPEM, 0o644)

	sdkRoot := t.TempDir()
	env := []string{"LOCKBOX_HOME=" + sdkRoot, "LOCKBOX_RELEASE_URL=" + srv.URL,
		"LOCKBOX_INSTALL_CHILD_VERSION=" + rel.version, "LOCKBOX_INSTALL_CHILD_KEY=" + rel.pubKey}
	if out, err := instChild(env...).CombinedOutput(); err == nil || !strings.Contains(string(out), "certificate") {
		t.Fatalf("the SDK trusted an unknown CA:\n%s", out)
	}
	out, err := instChild(append(env, "SSL_CERT_FILE="+ca)...).CombinedOutput()
	if err != nil {
		t.Fatalf("SDK over https: %v\n%s", err, out)
	}
	instMustCLI(t, "verify", instChildResult(t, out)["dir"], "--trusted-key", rel.keyFile+".pub")
}

// Attacks on the installer (item 10 of issue 9): a hostile release server
// and a hostile local user (simulated by files chowned to uid 65534 and
// directories others can write). Each asserts that the attack failed and
// that nothing of the attacker's was installed or loaded, and first shows
// that its detector sees a real success.

const instAttackerUID = 65534

func instNeedRoot(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("chowning files to another user (the simulated attacker) needs root")
	}
}

// (b) A marker forged from the public pinned manifest, over planted
// files, must never get a library dlopen()ed: the planted library's
// constructor would run in the caller.
func TestInstallAttackPlantedLibraryIsNeverLoaded(t *testing.T) {
	t.Parallel()
	instNeedRoot(t)
	pin := instPinnedManifest(t)
	var libSize int64
	for _, a := range pin.artifacts {
		if a.Kind == "library" {
			libSize = a.Size
		}
	}
	work := t.TempDir()
	ran := filepath.Join(work, "constructor-ran")
	planted := instBuildPlantedLib(t, work, ran, libSize)

	// Control: loading the planted library directly runs its constructor,
	// so a missing ran file below means it was never loaded.
	if r := instLoadChild(t, t.TempDir(), "LOCKBOX_LIB="+planted); !strings.Contains(r["load_error"], "missing symbol") {
		t.Fatalf("control load: %v", r)
	}
	if _, err := os.Stat(ran); err != nil {
		t.Fatal("control: the planted library's constructor did not run, the probe is blind")
	}
	os.Remove(ran)

	// plant makes a tree that looks installed for the pinned version: the
	// forged marker and, unless told otherwise, every artifact at its
	// manifest size (the library being the planted one), owned by us.
	plant := func(mutate func(root, dir, lib string)) string {
		root := t.TempDir()
		dir := filepath.Join(root, "versions", lockbox.Version)
		instWrite(t, filepath.Join(dir, ".complete"), []byte(pin.marker), 0o644)
		for _, a := range pin.artifacts {
			p := filepath.Join(dir, filepath.FromSlash(a.Path))
			if a.Kind == "library" {
				b, _ := os.ReadFile(planted)
				instWrite(t, p, b, 0o644)
			} else {
				instWrite(t, p, nil, 0o644)
				os.Truncate(p, a.Size)
			}
		}
		mutate(root, dir, filepath.Join(dir, "lib", "liblockbox.so"))
		return root
	}
	chown := func(p string) {
		if err := os.Lchown(p, instAttackerUID, instAttackerUID); err != nil {
			t.Fatal(err)
		}
	}
	cases := []struct {
		name, want string
		mutate     func(root, dir, lib string)
	}{
		{"marker alone, no files", "no such file", func(root, dir, lib string) {
			for _, sub := range []string{"lib", "bin", "images"} {
				os.RemoveAll(filepath.Join(dir, sub))
			}
		}},
		{"library owned by another user", "owned by uid 65534", func(root, dir, lib string) { chown(lib) }},
		{"library is a symlink to the attacker's file", "symbolic link", func(root, dir, lib string) {
			os.Remove(lib)
			os.Symlink(planted, lib)
		}},
		{"library writable by others", "writable by group or others", func(root, dir, lib string) { os.Chmod(lib, 0o666) }},
		{"lib dir writable by others", "writable by group or others", func(root, dir, lib string) { os.Chmod(filepath.Dir(lib), 0o777) }},
		{"install dir owned by another user", "owned by uid 65534", func(root, dir, lib string) { chown(root) }},
		{"wrong size", "bytes, the manifest says", func(root, dir, lib string) { os.Truncate(lib, libSize-1) }},
		// Owned by us, right size, wrong bytes (a restored cache, a file
		// swapped after the install): only the re-hash before load sees it.
		{"right size, wrong bytes", "sha256", func(root, dir, lib string) {}},
	}
	for _, c := range cases {
		root := plant(c.mutate)
		if c.name != "right size, wrong bytes" && lockbox.IsInstalled(lockbox.WithInstallDir(root)) {
			t.Errorf("%s: IsInstalled = true", c.name)
		}
		r := instLoadChild(t, root)
		if !strings.Contains(r["load_error"], "refusing to load") || !strings.Contains(r["load_error"], c.want) {
			t.Errorf("%s: load error %q, want it to refuse with %q", c.name, r["load_error"], c.want)
		}
		if _, err := os.Stat(ran); err == nil {
			t.Fatalf("%s: the planted library was loaded (its constructor ran)", c.name)
		}
	}
}

// (b) for any version: a copy of the public signed manifest with its
// marker, and no files, is not an install.
func TestInstallAttackForgedMarkerWithoutFiles(t *testing.T) {
	t.Parallel()
	rel := instBuildRelease(t, "7.10.1-test", 64<<10)
	root := t.TempDir()
	dir := filepath.Join(root, "versions", rel.version)
	manifest, _ := os.ReadFile(filepath.Join(rel.dist, rel.version, "manifest.json"))
	sig, _ := os.ReadFile(filepath.Join(rel.dist, rel.version, "manifest.json.sig"))
	instWrite(t, filepath.Join(dir, "manifest.json"), manifest, 0o644)
	instWrite(t, filepath.Join(dir, "manifest.json.sig"), sig, 0o644)
	instWrite(t, filepath.Join(dir, ".complete"), []byte(instSHA256(manifest)+"\n"), 0o644)
	os.Chmod(filepath.Join(root, "versions"), 0o700)
	os.Chmod(dir, 0o700)
	// Control: with the files in place the same tree counts as installed.
	okRoot := t.TempDir()
	if _, err := lockbox.EnsureInstalled(context.Background(), instOpts(rel, rel.dist, okRoot)...); err != nil {
		t.Fatal(err)
	}
	if !lockbox.IsInstalled(instOpts(rel, "", okRoot)...) {
		t.Fatal("control: a real install is not reported installed")
	}
	if lockbox.IsInstalled(instOpts(rel, "", root)...) {
		t.Fatal("a forged marker without files counts as installed")
	}
	_, err := lockbox.EnsureInstalled(context.Background(), append(instOpts(rel, "", root), lockbox.WithOffline(true))...)
	if !errors.Is(err, lockbox.ErrNotInstalled) || !strings.Contains(err.Error(), "lib/liblockbox.so") {
		t.Fatalf("offline over a forged marker: %v", err)
	}
	if _, stderr, code := instCLI(t, "verify", dir, "--trusted-key", rel.keyFile+".pub"); code != 3 || !strings.Contains(stderr, "lib/liblockbox.so") {
		t.Fatalf("verify of a forged marker: exit %d\n%s", code, stderr)
	}
	// The next online install replaces it with the real thing.
	inst, err := lockbox.EnsureInstalled(context.Background(), instOpts(rel, rel.dist, root)...)
	if err != nil {
		t.Fatal(err)
	}
	instMustCLI(t, "verify", inst.Dir, "--trusted-key", rel.keyFile+".pub")
}

// (a) Symlinks planted at every path an installer could predict: the
// download path older installers used, and the version dir itself. The
// install writes through none of them, and what it installs is a regular
// file with the release's bytes.
func TestInstallAttackSymlinksAtPredictablePaths(t *testing.T) {
	t.Parallel()
	rel := instBuildRelease(t, "7.10.2-test", 256<<10)
	srv := instServe(t, rel.dist, nil)
	attacker := t.TempDir()
	victim := filepath.Join(attacker, "victim")
	instWrite(t, victim, []byte("the attacker's file"), 0o644)
	fakeTree := filepath.Join(attacker, "fake-version")
	instWrite(t, filepath.Join(fakeTree, "lib", "liblockbox.so"), []byte("planted"), 0o644)
	before := instSnapshot(t, attacker)

	// Control: opening the planted link the way the old installer did
	// (O_RDWR|O_CREATE, following it) writes the victim.
	probeVictim := filepath.Join(t.TempDir(), "probe-victim")
	instWrite(t, probeVictim, []byte("x"), 0o644)
	probeLink := filepath.Join(t.TempDir(), "probe-link")
	os.Symlink(probeVictim, probeLink)
	if f, err := os.OpenFile(probeLink, os.O_RDWR|os.O_CREATE, 0o600); err == nil {
		f.WriteAt([]byte("y"), 0)
		f.Close()
	}
	if b, _ := os.ReadFile(probeVictim); string(b) != "y" {
		t.Fatal("control: a write through the planted link did not reach the victim, the probe is blind")
	}

	root := t.TempDir()
	versions := filepath.Join(root, "versions")
	partDir := filepath.Join(versions, ".partial-"+rel.version)
	if err := os.MkdirAll(partDir, 0o700); err != nil {
		t.Fatal(err)
	}
	os.Chmod(versions, 0o700)
	os.Symlink(victim, filepath.Join(partDir, instSHA256(rel.lib)+"-lib_liblockbox.so"))
	os.Symlink(fakeTree, filepath.Join(versions, rel.version))
	inst, err := lockbox.EnsureInstalled(context.Background(), instOpts(rel, srv.URL, root)...)
	if err != nil {
		t.Fatal(err)
	}
	dir := inst.Dir
	for _, p := range []string{dir, filepath.Join(dir, "lib"), filepath.Join(dir, "lib", "liblockbox.so")} {
		if fi, err := os.Lstat(p); err != nil || fi.Mode()&os.ModeSymlink != 0 {
			t.Fatalf("%s is not a real file or directory: %v %v", p, fi, err)
		}
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "lib", "liblockbox.so")); !bytes.Equal(b, rel.lib) {
		t.Fatal("installed library differs from the release")
	}
	instMustCLI(t, "verify", dir, "--trusted-key", rel.keyFile+".pub")
	if after := instSnapshot(t, attacker); !reflect.DeepEqual(before, after) {
		t.Fatal("the attacker's files changed")
	}
	// The old failure: the installed library a link to a file with the
	// right bytes elsewhere still counted as installed and verified.
	copyOfLib := filepath.Join(attacker, "lib-copy")
	instWrite(t, copyOfLib, rel.lib, 0o644)
	lib := filepath.Join(dir, "lib", "liblockbox.so")
	os.Remove(lib)
	os.Symlink(copyOfLib, lib)
	if lockbox.IsInstalled(instOpts(rel, "", root)...) {
		t.Fatal("a symlinked library counts as installed")
	}
	if _, stderr, code := instCLI(t, "verify", dir, "--trusted-key", rel.keyFile+".pub"); code == 0 || !strings.Contains(stderr, "symbolic link") {
		t.Fatalf("verify of a symlinked library: exit %d\n%s", code, stderr)
	}
}

// A shared install dir, writable by another local user, or owned by one,
// is refused with a clear error before anything is written; a sticky
// world-writable parent (like /tmp) is fine.
func TestInstallAttackSharedInstallDir(t *testing.T) {
	t.Parallel()
	instNeedRoot(t)
	rel := instBuildRelease(t, "7.10.3-test", 64<<10)
	srv := instServe(t, rel.dist, nil)
	refused := func(name, root, want string) {
		t.Helper()
		_, err := lockbox.EnsureInstalled(context.Background(), instOpts(rel, srv.URL, root)...)
		if !errors.Is(err, lockbox.ErrInstallDirUnsafe) || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: SDK: %v (want ErrInstallDirUnsafe, %q)", name, err, want)
		}
		if lockbox.IsInstalled(instOpts(rel, "", root)...) {
			t.Errorf("%s: IsInstalled = true", name)
		}
	}

	// A world-writable parent: the attacker could swap the root; it has
	// already planted a link where older installers downloaded.
	shared := t.TempDir()
	os.Chmod(shared, 0o777)
	root := filepath.Join(shared, "lockbox")
	victim := filepath.Join(t.TempDir(), "victim")
	instWrite(t, victim, []byte("victim"), 0o644)
	link := filepath.Join(root, "versions", ".partial-"+rel.version, instSHA256(rel.lib)+"-lib_liblockbox.so")
	os.MkdirAll(filepath.Dir(link), 0o777)
	os.Symlink(victim, link)
	for _, p := range []string{root, filepath.Dir(filepath.Dir(link)), filepath.Dir(link), link} {
		os.Lchown(p, instAttackerUID, instAttackerUID)
	}
	refused("world-writable parent", root, "writable by group or others")
	if b, _ := os.ReadFile(victim); string(b) != "victim" {
		t.Fatal("the installer wrote through the attacker's link")
	}
	if _, err := os.Lstat(filepath.Join(root, "versions", rel.version)); err == nil {
		t.Fatal("something was installed into the shared dir")
	}

	// An install root owned by another user.
	owned := t.TempDir()
	os.Chown(owned, instAttackerUID, instAttackerUID)
	refused("root owned by uid 65534", owned, "owned by uid 65534")
	if entries, _ := os.ReadDir(owned); len(entries) != 0 {
		t.Fatalf("written into a dir owned by another user: %v", entries)
	}

	// A good install whose versions dir is later opened to everyone stops
	// counting as installed and is not installed into again.
	good := t.TempDir()
	if _, err := lockbox.EnsureInstalled(context.Background(), instOpts(rel, srv.URL, good)...); err != nil {
		t.Fatal(err)
	}
	os.Chmod(filepath.Join(good, "versions"), 0o777)
	refused("versions dir opened to others after the install", good, "writable by group or others")

	// Control: under a sticky world-writable dir, as under /tmp, it works,
	// and every directory the installer made is 0700.
	sticky := t.TempDir()
	os.Chmod(sticky, 0o777|os.ModeSticky)
	inst, err := lockbox.EnsureInstalled(context.Background(), instOpts(rel, srv.URL, filepath.Join(sticky, "sdk"))...)
	if err != nil {
		t.Fatalf("under a sticky dir: %v", err)
	}
	for _, d := range []string{filepath.Join(sticky, "sdk"), filepath.Join(sticky, "sdk", "versions"), inst.Dir, filepath.Join(inst.Dir, "lib")} {
		if fi, err := os.Stat(d); err != nil || fi.Mode().Perm() != 0o700 {
			t.Errorf("%s: %v %v, want a 0700 directory", d, fi, err)
		}
	}
}

// (c) A canceled or failed install, fed wrong bytes by a hostile server,
// leaves nothing the next install trusts: the next honest install
// succeeds first time and fetches everything.
func TestInstallAttackCanceledInstallLeavesNothing(t *testing.T) {
	t.Parallel()
	rel := instBuildRelease(t, "7.10.4-test", 4<<20)
	hostile := func(w http.ResponseWriter, r *http.Request, hit int) bool {
		if !strings.HasSuffix(r.URL.Path, instLibPath) || hit != 1 {
			return false
		}
		w.Header().Set("Content-Length", strconv.Itoa(len(rel.lib)))
		w.Write(bytes.Repeat([]byte{0xAA}, 1<<20)) // not the library's bytes
		w.(http.Flusher).Flush()
		<-r.Context().Done()
		return true
	}
	assertClean := func(root string) {
		t.Helper()
		instAssertNotInstalled(t, root, rel.version, lockbox.WithTrustedKey(rel.pubKey))
		entries, _ := os.ReadDir(filepath.Join(root, "versions"))
		for _, e := range entries {
			if strings.HasPrefix(e.Name(), ".") {
				t.Fatalf("left behind: %s", e.Name())
			}
		}
	}
	// SDK: canceled once the wrong MiB is in.
	srv := instServe(t, rel.dist, hostile)
	root := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	_, err := lockbox.EnsureInstalled(ctx, append(instOpts(rel, srv.URL, root), lockbox.WithProgress(func(ev lockbox.InstallEvent) {
		if ev.Kind == lockbox.InstallDownloading && ev.Bytes >= 1<<20 {
			cancel()
		}
	}))...)
	cancel()
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("canceled install: %v", err)
	}
	assertClean(root)
	if _, err := lockbox.EnsureInstalled(context.Background(), instOpts(rel, srv.URL, root)...); err != nil {
		t.Fatalf("first honest install after a canceled one: %v", err)
	}
	if r := srv.ranges(instLibPath); len(r) != 2 || r[1] != "" {
		t.Fatalf("Range headers %q: the canceled install's bytes were reused", r)
	}
}

// (d) A server that drips bytes (never silent for a whole stall window)
// is abandoned by the minimum rate; one that keeps up the rate but never
// finishes runs into the overall bound.
func TestInstallAttackDripServer(t *testing.T) {
	t.Parallel()
	rel := instBuildRelease(t, "7.10.5-test", 1<<20)
	dripFirst := instServe(t, rel.dist, func(w http.ResponseWriter, r *http.Request, hit int) bool {
		if !strings.HasSuffix(r.URL.Path, instLibPath) || hit != 1 {
			return false
		}
		instDrip(w, r, rel.lib, 1, 100*time.Millisecond)
		return true
	})
	var retryErr error
	start := time.Now()
	_, err := lockbox.EnsureInstalled(context.Background(), append(instOpts(rel, dripFirst.URL, t.TempDir()),
		lockbox.WithStallTimeout(time.Second),
		lockbox.WithProgress(func(ev lockbox.InstallEvent) {
			if ev.Kind == lockbox.InstallRetrying {
				retryErr = ev.Err
			}
		}))...)
	if err != nil || retryErr == nil || !strings.Contains(retryErr.Error(), "fewer than") {
		t.Fatalf("drip then honest: %v (retry: %v)", err, retryErr)
	}
	// Dripped in full, the library takes over a day: 30 s is slack for a
	// loaded machine, not for the drip.
	if d := time.Since(start); d > 30*time.Second {
		t.Fatalf("the drip held the install %v", d)
	}

	dripAlways := instServe(t, rel.dist, func(w http.ResponseWriter, r *http.Request, hit int) bool {
		if !strings.HasSuffix(r.URL.Path, instLibPath) {
			return false
		}
		instDrip(w, r, rel.lib, 1, 100*time.Millisecond)
		return true
	})
	// Control: without a minimum rate the drip is progress, and only the
	// overall bound ends the install: no attempt was ever abandoned.
	retryErr = nil
	root := t.TempDir()
	_, err = lockbox.EnsureInstalled(context.Background(), append(instOpts(rel, dripAlways.URL, root),
		lockbox.WithStallTimeout(time.Second), lockbox.WithMinDownloadRate(0), lockbox.WithInstallTimeout(1500*time.Millisecond),
		lockbox.WithProgress(func(ev lockbox.InstallEvent) {
			if ev.Kind == lockbox.InstallRetrying {
				retryErr = ev.Err
			}
		}))...)
	if !errors.Is(err, context.DeadlineExceeded) || retryErr != nil {
		t.Fatalf("control, no minimum rate: %v (retry: %v)", err, retryErr)
	}
	instAssertNotInstalled(t, root, rel.version, lockbox.WithTrustedKey(rel.pubKey))

	// Fast enough for the minimum rate (40 KiB/s), too slow to finish in
	// the overall bound: the bound ends it.
	slow := instServe(t, rel.dist, func(w http.ResponseWriter, r *http.Request, hit int) bool {
		if !strings.HasSuffix(r.URL.Path, instLibPath) {
			return false
		}
		instDrip(w, r, rel.lib, 4<<10, 100*time.Millisecond)
		return true
	})
	root = t.TempDir()
	start = time.Now()
	_, err = lockbox.EnsureInstalled(context.Background(), append(instOpts(rel, slow.URL, root), lockbox.WithInstallTimeout(1500*time.Millisecond))...)
	// Under the 25 s the slow download would take, with slack for load.
	if !errors.Is(err, context.DeadlineExceeded) || time.Since(start) > 15*time.Second {
		t.Fatalf("overall bound: %v after %v", err, time.Since(start))
	}
	instAssertNotInstalled(t, root, rel.version, lockbox.WithTrustedKey(rel.pubKey))
}

// (d) Waiting for another process's install lock ends at the deadline:
// the SDK's ctx or WithInstallTimeout.
func TestInstallLockWaitHonoursDeadline(t *testing.T) {
	t.Parallel()
	rel := instBuildRelease(t, "7.10.6-test", 64<<10)
	srv := instServe(t, rel.dist, nil)
	root := t.TempDir()
	release := instFlock(t, filepath.Join(root, "versions", rel.version+".lock"))
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	start := time.Now()
	// The lock is held for the whole test: an install that ignored its
	// deadline would never return. 15 s is slack for a loaded machine.
	if _, err := lockbox.EnsureInstalled(ctx, instOpts(rel, srv.URL, root)...); !errors.Is(err, context.DeadlineExceeded) || time.Since(start) > 15*time.Second {
		t.Fatalf("SDK waiting for the lock: %v after %v", err, time.Since(start))
	}
	start = time.Now()
	if _, err := lockbox.EnsureInstalled(context.Background(), append(instOpts(rel, srv.URL, root), lockbox.WithInstallTimeout(500*time.Millisecond))...); !errors.Is(err, context.DeadlineExceeded) || time.Since(start) > 15*time.Second {
		t.Fatalf("SDK waiting for the lock, WithInstallTimeout: %v after %v", err, time.Since(start))
	}
	// Control: the lock was what held them; released, the install runs.
	release()
	if _, err := lockbox.EnsureInstalled(context.Background(), instOpts(rel, srv.URL, root)...); err != nil {
		t.Fatal(err)
	}
}

// (d) A FIFO (or any non-regular file) in a directory mirror is refused
// at once instead of blocking the install, and by verify of the mirror.
func TestInstallDirectoryMirrorFIFO(t *testing.T) {
	t.Parallel()
	rel := instBuildRelease(t, "7.10.7-test", 64<<10)
	// Control: an ordinary open of a FIFO blocks (until a writer comes).
	probe := filepath.Join(t.TempDir(), "fifo")
	if err := syscall.Mkfifo(probe, 0o644); err != nil {
		t.Fatal(err)
	}
	opened := make(chan struct{})
	go func() {
		if f, err := os.Open(probe); err == nil {
			f.Close()
		}
		close(opened)
	}()
	select {
	case <-opened:
		t.Fatal("control: opening a FIFO did not block, the probe is blind")
	case <-time.After(200 * time.Millisecond):
	}
	if w, err := os.OpenFile(probe, os.O_WRONLY, 0); err == nil {
		w.Close()
	}
	<-opened

	for _, name := range []string{"lib/liblockbox.so", "manifest.json.sig"} {
		mirror := filepath.Join(t.TempDir(), "mirror")
		if out, err := exec.Command("cp", "-a", rel.dist, mirror).CombinedOutput(); err != nil {
			t.Fatalf("cp: %v\n%s", err, out)
		}
		p := filepath.Join(mirror, rel.version, filepath.FromSlash(name))
		os.Remove(p)
		if err := syscall.Mkfifo(p, 0o644); err != nil {
			t.Fatal(err)
		}
		root := t.TempDir()
		// A blocked open would last until the context's end (2 min):
		// refused "at once" is well under that, with room for a loaded
		// machine.
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		start := time.Now()
		_, err := lockbox.EnsureInstalled(ctx, instOpts(rel, mirror, root)...)
		cancel()
		if !errors.Is(err, lockbox.ErrVerification) || !strings.Contains(err.Error(), "not a regular file") || time.Since(start) > 30*time.Second {
			t.Fatalf("%s a FIFO: SDK: %v after %v", name, err, time.Since(start))
		}
		instAssertNotInstalled(t, root, rel.version, lockbox.WithTrustedKey(rel.pubKey))
		start = time.Now()
		_, stderr, code := instCLI(t, "verify", filepath.Join(mirror, rel.version), "--trusted-key", rel.keyFile+".pub")
		if code != 3 || !strings.Contains(stderr, "not a regular file") || time.Since(start) > 30*time.Second {
			t.Fatalf("%s a FIFO: verify: exit %d after %v\n%s", name, code, time.Since(start), stderr)
		}
	}
}

// (b) The positive side of the load checks: a library installed and
// verified through EnsureInstalled is what the loader dlopen()s (its
// constructor runs); the same file changed in place afterwards, keeping
// its size, owner and mode, is refused by the re-hash before load.
func TestInstallLoaderRehashesTheLibrary(t *testing.T) {
	t.Parallel()
	work := t.TempDir()
	ran := filepath.Join(work, "constructor-ran")
	lib := instBuildPlantedLib(t, work, ran, 0)
	key := filepath.Join(work, "key")
	instMustCLI(t, "keygen", "--out", key, "--public", key+".pub")
	instWrite(t, filepath.Join(work, "lockbox-helper"), []byte("#!/bin/sh\n"), 0o755)
	dist := filepath.Join(work, "dist")
	instMustCLI(t, "release", "--version", "7.10.8-test", "--out", dist, "--key", key,
		"--lib", lib, "--helper", filepath.Join(work, "lockbox-helper"), "--images", filepath.Join(work, "no-images"))
	pub, _ := os.ReadFile(key + ".pub")
	root := t.TempDir()
	env := []string{"LOCKBOX_HOME=" + root, "LOCKBOX_RELEASE_URL=" + dist, "LOCKBOX_INSTALL_CHILD_MODE=install-load",
		"LOCKBOX_INSTALL_CHILD_VERSION=7.10.8-test", "LOCKBOX_INSTALL_CHILD_KEY=" + string(pub)}
	run := func() map[string]string {
		out, err := instChild(env...).CombinedOutput()
		if err != nil {
			t.Fatalf("child: %v\n%s", err, out)
		}
		return instChildResult(t, out)
	}
	r := run()
	if !strings.Contains(r["load_error"], "missing symbol") || !strings.HasPrefix(r["lib"], root) {
		t.Fatalf("verified install: %v", r)
	}
	if _, err := os.Stat(ran); err != nil {
		t.Fatal("control: the verified library was not loaded through the installer path")
	}
	os.Remove(ran)
	b, err := os.ReadFile(r["lib"])
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)-1] ^= 0xff // trailing bytes: still a loadable library
	if err := os.WriteFile(r["lib"], b, 0o644); err != nil {
		t.Fatal(err)
	}
	r = run()
	if !strings.Contains(r["load_error"], "refusing to load") || !strings.Contains(r["load_error"], "sha256") {
		t.Fatalf("changed library: %v", r)
	}
	if _, err := os.Stat(ran); err == nil {
		t.Fatal("the changed library was loaded (its constructor ran)")
	}
	// Control: the changed file is still a library whose constructor runs
	// when loaded without the checks (LOCKBOX_LIB).
	instLoadChild(t, t.TempDir(), "LOCKBOX_LIB="+r["lib"])
	if _, err := os.Stat(ran); err != nil {
		t.Fatal("control: the changed library does not load at all, the probe is blind")
	}
}
