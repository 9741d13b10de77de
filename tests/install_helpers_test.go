package tests

// Helpers for the install tests: a small but real release built with the
// real release tool (lockbox-installer), a real HTTP server on 127.0.0.1 that can
// misbehave on purpose, child processes, and tree snapshots.

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	crand "crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"io/fs"
	"math/big"
	"math/rand"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"lockbox.dev/lockbox"
)

func instInstallerBin(t testing.TB) string {
	t.Helper()
	if p := os.Getenv("LOCKBOX_INSTALLER_BIN"); p != "" {
		if _, err := os.Stat(p); err != nil {
			t.Fatalf("LOCKBOX_INSTALLER_BIN=%s: %v (make installer-debug builds it)", p, err)
		}
		return p
	}
	for _, p := range []string{"../target/debug/lockbox-installer", "../target/release/lockbox-installer"} {
		if abs, err := filepath.Abs(p); err == nil {
			if _, err := os.Stat(abs); err == nil {
				return abs
			}
		}
	}
	t.Skip("lockbox-installer not built: run `make test-install` (or set LOCKBOX_INSTALLER_BIN)")
	return ""
}

// instCLI runs the release tool and returns stdout, stderr and the exit code.
func instCLI(t testing.TB, args ...string) (string, string, int) {
	t.Helper()
	cmd := exec.Command(instInstallerBin(t), args...)
	cmd.Env = instCleanEnv()
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("run installer: %v", err)
	}
	return out.String(), errb.String(), code
}

func instMustCLI(t testing.TB, args ...string) string {
	t.Helper()
	out, errOut, code := instCLI(t, args...)
	if code != 0 {
		t.Fatalf("lockbox-installer %s: exit %d\n%s", strings.Join(args, " "), code, errOut)
	}
	return out
}

// instCleanEnv drops the install-related variables of the outer
// environment so every test states its own.
func instCleanEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "LOCKBOX_HOME=") || strings.HasPrefix(kv, "LOCKBOX_RELEASE_URL=") ||
			strings.HasPrefix(kv, "LOCKBOX_OFFLINE=") || strings.HasPrefix(kv, "LOCKBOX_LIB=") ||
			strings.HasPrefix(kv, "LOCKBOX_INSTALL_CHILD") {
			continue
		}
		env = append(env, kv)
	}
	return env
}

type instRelease struct {
	dist    string // serve this: <dist>/<version>/...
	version string
	pubKey  string // trusted key file content
	keyFile string
	lib     []byte
}

// instBuildRelease makes a release of tiny real files with the real CLI.
func instBuildRelease(t testing.TB, version string, libSize int) *instRelease {
	t.Helper()
	dir := t.TempDir()
	key := filepath.Join(dir, "key")
	instMustCLI(t, "keygen", "--out", key, "--public", key+".pub")
	return instAddVersion(t, dir, key, version, libSize)
}

// instAddVersion adds another version signed by the same key to dir/dist.
func instAddVersion(t testing.TB, dir, key, version string, libSize int) *instRelease {
	t.Helper()
	src := filepath.Join(dir, "src-"+version)
	lib := make([]byte, libSize)
	rand.New(rand.NewSource(int64(libSize) + int64(len(version)))).Read(lib)
	instWrite(t, filepath.Join(src, "liblockbox.so"), lib, 0o644)
	instWrite(t, filepath.Join(src, "lockbox-helper"), []byte("#!/bin/sh\necho helper "+version+"\n"), 0o755)
	instWrite(t, filepath.Join(src, "images", "base.tar.zst"), bytes.Repeat([]byte("img"), 1000), 0o644)
	dist := filepath.Join(dir, "dist")
	instMustCLI(t, "release", "--version", version, "--out", dist, "--key", key,
		"--lib", filepath.Join(src, "liblockbox.so"), "--helper", filepath.Join(src, "lockbox-helper"),
		"--images", filepath.Join(src, "images"))
	pub, err := os.ReadFile(key + ".pub")
	if err != nil {
		t.Fatal(err)
	}
	return &instRelease{dist: dist, version: version, pubKey: string(pub), keyFile: key, lib: lib}
}

func instWrite(t testing.TB, path string, b []byte, mode os.FileMode) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, b, mode); err != nil {
		t.Fatal(err)
	}
}

// instFault may take over a request (return true). hit counts requests
// for the same path, from 1.
type instFault func(w http.ResponseWriter, r *http.Request, hit int) bool

type instRequest struct{ path, rng string }

