package lockbox

import (
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"io/fs"
	"path"
	"strings"
	"sync"

	"lockbox.dev/lockbox/internal/pin"
)

// trustedKey is an ed25519 public key and the file it came from.
type trustedKey struct {
	name string
	key  ed25519.PublicKey
}

// embeddedTrust is what this SDK build trusts: manifests/keys/*.pub and
// the manifest of the pinned Version, both embedded at build time.
type embeddedTrust struct {
	keys         []trustedKey
	pinBytes     []byte // nil when this tree has no pin for Version yet
	pinSHA256    string
	pinManifest  *releaseManifest
	pinMarkerStr string
	err          error
}

var loadTrust = sync.OnceValue(func() *embeddedTrust {
	t := &embeddedTrust{}
	entries, _ := fs.ReadDir(pin.FS, "data/keys")
	for _, e := range entries {
		if !strings.HasSuffix(e.Name(), ".pub") {
			continue
		}
		b, err := fs.ReadFile(pin.FS, path.Join("data/keys", e.Name()))
		if err == nil {
			var k ed25519.PublicKey
			k, err = parsePublicKey(string(b))
			t.keys = append(t.keys, trustedKey{strings.TrimSuffix(e.Name(), ".pub"), k})
		}
		if err != nil {
			t.err = fmt.Errorf("embedded key %s: %v", e.Name(), err)
		}
	}
	if b, err := fs.ReadFile(pin.FS, path.Join("data", Version, manifestFile)); err == nil {
		t.pinBytes = b
		t.pinSHA256 = sha256Hex(b)
		t.pinMarkerStr = markerContent(t.pinSHA256)
		t.pinManifest, t.err = parseManifest(b)
	}
	return t
})

func sha256Hex(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// parsePublicKey reads a key file: base64 of the 32-byte ed25519 key.
func parsePublicKey(text string) (ed25519.PublicKey, error) {
	raw, err := base64.StdEncoding.DecodeString(strings.TrimSpace(text))
	if err != nil {
		return nil, fmt.Errorf("public key is not base64: %v", err)
	}
	if len(raw) != ed25519.PublicKeySize {
		return nil, fmt.Errorf("public key has %d bytes, want %d", len(raw), ed25519.PublicKeySize)
	}
	return ed25519.PublicKey(raw), nil
}

// verifySignature returns the name of the trusted key that signed the
// exact manifest bytes (sig: base64 of the 64-byte signature).
func verifySignature(keys []trustedKey, manifest, sig []byte) (string, error) {
	raw, err := base64.StdEncoding.DecodeString(strings.TrimSpace(string(sig)))
	if err != nil || len(raw) != ed25519.SignatureSize {
		return "", fmt.Errorf("%w: manifest.json.sig is not a base64 ed25519 signature", ErrVerification)
	}
	for _, k := range keys {
		if ed25519.Verify(k.key, manifest, raw) {
			return k.name, nil
		}
	}
	return "", fmt.Errorf("%w: manifest signature matches none of the %d trusted key(s)", ErrVerification, len(keys))
}
