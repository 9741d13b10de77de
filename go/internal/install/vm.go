package install

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// The microVM guest's assets (kinds vm-kernel and vm-initramfs) live in
// <version dir>/vm/, where the engine looks for them. They are installed
// only when Settings.VMAssets asks, so a native-only install never
// downloads them, and they can be added to a version installed without
// them: the two files are staged and verified in a scratch dir of their
// own and then renamed into the version dir as one directory. A vm/ dir
// is therefore either absent or holds both files as the manifest names
// them; anything else (a damaged file, a missing one) is detected by
// checkVM, which re-hashes both, and is replaced by the next install that
// asks for them.

// vmNotReadyError: the version is installed and verified, but its VM
// assets, which were asked for, are absent or damaged. Only they need
// installing.
type vmNotReadyError struct{ err error }

func (e *vmNotReadyError) Error() string { return e.err.Error() }
func (e *vmNotReadyError) Unwrap() error { return e.err }

// noVMAssetsError: the release has none to install (a release built
// without make vm-assets, or a platform without a guest). It matches
// ErrReleaseNotFound.
type noVMAssetsError struct{ err error }

func (e *noVMAssetsError) Error() string { return e.err.Error() }
func (e *noVMAssetsError) Unwrap() error { return e.err }

func noVMAssets(m *releaseManifest, platform string) error {
	return &noVMAssetsError{fmt.Errorf("%w: release %s has no VM assets (kinds %s, %s) for %s: build the release with them (make release includes make vm-assets) or install without VM assets",
		ErrReleaseNotFound, m.Version, kindVMKernel, kindVMInitramfs, platform)}
}

// checkVM re-hashes the installed VM assets against the manifest: about
// 18 MB, tens of milliseconds, paid only by installs that ask for them.
// Unlike the library, nothing re-checks them before the engine boots
// them, so this is where a damaged file is caught.
func checkVM(versionDir string, vm []releaseArtifact) error {
	dir := filepath.Join(versionDir, vmDir)
	if err := checkDir(dir); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return &vmNotReadyError{fmt.Errorf("the VM assets are not installed in %s", dir)}
		}
		return &vmNotReadyError{err}
	}
	for _, a := range vm {
		if err := verifyFileSHA256(filepath.Join(versionDir, filepath.FromSlash(a.Path)), a); err != nil {
			return &vmNotReadyError{err}
		}
	}
	return nil
}

// installVM adds the VM assets to a version installed and verified
// without them (or with damaged ones), under the install lock. The
// manifest is the installed one, already verified by check.
func (in *installer) installVM(ctx context.Context, src *releaseSource, m *releaseManifest) (*Installation, error) {
	_, vm := splitVM(m.Platforms[platformName()])
	if len(vm) == 0 {
		return nil, noVMAssets(m, platformName())
	}
	staging, err := in.paths.scratchDir("staging")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(staging)
	if err := checkDir(staging); err != nil {
		return nil, err
	}
	stagedVM := filepath.Join(staging, vmDir)
	if err := in.downloadAll(ctx, src, staging, vm); err != nil {
		return nil, err
	}
	if err := syncDir(staging); err != nil {
		return nil, err
	}
	// A damaged vm/ goes aside first (one rename): between the two
	// renames there is no vm/ at all, which reads as "not installed".
	target := filepath.Join(in.paths.dir, vmDir)
	if _, err := os.Lstat(target); err == nil {
		trash, err := in.paths.scratchDir("trash")
		if err != nil {
			return nil, err
		}
		defer os.RemoveAll(trash)
		if err := os.Rename(target, filepath.Join(trash, vmDir)); err != nil {
			return nil, err
		}
	}
	if err := os.Rename(stagedVM, target); err != nil {
		return nil, err
	}
	if err := syncDir(in.paths.dir); err != nil {
		return nil, err
	}
	in.emit(Event{Kind: Complete})
	inst := in.installation(in.paths, m)
	inst.VMAssetsDir = target
	return inst, nil
}