// instServer is a real HTTP server on 127.0.0.1 serving a release dir,
// recording requests and optionally misbehaving.
type instServer struct {
	*httptest.Server
	mu       sync.Mutex
	requests []instRequest
	hits     map[string]int
}

func instServe(t testing.TB, dir string, fault instFault) *instServer {
	s := &instServer{hits: map[string]int{}}
	files := http.FileServer(http.Dir(dir))
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		s.hits[r.URL.Path]++
		hit := s.hits[r.URL.Path]
		s.requests = append(s.requests, instRequest{r.URL.Path, r.Header.Get("Range")})
		s.mu.Unlock()
		if fault != nil && fault(w, r, hit) {
			return
		}
		files.ServeHTTP(w, r)
	}))
	t.Cleanup(func() {
		s.CloseClientConnections()
		s.Close()
	})
	return s
}

// count: requests whose path ends with suffix.
func (s *instServer) count(suffix string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, r := range s.requests {
		if strings.HasSuffix(r.path, suffix) {
			n++
		}
	}
	return n
}

func (s *instServer) ranges(suffix string) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for _, r := range s.requests {
		if strings.HasSuffix(r.path, suffix) {
			out = append(out, r.rng)
		}
	}
	return out
}

// instServeFile writes the content of a release file, optionally changed.
func instServeFile(t testing.TB, w http.ResponseWriter, dist, urlPath string, change func([]byte) []byte) {
	b, err := os.ReadFile(filepath.Join(dist, filepath.FromSlash(urlPath)))
	if err != nil {
		http.NotFound(w, nil)
		return
	}
	if change != nil {
		b = change(b)
	}
	w.Write(b)
}

// instTestCA makes a private CA and a server certificate for 127.0.0.1
// signed by it (strict TLS stacks refuse a self-signed leaf).
func instTestCA(t testing.TB) (caPEM []byte, leaf tls.Certificate) {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), crand.Reader)
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "lockbox test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(crand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	leafKey, _ := ecdsa.GenerateKey(elliptic.P256(), crand.Reader)
	leafTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "127.0.0.1"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")},
		KeyUsage:    x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	leafDER, err := x509.CreateCertificate(crand.Reader, leafTmpl, caTmpl, &leafKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}),
		tls.Certificate{Certificate: [][]byte{leafDER}, PrivateKey: leafKey}
}

func instSHA256(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

type instFile struct {
	mode fs.FileMode
	sum  string
}

// instSnapshot: every file and directory under root with mode and sha256.
func instSnapshot(t testing.TB, root string) map[string]instFile {
	t.Helper()
	out := map[string]instFile{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		info, err := d.Info()
		if err != nil {
			return err
		}
		f := instFile{mode: info.Mode()}
		if !d.IsDir() {
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			s := sha256.Sum256(b)
			f.sum = hex.EncodeToString(s[:])
		}
		out[rel] = f
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// instAssertNotInstalled: nothing under versions/ looks installed, and
// no staging or trash is left behind.
func instAssertNotInstalled(t testing.TB, root, version string, opts ...lockbox.InstallOption) {
	t.Helper()
	if lockbox.IsInstalled(append(opts, lockbox.WithInstallDir(root), lockbox.WithVersion(version))...) {
		t.Fatalf("%s reported installed after a failed install", version)
	}
	if _, err := os.Stat(filepath.Join(root, "versions", version)); err == nil {
		t.Fatalf("versions/%s exists after a failed install", version)
	}
	entries, _ := os.ReadDir(filepath.Join(root, "versions"))
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), ".staging-") || strings.HasPrefix(e.Name(), ".trash-") {
			t.Fatalf("left behind: %s", e.Name())
		}
	}
}

// instChild runs this test binary as a child process that installs (see
// TestInstallChildProcess). env: extra KEY=VALUE settings.
func instChild(env ...string) *exec.Cmd {
	cmd := exec.Command(os.Args[0], "-test.run=^TestInstallChildProcess$", "-test.count=1", "-test.v")
	cmd.Env = append(append(instCleanEnv(), "LOCKBOX_INSTALL_CHILD=1"), env...)
	return cmd
}

// instChildResult finds the child's RESULT line.
func instChildResult(t testing.TB, out []byte) map[string]string {
	t.Helper()
	for _, line := range strings.Split(string(out), "\n") {
		if rest, ok := strings.CutPrefix(line, "RESULT "); ok {
			var m map[string]string
			if err := json.Unmarshal([]byte(rest), &m); err != nil {
				t.Fatalf("child result %q: %v", rest, err)
			}
			return m
		}
	}
	t.Fatalf("child printed no result:\n%s", out)
	return nil
}

