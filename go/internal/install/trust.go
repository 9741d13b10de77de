package install

import (
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"io/fs"
	"os"
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
// the manifest of the pinned version, both embedded at build time.
type embeddedTrust struct {
	keys         []trustedKey
	pinBytes     []byte // nil when this tree has no pin for Version yet
	pinSHA256    string
	pinManifest  *releaseManifest
	pinMarkerStr string
	err          error
}

// pinSource is where the trusted keys and the pinned manifest come from,
// and a name for errors. Host.DevPin comes from package lockbox's devPin,
// which only the linker sets: what a program trusts is decided when it is
// built, by whoever builds it.
func pinSource(devPin string) (fs.FS, string, string) {
	if devPin != "" {
		return os.DirFS(devPin), ".", "development pin " + devPin
	}
	return pin.FS, "data", "embedded"
}

var loadTrust = sync.OnceValue(func() *embeddedTrust {
	h := currentHost()
	return readTrust(h.DevPin, h.Version)
})

// readTrust reads the keys and the pinned manifest of version from the
// development pin when one is set, else from the embedded pin.
func readTrust(devPin, version string) *embeddedTrust {
	t := &embeddedTrust{}
	src, dir, what := pinSource(devPin)
	entries, err := fs.ReadDir(src, path.Join(dir, "keys"))
	if err != nil && devPin != "" {
		t.err = fmt.Errorf("%s: %v", what, err)
	}
	for _, e := range entries {
		if !strings.HasSuffix(e.Name(), ".pub") {
			continue
		}
		b, err := fs.ReadFile(src, path.Join(dir, "keys", e.Name()))
		var k ed25519.PublicKey
		if err == nil {
			k, err = ParsePublicKey(string(b))
		}
		if err != nil {
			// A key that does not parse is an error of the whole pin, never
			// an empty key left in the list for a later signature check.
			if t.err == nil {
				t.err = fmt.Errorf("%s key %s: %v", what, e.Name(), err)
			}
			continue
		}
		t.keys = append(t.keys, trustedKey{strings.TrimSuffix(e.Name(), ".pub"), k})
	}
	if b, err := fs.ReadFile(src, path.Join(dir, version, manifestFile)); err == nil {
		t.pinBytes = b
		t.pinSHA256 = sha256Hex(b)
		t.pinMarkerStr = markerContent(t.pinSHA256)
		m, perr := parseManifest(b)
		t.pinManifest = m
		if t.err == nil {
			t.err = perr
		}
	}
	return t
}

func sha256Hex(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// ParsePublicKey reads a key file: base64 of the 32-byte ed25519 key.
func ParsePublicKey(text string) (ed25519.PublicKey, error) {
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
		// ed25519.Verify panics on a key of the wrong length.
		if len(k.key) == ed25519.PublicKeySize && ed25519.Verify(k.key, manifest, raw) {
			return k.name, nil
		}
	}
	return "", fmt.Errorf("%w: manifest signature matches none of the %d trusted key(s)", ErrVerification, len(keys))
}
