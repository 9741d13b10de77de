package install

import (
	"crypto/ed25519"
	"encoding/base64"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// A development pin with one key that does not parse: the pin as a whole
// is refused, and no empty key reaches a signature check (where
// ed25519.Verify would panic).
func TestTrustRefusesAPinWithABadKey(t *testing.T) {
	pub, _, err := ed25519.GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	write := func(dir, name, body string) {
		t.Helper()
		if err := os.MkdirAll(filepath.Dir(filepath.Join(dir, name)), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	good := base64.StdEncoding.EncodeToString(pub)
	manifest := `{"schema":1,"version":"9.9.9","abi_version":1,"artifacts":[]}`

	// Control: the same pin with only the good key reads without error.
	ok := t.TempDir()
	write(ok, "keys/good.pub", good)
	write(ok, "9.9.9/manifest.json", manifest)
	if tr := readTrust(ok, "9.9.9"); len(tr.keys) != 1 {
		t.Fatalf("control: %d keys, err %v", len(tr.keys), tr.err)
	}

	bad := t.TempDir()
	write(bad, "keys/a-bad.pub", "not a key")
	write(bad, "keys/good.pub", good)
	write(bad, "9.9.9/manifest.json", manifest)
	tr := readTrust(bad, "9.9.9")
	if tr.err == nil || !strings.Contains(tr.err.Error(), "a-bad.pub") {
		t.Fatalf("a pin with a bad key gave err %v", tr.err)
	}
	for _, k := range tr.keys {
		if len(k.key) != ed25519.PublicKeySize {
			t.Fatalf("key %s of %d bytes kept", k.name, len(k.key))
		}
	}
	// Even a bad key list must not panic a signature check.
	sig := base64.StdEncoding.EncodeToString(make([]byte, ed25519.SignatureSize))
	if _, err := verifySignature([]trustedKey{{"empty", nil}}, []byte(manifest), []byte(sig)); err == nil {
		t.Fatal("an empty key verified a signature")
	}
}
