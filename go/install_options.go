package lockbox

import (
	"crypto/ed25519"
	"fmt"
	"os"
	"path/filepath"
	"time"
)

// InstallOption configures EnsureInstalled and IsInstalled.
type InstallOption func(*installSettings)

type installSettings struct {
	version        string
	releaseURL     string
	root           string
	offline        bool
	progress       func(InstallEvent)
	extraKeys      []trustedKey
	stallTimeout   time.Duration
	minRate        int64
	installTimeout time.Duration
	optErr         error
}

// WithVersion installs another version than the one this SDK pins. Its
// manifest is then checked against the trusted keys only (there are no
// embedded hashes for it).
func WithVersion(v string) InstallOption { return func(s *installSettings) { s.version = v } }

// WithReleaseURL sets the release mirror: http(s)://host/path, file:///dir
// or a plain directory holding <version>/manifest.json and the artifacts.
// Content is verified against the trusted keys and pin whatever the source.
func WithReleaseURL(u string) InstallOption { return func(s *installSettings) { s.releaseURL = u } }

// WithInstallDir sets the install root (default: $LOCKBOX_HOME, else the
// per-user data dir). Versions live in <dir>/versions/<version>.
func WithInstallDir(d string) InstallOption { return func(s *installSettings) { s.root = d } }

// WithOffline never downloads: EnsureInstalled succeeds only if the version
// is already completely installed, and otherwise lists what is missing.
func WithOffline(offline bool) InstallOption { return func(s *installSettings) { s.offline = offline } }

// WithProgress receives install events. Artifacts download concurrently,
// but calls are serialized: f never runs twice at once.
func WithProgress(f func(InstallEvent)) InstallOption {
	return func(s *installSettings) { s.progress = f }
}

// WithTrustedKey trusts another ed25519 public key for manifest signatures,
// in addition to the embedded ones. keyText is the key file's content: the
// base64 of the 32-byte key.
func WithTrustedKey(keyText string) InstallOption {
	return func(s *installSettings) {
		k, err := parsePublicKey(keyText)
		if err != nil {
			s.optErr = fmt.Errorf("WithTrustedKey: %v", err)
			return
		}
		s.extraKeys = append(s.extraKeys, trustedKey{fmt.Sprintf("option-%d", len(s.extraKeys)), ed25519.PublicKey(k)})
	}
}

// WithStallTimeout sets the stall window (default 30s): a download
// attempt that receives less than WithMinDownloadRate's worth of bytes in
// one window is abandoned and retried from where it stopped.
func WithStallTimeout(d time.Duration) InstallOption {
	return func(s *installSettings) {
		if d <= 0 {
			s.optErr = fmt.Errorf("WithStallTimeout: %v is not positive", d)
		}
		s.stallTimeout = d
	}
}

// WithMinDownloadRate sets the rate, in bytes per second averaged over a
// stall window, below which a download attempt counts as stalled (default
// 1024; 0: any byte is progress). It stops a server that drips a byte now
// and then from holding an install for ever.
func WithMinDownloadRate(bytesPerSecond int64) InstallOption {
	return func(s *installSettings) {
		if bytesPerSecond < 0 {
			s.optErr = fmt.Errorf("WithMinDownloadRate: %d is negative", bytesPerSecond)
		}
		s.minRate = bytesPerSecond
	}
}

// WithInstallTimeout bounds an EnsureInstalled that has to install
// (default 1h; 0: only ctx bounds it), including the wait for another
// process's install lock. Past it the error matches context.DeadlineExceeded.
func WithInstallTimeout(d time.Duration) InstallOption {
	return func(s *installSettings) {
		if d < 0 {
			s.optErr = fmt.Errorf("WithInstallTimeout: %v is negative", d)
		}
		s.installTimeout = d
	}
}

func envFlag(name string) bool {
	switch os.Getenv(name) {
	case "1", "true", "yes":
		return true
	}
	return false
}

// defaultRoot is $LOCKBOX_HOME, else the per-user data dir: the same path
// Rust's directories crate gives the engine ($XDG_DATA_HOME/lockbox or
// ~/.local/share/lockbox).
func defaultRoot() (string, error) {
	if h := os.Getenv("LOCKBOX_HOME"); h != "" {
		return h, nil
	}
	if x := os.Getenv("XDG_DATA_HOME"); filepath.IsAbs(x) {
		return filepath.Join(x, "lockbox"), nil
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return "", fmt.Errorf("lockbox: no install dir: set LOCKBOX_HOME or use WithInstallDir (%v)", err)
	}
	return filepath.Join(home, ".local", "share", "lockbox"), nil
}

func resolveInstallSettings(opts []InstallOption) (*installSettings, error) {
	s := &installSettings{
		version:        Version,
		releaseURL:     os.Getenv("LOCKBOX_RELEASE_URL"),
		offline:        envFlag("LOCKBOX_OFFLINE"),
		stallTimeout:   defaultStallTimeout,
		minRate:        defaultMinRate,
		installTimeout: defaultInstallTimeout,
	}
	for _, o := range opts {
		o(s)
	}
	if s.optErr != nil {
		return nil, s.optErr
	}
	if !validVersion(s.version) {
		return nil, fmt.Errorf("lockbox: invalid version %q", s.version)
	}
	if s.root == "" {
		r, err := defaultRoot()
		if err != nil {
			return nil, err
		}
		s.root = r
	}
	abs, err := filepath.Abs(s.root)
	if err != nil {
		return nil, err
	}
	s.root = abs
	return s, nil
}
