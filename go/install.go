package lockbox

import (
	"context"

	"lockbox.dev/lockbox/internal/install"
)

// Install errors; match with errors.Is. Offline without a complete
// install gives ErrNotInstalled (errors.go).
var (
	// ErrVerification: a signature, hash, size, version, ABI or pin check
	// failed. Nothing was installed: the SDK fails closed.
	ErrVerification = install.ErrVerification
	// ErrReleaseNotFound: the release source has no such version or file.
	ErrReleaseNotFound = install.ErrReleaseNotFound
	// ErrDownload: transport failures that outlasted the retries.
	ErrDownload = install.ErrDownload
	// ErrNoReleaseURL: a download is needed and no source is configured.
	ErrNoReleaseURL = install.ErrNoReleaseURL
	// ErrInstallDirUnsafe: the install dir, a directory above it or a file
	// in it could be changed by another user (owned by someone else than
	// this user or root, writable by group or others, a symbolic link
	// where a file belongs). Nothing is installed into it or loaded from it.
	ErrInstallDirUnsafe = install.ErrInstallDirUnsafe
)

// devPin names a directory holding a development pin (keys/*.pub and
// <Version>/manifest.json), which replaces the embedded one. Only the
// linker sets it (-ldflags "-X lockbox.dev/lockbox.devPin=DIR"): the
// project's own `make run` and `make test` do, for the release they build
// and sign with a key made on that machine, so that they never rewrite the
// committed pin. No environment variable or option can: what a program
// trusts is decided when it is built, by whoever builds it.
var devPin string

// Installation is a completely installed, verified version.
type Installation struct {
	Version     string
	Dir         string // <root>/versions/<version>
	LibraryPath string // Dir/lib/liblockbox.so
	HelperPath  string // Dir/bin/lockbox-helper
	ImagesDir   string // Dir/images
	// VMAssetsDir is Dir/vm (the microVM guest's vmlinuz and
	// initramfs.img) when WithVMAssets asked for them; else "".
	VMAssetsDir string
}

// InstallEventKind names the steps EnsureInstalled reports to WithProgress.
type InstallEventKind string

const (
	InstallAlreadyInstalled InstallEventKind = "already-installed"
	InstallManifestVerified InstallEventKind = "manifest-verified"
	InstallDownloading      InstallEventKind = "downloading" // Bytes of Total received for Artifact
	InstallRetrying         InstallEventKind = "retrying"    // Attempt, Err
	InstallArtifactVerified InstallEventKind = "artifact-verified"
	InstallComplete         InstallEventKind = "complete"
)

// InstallEvent is one progress report.
type InstallEvent struct {
	Kind     InstallEventKind
	Version  string
	Artifact string // artifact path, e.g. "lib/liblockbox.so"
	Bytes    int64
	Total    int64
	Attempt  int
	Err      error
}

// EnsureInstalled makes sure the pinned version (or WithVersion's) is
// completely installed and verified, downloading it if needed, and returns
// where it is. When it already is, this is a marker check plus an lstat
// of every artifact (owner, mode, size; no re-hash: the loader re-hashes
// the library before loading it).
//
// The microVM guest's kernel and initramfs are installed only with
// WithVMAssets: a version installed without them gets them added (as one
// directory, renamed into place once both are verified), and with it the
// warm path also re-hashes them (about 18 MB), replacing them if damaged.
//
// Downloads are checked against the signature of a trusted key and, for
// the pinned version, the manifest hash embedded in this SDK, and each
// artifact's size and sha256 while streaming. Concurrent calls, also from
// other processes, serialize on a file lock; a killed install leaves
// nothing that looks installed and nothing the next install reuses.
//
// The install dir and every directory above it must be owned by this user
// or root and not writable by others (a sticky directory such as /tmp may
// be above it): otherwise ErrInstallDirUnsafe. Directories the installer
// creates are 0700.
func EnsureInstalled(ctx context.Context, opts ...InstallOption) (*Installation, error) {
	s, err := resolveInstallSettings(opts)
	if err != nil {
		return nil, err
	}
	inst, err := install.Ensure(ctx, s)
	if err != nil {
		return nil, err
	}
	out := Installation(*inst)
	return &out, nil
}

// IsInstalled reports whether the version is completely installed (the
// same check as EnsureInstalled's warm path; with WithVMAssets, the VM
// assets too, re-hashed). It never downloads.
func IsInstalled(opts ...InstallOption) bool {
	s, err := resolveInstallSettings(opts)
	if err != nil {
		return false
	}
	return install.IsInstalled(s)
}

// installedLibrary is the loader's fallback (abi_glue.go): the library of
// the last EnsureInstalled, else of the default install, once its tree and
// bytes pass the installer's checks.
func installedLibrary() (string, error) { return install.InstalledLibrary() }
