package install

import (
	"crypto/ed25519"
	"fmt"
	"os"
	"path/filepath"
	"sync/atomic"
	"time"
)

// Host is what the installer needs from the SDK above it.
type Host struct {
	// Version is the version this SDK pins: the default install, and the
	// one whose manifest must match the embedded (or development) pin.
	Version string
	// DevPin, when set, names a directory holding a development pin
	// (keys/*.pub and <Version>/manifest.json) that replaces the embedded
	// one (trust.go).
	DevPin string
}

var host atomic.Pointer[Host]

// Configure sets the host: package lockbox calls it at init, before
// anything reads the trust. The first call wins and later ones are
// ignored, so what a program trusts (the pinned version, the development
// pin) cannot change while it runs.
func Configure(h Host) { host.CompareAndSwap(nil, &h) }

func currentHost() Host {
	if h := host.Load(); h != nil {
		return *h
	}
	return Host{}
}

// Settings are one install's parameters: Defaults, then the caller's
// options, then Resolve.
type Settings struct {
	Version        string
	ReleaseURL     string
	Root           string
	Offline        bool
	Progress       func(Event)
	ExtraKeys      []ed25519.PublicKey
	StallTimeout   time.Duration
	MinRate        int64
	InstallTimeout time.Duration
	// VMAssets also installs (and on the warm path re-hashes) the microVM
	// guest's kernel and initramfs; without it they are never downloaded.
	VMAssets bool
}

// Defaults are what an install uses without options: the pinned version,
// LOCKBOX_RELEASE_URL, LOCKBOX_OFFLINE and the timeouts' defaults.
func Defaults() Settings {
	return Settings{
		Version:        currentHost().Version,
		ReleaseURL:     os.Getenv("LOCKBOX_RELEASE_URL"),
		Offline:        envFlag("LOCKBOX_OFFLINE"),
		StallTimeout:   defaultStallTimeout,
		MinRate:        defaultMinRate,
		InstallTimeout: defaultInstallTimeout,
	}
}

// Resolve checks the version and makes Root absolute (the default root
// when empty).
func Resolve(s *Settings) error {
	if !validVersion(s.Version) {
		return fmt.Errorf("lockbox: invalid version %q", s.Version)
	}
	if s.Root == "" {
		r, err := defaultRoot()
		if err != nil {
			return err
		}
		s.Root = r
	}
	abs, err := filepath.Abs(s.Root)
	if err != nil {
		return err
	}
	s.Root = abs
	return nil
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