// instBuildPlantedLib builds, with gcc, the library a hostile local user
// would plant: its constructor creates ranFile, so a test can tell
// whether it was ever dlopen()ed. pad grows it with zeros to that size
// (0: as built).
func instBuildPlantedLib(t testing.TB, dir, ranFile string, pad int64) string {
	t.Helper()
	if _, err := exec.LookPath("gcc"); err != nil {
		t.Skip("gcc is needed to build the planted library")
	}
	src := filepath.Join(dir, "planted.c")
	instWrite(t, src, []byte(`#include <fcntl.h>
#include <unistd.h>
__attribute__((constructor)) static void planted(void) {
	int fd = open(RAN_FILE, O_CREAT | O_WRONLY, 0644);
	if (fd >= 0) close(fd);
}
`), 0o644)
	lib := filepath.Join(dir, "libplanted.so")
	if out, err := exec.Command("gcc", "-shared", "-fPIC", "-o", lib, `-DRAN_FILE="`+ranFile+`"`, src).CombinedOutput(); err != nil {
		t.Fatalf("gcc: %v\n%s", err, out)
	}
	if pad > 0 {
		st, err := os.Stat(lib)
		if err != nil || st.Size() > pad {
			t.Fatalf("planted library larger than %d bytes (%v)", pad, err)
		}
		if err := os.Truncate(lib, pad); err != nil {
			t.Fatal(err)
		}
	}
	return lib
}

// instPinned is the manifest this SDK pins (manifests/<Version>): its
// artifacts for this platform and the .complete content that names it.
// Both are public, so an attacker can forge a marker from them.
type instPinned struct {
	marker    string
	artifacts []struct {
		Path   string `json:"path"`
		Kind   string `json:"kind"`
		Size   int64  `json:"size"`
		SHA256 string `json:"sha256"`
	}
}

// instPinDir is where the pin this test binary trusts lives: the
// development pin `make` linked it with (LOCKBOX_DEV_PIN names it), or the
// committed one.
func instPinDir() string {
	if d := os.Getenv("LOCKBOX_DEV_PIN"); d != "" {
		return d
	}
	return filepath.Join("..", "manifests")
}

func instPinnedManifest(t testing.TB) *instPinned {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(instPinDir(), lockbox.Version, "manifest.json"))
	if err != nil {
		t.Skipf("no pinned manifest for %s: %v", lockbox.Version, err)
	}
	var m struct {
		Platforms map[string]json.RawMessage `json:"platforms"`
	}
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	p := &instPinned{marker: instSHA256(b) + "\n"}
	for name, arts := range m.Platforms {
		if strings.HasSuffix(name, map[string]string{"amd64": "x86_64", "arm64": "aarch64"}[runtime.GOARCH]) {
			if err := json.Unmarshal(arts, &p.artifacts); err != nil {
				t.Fatal(err)
			}
		}
	}
	if len(p.artifacts) == 0 {
		t.Skipf("the pinned manifest has nothing for %s", runtime.GOARCH)
	}
	return p
}

// instLoadChild runs lockbox.Load() in a fresh process with
// LOCKBOX_HOME=root (and env) and returns its result.
func instLoadChild(t testing.TB, root string, env ...string) map[string]string {
	t.Helper()
	out, _ := instChild(append([]string{"LOCKBOX_HOME=" + root, "LOCKBOX_INSTALL_CHILD_MODE=load-only"}, env...)...).CombinedOutput()
	return instChildResult(t, out)
}

// instFlock holds an exclusive flock on path (created 0600, its
// directory 0700) until the returned func is called: another install in
// progress, as far as any installer can tell.
func instFlock(t testing.TB, path string) func() {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	var once sync.Once
	release := func() { once.Do(func() { f.Close() }) }
	t.Cleanup(release)
	return release
}

// instDrip answers a request for body with its headers and then one byte
// every interval until the client goes away: a server that is never
// silent for long, yet never finishes.
func instDrip(w http.ResponseWriter, r *http.Request, body []byte, chunk int, interval time.Duration) {
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(http.StatusOK)
	for off := 0; off < len(body); off += chunk {
		w.Write(body[off:min(off+chunk, len(body))])
		w.(http.Flusher).Flush()
		select {
		case <-r.Context().Done():
			return
		case <-time.After(interval):
		}
	}
}
