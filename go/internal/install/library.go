package install

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
)

// InstalledLibrary is the loader's view of the install: the library of
// the most recent Ensure in this process, else of the default
// install (CI's lockbox-installer, an earlier run). ("", nil) means
// nothing is installed; an error means an install is there that must
// not be loaded: the tree fails checkComplete's ownership, mode and size
// rules, or the library's sha256 is not the manifest's. Both are checked
// again right before every load, because the tree may have changed since
// it was installed.
func InstalledLibrary() (string, error) {
	var s *Settings
	if ref := lastInstalled.Load(); ref != nil {
		s = ref.s
	} else {
		d := Defaults()
		if err := Resolve(&d); err != nil {
			return "", nil
		}
		s = &d
	}
	return installedLibraryFor(newInstaller(s))
}

func installedLibraryFor(in *installer) (string, error) {
	if in.trust.err != nil {
		return "", nil
	}
	inst, m, err := in.check()
	var nc *notCompleteError
	if errors.As(err, &nc) {
		return "", nil
	}
	if err != nil {
		return "", err
	}
	for _, a := range m.Platforms[platformName()] {
		if a.Kind == "library" {
			if err := verifyFileSHA256(inst.LibraryPath, a); err != nil {
				return "", err
			}
			return inst.LibraryPath, nil
		}
	}
	return "", fmt.Errorf("%w: %s: the manifest lists no library", ErrVerification, inst.Dir)
}

// verifyFileSHA256 re-hashes an installed file through a descriptor
// opened without following links (the library, about 8 MiB: a few
// milliseconds), so a file swapped in after the install is never
// dlopen()ed. The directories above it passed checkComplete: nobody but
// this user or root can swap it between this check and dlopen.
func verifyFileSHA256(path string, a releaseArtifact) error {
	f, fi, err := openTrusted(path)
	if err != nil {
		return err
	}
	defer f.Close()
	if fi.Size() != a.Size {
		return fmt.Errorf("%w: %s has %d bytes, the manifest says %d", ErrVerification, path, fi.Size(), a.Size)
	}
	h := sha256.New()
	if _, err := io.Copy(h, io.LimitReader(f, a.Size+1)); err != nil {
		return err
	}
	if sum := hex.EncodeToString(h.Sum(nil)); sum != a.SHA256 {
		return fmt.Errorf("%w: %s has sha256 %s, the manifest says %s", ErrVerification, path, sum, a.SHA256)
	}
	return nil
}
