package install

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"lockbox.dev/lockbox/internal/pin"
)

// Version stands in for lockbox.Version, which this package cannot import:
// the one version the embedded pin holds (the committed tree has exactly
// one), else a version with no pin.
var Version = func() string {
	ents, _ := fs.ReadDir(pin.FS, "data")
	for _, e := range ents {
		if e.IsDir() && e.Name() != "keys" {
			return e.Name()
		}
	}
	return "0.0.0-unpinned"
}()

func TestMain(m *testing.M) {
	Configure(Host{Version: Version})
	os.Exit(m.Run())
}

// The trust a process starts with stays: a second Configure (another
// pinned version, a development pin) changes nothing. Control: the first
// Configure did take effect.
func TestConfigureOnlyOnce(t *testing.T) {
	if currentHost().Version != Version {
		t.Fatalf("control: TestMain's Configure did not take: %+v", currentHost())
	}
	Configure(Host{Version: "9.9.9", DevPin: t.TempDir()})
	if h := currentHost(); h.Version != Version || h.DevPin != "" {
		t.Fatalf("a second Configure replaced the host: %+v", h)
	}
}

// settings resolves an install of version v into a fresh root, trusting
// pub as well as the embedded keys.
func settings(t testing.TB, dir, v string, pub ed25519.PublicKey) *Settings {
	t.Helper()
	s := Defaults()
	s.Version, s.Root, s.ExtraKeys = v, dir, []ed25519.PublicKey{pub}
	if err := Resolve(&s); err != nil {
		t.Fatal(err)
	}
	return &s
}

func TestEmbeddedTrustLoads(t *testing.T) {
	tr := loadTrust()
	if tr.err != nil {
		t.Fatal(tr.err)
	}
	if len(tr.keys) == 0 {
		t.Fatal("no embedded trusted keys (manifests/keys/*.pub via go/internal/pin)")
	}
	if tr.pinBytes != nil && tr.pinManifest.Version != Version {
		t.Fatalf("embedded pin is for %s, SDK is %s", tr.pinManifest.Version, Version)
	}
}

// signedManifest returns manifest bytes for version v, its signature file
// content, and an installer trusting the signer.
func signedManifest(t *testing.T, v string) ([]byte, []byte, *installer) {
	return signedManifestABI(t, v, "1")
}

func signedManifestABI(t *testing.T, v, abi string) ([]byte, []byte, *installer) {
	t.Helper()
	pub, priv, _ := ed25519.GenerateKey(rand.Reader)
	m := `{"schema_version":1,"product":"lockbox","version":"` + v + `","abi_version":` + abi + `,"platforms":{"` + platformName() +
		`":[{"name":"liblockbox.so","path":"lib/liblockbox.so","kind":"library","size":1,"sha256":"` + strings.Repeat("a", 64) + `"}]}}`
	sig := base64.StdEncoding.EncodeToString(ed25519.Sign(priv, []byte(m))) + "\n"
	return []byte(m), []byte(sig), newInstaller(settings(t, t.TempDir(), v, pub))
}

func TestPinnedManifestMustMatchEmbeddedHash(t *testing.T) {
	mb, sig, in := signedManifest(t, Version)
	if tr := loadTrust(); tr.pinBytes != nil && in.pinSHA256 != tr.pinSHA256 {
		t.Fatal("the pinned version does not use the embedded pin")
	}
	in.pinSHA256 = ""
	if _, err := in.verifyManifest(mb, sig); err != nil {
		t.Fatalf("unpinned, validly signed: %v", err)
	}
	// A validly signed manifest that is not the pinned one is refused.
	in.pinSHA256 = sha256Hex([]byte("the pinned manifest"))
	_, err := in.verifyManifest(mb, sig)
	if !errors.Is(err, ErrVerification) || !strings.Contains(err.Error(), "pinned") {
		t.Fatalf("pin mismatch: %v", err)
	}
	in.pinSHA256 = sha256Hex(mb)
	if _, err := in.verifyManifest(mb, sig); err != nil {
		t.Fatalf("pin match: %v", err)
	}
}

func TestVersionAndABIChecked(t *testing.T) {
	mb, sig, in := signedManifest(t, "1.0.0")
	in.s.Version = "1.0.1"
	if _, err := in.verifyManifest(mb, sig); !errors.Is(err, ErrVerification) {
		t.Fatalf("version mismatch: %v", err)
	}
	mb2, sig2, in2 := signedManifestABI(t, "1.0.0", "2")
	if _, err := in2.verifyManifest(mb2, sig2); !errors.Is(err, ErrVerification) || !strings.Contains(err.Error(), "ABI") {
		t.Fatalf("ABI 2: %v", err)
	}
}

