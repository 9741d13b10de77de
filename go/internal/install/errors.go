package install

import "errors"

// Install errors; package lockbox re-exports these values. Offline without
// a complete install gives abi.ErrNotInstalled, the loader's sentinel.
var (
	// ErrVerification: a signature, hash, size, version, ABI or pin check
	// failed. Nothing was installed: the SDK fails closed.
	ErrVerification = errors.New("lockbox: release verification failed")
	// ErrReleaseNotFound: the release source has no such version or file.
	ErrReleaseNotFound = errors.New("lockbox: release not found")
	// ErrDownload: transport failures that outlasted the retries.
	ErrDownload = errors.New("lockbox: download failed")
	// ErrNoReleaseURL: a download is needed and no source is configured.
	ErrNoReleaseURL = errors.New("lockbox: no release URL")
	// ErrInstallDirUnsafe: the install dir, a directory above it or a file
	// in it could be changed by another user.
	ErrInstallDirUnsafe = errors.New("lockbox: unsafe install dir")
)
