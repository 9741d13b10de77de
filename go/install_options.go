package lockbox

import (
	"fmt"
	"time"

	"lockbox.dev/lockbox/internal/install"
)

// InstallOption configures EnsureInstalled and IsInstalled.
type InstallOption func(*installSettings)

// installSettings are the installer's settings plus the first option
// error, reported once all options have run.
type installSettings struct {
	s      install.Settings
	optErr error
}

// WithVersion installs another version than the one this SDK pins. Its
// manifest is then checked against the trusted keys only (there are no
// embedded hashes for it).
func WithVersion(v string) InstallOption { return func(s *installSettings) { s.s.Version = v } }

// WithReleaseURL sets the release mirror: http(s)://host/path, file:///dir
// or a plain directory holding <version>/manifest.json and the artifacts.
// Content is verified against the trusted keys and pin whatever the source.
func WithReleaseURL(u string) InstallOption { return func(s *installSettings) { s.s.ReleaseURL = u } }

// WithInstallDir sets the install root (default: $LOCKBOX_HOME, else the
// per-user data dir). Versions live in <dir>/versions/<version>.
func WithInstallDir(d string) InstallOption { return func(s *installSettings) { s.s.Root = d } }

// WithVMAssets also installs the microVM guest (kernel and initramfs,
// kinds vm-kernel and vm-initramfs of the signed manifest) into
// <version dir>/vm/, where the engine finds them for
// WithIsolation(IsolationMicroVM). Without it they are never downloaded:
// the native backend does not need them. A version already installed
// without them gets them added; damaged ones are replaced. A release
// without VM assets gives ErrReleaseNotFound.
func WithVMAssets() InstallOption { return func(s *installSettings) { s.s.VMAssets = true } }

// WithOffline never downloads: EnsureInstalled succeeds only if the version
// is already completely installed, and otherwise lists what is missing.
func WithOffline(offline bool) InstallOption {
	return func(s *installSettings) { s.s.Offline = offline }
}

// WithProgress receives install events. Artifacts download concurrently,
// but calls are serialized: f never runs twice at once.
func WithProgress(f func(InstallEvent)) InstallOption {
	return func(s *installSettings) {
		if f == nil {
			s.s.Progress = nil
			return
		}
		s.s.Progress = func(ev install.Event) {
			f(InstallEvent{Kind: InstallEventKind(ev.Kind), Version: ev.Version, Artifact: ev.Artifact,
				Bytes: ev.Bytes, Total: ev.Total, Attempt: ev.Attempt, Err: ev.Err})
		}
	}
}

// WithTrustedKey trusts another ed25519 public key for manifest signatures,
// in addition to the embedded ones. keyText is the key file's content: the
// base64 of the 32-byte key.
func WithTrustedKey(keyText string) InstallOption {
	return func(s *installSettings) {
		k, err := install.ParsePublicKey(keyText)
		if err != nil {
			s.fail(fmt.Errorf("WithTrustedKey: %v", err))
			return
		}
		s.s.ExtraKeys = append(s.s.ExtraKeys, k)
	}
}

// WithStallTimeout sets the stall window (default 30s): a download
// attempt that receives less than WithMinDownloadRate's worth of bytes in
// one window is abandoned and retried from where it stopped.
func WithStallTimeout(d time.Duration) InstallOption {
	return func(s *installSettings) {
		if d <= 0 {
			s.fail(fmt.Errorf("WithStallTimeout: %v is not positive", d))
		}
		s.s.StallTimeout = d
	}
}

// WithMinDownloadRate sets the rate, in bytes per second averaged over a
// stall window, below which a download attempt counts as stalled (default
// 1024; 0: any byte is progress). It stops a server that drips a byte now
// and then from holding an install for ever.
func WithMinDownloadRate(bytesPerSecond int64) InstallOption {
	return func(s *installSettings) {
		if bytesPerSecond < 0 {
			s.fail(fmt.Errorf("WithMinDownloadRate: %d is negative", bytesPerSecond))
		}
		s.s.MinRate = bytesPerSecond
	}
}

// WithInstallTimeout bounds an EnsureInstalled that has to install
// (default 1h; 0: only ctx bounds it), including the wait for another
// process's install lock. Past it the error matches context.DeadlineExceeded.
func WithInstallTimeout(d time.Duration) InstallOption {
	return func(s *installSettings) {
		if d < 0 {
			s.fail(fmt.Errorf("WithInstallTimeout: %v is negative", d))
		}
		s.s.InstallTimeout = d
	}
}

// fail records an option's error; like before the split, the last one
// wins.
func (s *installSettings) fail(err error) { s.optErr = err }

func resolveInstallSettings(opts []InstallOption) (*install.Settings, error) {
	cfg := installSettings{s: install.Defaults()}
	for _, o := range opts {
		o(&cfg)
	}
	if cfg.optErr != nil {
		return nil, cfg.optErr
	}
	if err := install.Resolve(&cfg.s); err != nil {
		return nil, err
	}
	return &cfg.s, nil
}
