package tests

// Helpers for the install tests: a small but real release built with the
// real lockbox-installer CLI, a real HTTP server on 127.0.0.1 that can
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
	"strings"
	"sync"
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

// instCLI runs the installer CLI and returns stdout, stderr and the exit code.
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