func TestWarmPathNeedsMatchingMarker(t *testing.T) {
	mb, sig, in := signedManifest(t, "2.0.0")
	dir := in.paths.dir
	os.MkdirAll(dir, 0o700)
	os.WriteFile(filepath.Join(dir, manifestFile), mb, 0o644)
	os.WriteFile(filepath.Join(dir, signatureFile), sig, 0o644)
	if _, err := in.checkComplete(); err == nil {
		t.Fatal("complete without a marker")
	}
	os.WriteFile(filepath.Join(dir, markerFile), []byte(markerContent(sha256Hex([]byte("other")))), 0o644)
	if _, err := in.checkComplete(); err == nil {
		t.Fatal("complete with a stale marker")
	}
	os.WriteFile(filepath.Join(dir, markerFile), []byte(markerContent(sha256Hex(mb))), 0o644)
	// The marker is public: without the files it names, it is no install.
	if _, err := in.checkComplete(); err == nil {
		t.Fatal("complete with a marker and no library")
	}
	os.Mkdir(filepath.Join(dir, "lib"), 0o700)
	os.WriteFile(filepath.Join(dir, "lib", "liblockbox.so"), []byte("x"), 0o644) // the manifest's size: 1
	inst, err := in.checkComplete()
	if err != nil || inst.LibraryPath != filepath.Join(dir, "lib", "liblockbox.so") {
		t.Fatalf("complete install: %+v %v", inst, err)
	}
	// The loader's re-hash sees that these are not the manifest's bytes.
	if _, err := installedLibraryFor(in); !errors.Is(err, ErrVerification) || !strings.Contains(err.Error(), "sha256") {
		t.Fatalf("re-hash before load: %v", err)
	}
	// For the pinned version the marker must name the pin, not just the file.
	in.pinSHA256 = "x"
	in.trust = &embeddedTrust{pinMarkerStr: markerContent("y"), pinManifest: in.trust.pinManifest}
	if _, err := in.checkComplete(); err == nil {
		t.Fatal("a marker for another manifest passed the pinned warm path")
	}
}

func TestManifestRejectsUnsafeArtifacts(t *testing.T) {
	good := releaseArtifact{Name: "a", Path: "lib/a.so", Kind: "library", Size: 1, SHA256: strings.Repeat("0", 64)}
	if err := good.validate(); err != nil {
		t.Fatal(err)
	}
	for _, bad := range []func(*releaseArtifact){
		func(a *releaseArtifact) { a.Path = "lib/../../etc/passwd" },
		func(a *releaseArtifact) { a.Path = "/lib/a.so" },
		func(a *releaseArtifact) { a.Path = "lib/.complete" },
		func(a *releaseArtifact) { a.Path = "bin/a.so" },
		func(a *releaseArtifact) { a.Path = "lib/x/a.so" },
		func(a *releaseArtifact) { a.Kind = "script" },
		func(a *releaseArtifact) { a.SHA256 = strings.Repeat("A", 64) },
		func(a *releaseArtifact) { a.Size = -1 },
	} {
		a := good
		bad(&a)
		if a.validate() == nil {
			t.Errorf("accepted %+v", a)
		}
	}
}

func TestRangeStartAndPlatform(t *testing.T) {
	if rangeStart("bytes 100-199/200") != 100 || rangeStart("bytes */200") != -1 || rangeStart("") != -1 {
		t.Fatal("rangeStart")
	}
	if p := platformName(); !strings.HasPrefix(p, "linux-") && !strings.Contains(p, "-") {
		t.Fatalf("platform %q", p)
	}
}

// BenchmarkPreloadCheck: what the loader adds before dlopen of an
// installed library of the pinned library's size (8302712 bytes): the
// tree walk of checkComplete plus the library's re-hash.
func BenchmarkPreloadCheck(b *testing.B) {
	lib := make([]byte, 8302712)
	rand.Read(lib)
	pub, priv, _ := ed25519.GenerateKey(rand.Reader)
	m := `{"schema_version":1,"product":"lockbox","version":"3.0.0","abi_version":1,"platforms":{"` + platformName() +
		`":[{"name":"liblockbox.so","path":"lib/liblockbox.so","kind":"library","size":` + strconv.Itoa(len(lib)) + `,"sha256":"` + sha256Hex(lib) + `"}]}}`
	in := newInstaller(settings(b, b.TempDir(), "3.0.0", pub))
	dir := in.paths.dir
	os.MkdirAll(filepath.Join(dir, "lib"), 0o700)
	os.WriteFile(filepath.Join(dir, "lib", "liblockbox.so"), lib, 0o644)
	os.WriteFile(filepath.Join(dir, manifestFile), []byte(m), 0o644)
	os.WriteFile(filepath.Join(dir, signatureFile), []byte(base64.StdEncoding.EncodeToString(ed25519.Sign(priv, []byte(m)))), 0o644)
	os.WriteFile(filepath.Join(dir, markerFile), []byte(markerContent(sha256Hex([]byte(m)))), 0o644)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := installedLibraryFor(in); err != nil {
			b.Fatal(err)
		}
	}
}
