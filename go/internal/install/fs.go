package install

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
)

const (
	manifestFile  = "manifest.json"
	signatureFile = "manifest.json.sig"
	markerFile    = ".complete"
	// privateDirMode: every directory the installer creates. Nothing but
	// this user (and root) has a reason to look inside an install.
	privateDirMode = 0o700
	// noFollow is added to every open: a link planted where the installer
	// expects a file must never redirect a read or a write.
	noFollow = syscall.O_NOFOLLOW | syscall.O_CLOEXEC
)

// markerContent is what .complete holds: the manifest's sha256 and a newline.
func markerContent(manifestSHA256 string) string { return manifestSHA256 + "\n" }

// versionPaths names the parts of an install root for one version:
// versions/<v>/ (installed iff .complete matches and every artifact passes
// checkArtifact), versions/<v>.lock, and versions/.staging-<v>-* /
// .trash-<v>-* left by installs in progress. Downloads are written only
// inside the staging directory, under names nobody can predict: an
// interrupted install leaves nothing the next one reads.
type versionPaths struct {
	root, versions, dir, lock, version string
}

func newVersionPaths(root, version string) versionPaths {
	v := filepath.Join(root, "versions")
	return versionPaths{root: root, versions: v, dir: filepath.Join(v, version),
		lock: filepath.Join(v, version+".lock"), version: version}
}

// scratchPrefixes name what a killed install of this version may have left.
func (p versionPaths) scratchPrefixes() []string {
	return []string{".staging-" + p.version + "-", ".trash-" + p.version + "-"}
}

// legacyPartial is where older installers kept resumable downloads across
// runs. Those bytes were never verified: the next install deletes them.
func (p versionPaths) legacyPartial() string { return ".partial-" + p.version }

func (p versionPaths) scratchDir(kind string) (string, error) {
	return os.MkdirTemp(p.versions, fmt.Sprintf(".%s-%s-%d-", kind, p.version, os.Getpid()))
}

// unsafeError says why an install tree is refused; it matches
// ErrInstallDirUnsafe.
func unsafeError(path, why string) error {
	return fmt.Errorf("%w: %s %s (an install must be reachable only through directories owned by this user or root and not writable by others; fix the permissions or use another WithInstallDir/LOCKBOX_HOME)",
		ErrInstallDirUnsafe, path, why)
}

func trustedOwner(uid uint32) bool { return uid == 0 || int(uid) == os.Geteuid() }

// checkNode applies the ownership rule to one lstat'ed (or fstat'ed)
// node. strict: no group/other write bit at all; otherwise a sticky
// directory (/tmp) may be world-writable, since nobody else can rename or
// remove the entries we own in it.
func checkNode(path string, fi os.FileInfo, wantDir, strict bool) error {
	st, ok := fi.Sys().(*syscall.Stat_t)
	switch {
	case !ok:
		return unsafeError(path, "cannot be inspected")
	case fi.Mode()&fs.ModeSymlink != 0:
		return unsafeError(path, "is a symbolic link")
	case wantDir && !fi.IsDir():
		return unsafeError(path, "is not a directory")
	case !wantDir && !fi.Mode().IsRegular():
		return unsafeError(path, fmt.Sprintf("is not a regular file (%v)", fi.Mode().Type()))
	case !trustedOwner(st.Uid):
		return unsafeError(path, fmt.Sprintf("is owned by uid %d, not by this user (uid %d) or root", st.Uid, os.Geteuid()))
	case st.Mode&0o022 != 0 && (strict || st.Mode&syscall.S_ISVTX == 0):
		return unsafeError(path, fmt.Sprintf("is writable by group or others (mode %04o)", st.Mode&0o7777))
	}
	return nil
}

// resolveRoot returns the real path of the install root once every
// directory from / down to it has passed checkNode; with create, missing
// components are made (0700) and checked the same way. Everything later
// uses the returned path, whose components nobody else can replace.
func resolveRoot(root string, create bool) (string, error) {
	existing := filepath.Clean(root)
	var missing []string
	for {
		_, err := os.Lstat(existing)
		if err == nil {
			break
		}
		if !errors.Is(err, fs.ErrNotExist) || !create {
			return "", err
		}
		parent := filepath.Dir(existing)
		if parent == existing {
			return "", err
		}
		missing = append([]string{filepath.Base(existing)}, missing...)
		existing = parent
	}
	real, err := filepath.EvalSymlinks(existing)
	if err != nil {
		return "", err
	}
	cur := "/"
	parts := strings.Split(strings.TrimPrefix(real, "/"), "/")
	for i, part := range append([]string{""}, parts...) {
		cur = filepath.Join(cur, part)
		fi, err := os.Lstat(cur)
		if err != nil {
			return "", err
		}
		isRoot := i == len(parts) && len(missing) == 0
		if err := checkNode(cur, fi, true, isRoot); err != nil {
			return "", err
		}
	}
	for _, m := range missing {
		cur = filepath.Join(cur, m)
		if err := ensureDir(cur); err != nil {
			return "", err
		}
	}
	return cur, nil
}

// ensureDir creates dir (0700) inside an already checked directory, or
// checks the one that is there.
func ensureDir(dir string) error {
	if err := os.Mkdir(dir, privateDirMode); err != nil && !errors.Is(err, fs.ErrExist) {
		return err
	}
	return checkDir(dir)
}

func checkDir(dir string) error {
	fi, err := os.Lstat(dir)
	if err != nil {
		return err
	}
	return checkNode(dir, fi, true, true)
}

// openTrusted opens a file of the install tree for reading: no link
// followed, no blocking on a FIFO, and refused unless checkNode accepts it.
func openTrusted(path string) (*os.File, os.FileInfo, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|noFollow|syscall.O_NONBLOCK, 0)
	if err != nil {
		if errors.Is(err, syscall.ELOOP) {
			return nil, nil, unsafeError(path, "is a symbolic link")
		}
		return nil, nil, err
	}
	fi, err := f.Stat()
	if err == nil {
		err = checkNode(path, fi, false, true)
	}
	if err != nil {
		f.Close()
		return nil, nil, err
	}
	return f, fi, nil
}

// readTrusted reads a small file of the install tree (marker, manifest).
func readTrusted(path string, limit int64) ([]byte, error) {
	f, fi, err := openTrusted(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if fi.Size() > limit {
		return nil, fmt.Errorf("%w: %s is larger than %d bytes", ErrVerification, path, limit)
	}
	return io.ReadAll(io.LimitReader(f, limit))
}

// openSourceFile opens a file of a directory mirror. Its content is
// verified like a download, but opening must not hang (a FIFO) or read a
// device: only a regular file is read.
func openSourceFile(path string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|noFollow|syscall.O_NONBLOCK, 0)
	if err != nil {
		if errors.Is(err, syscall.ELOOP) {
			return nil, fmt.Errorf("%w: %s is a symbolic link", ErrVerification, path)
		}
		return nil, err
	}
	fi, err := f.Stat()
	if err == nil && !fi.Mode().IsRegular() {
		err = fmt.Errorf("%w: %s is not a regular file (%v)", ErrVerification, path, fi.Mode().Type())
	}
	if err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

// createExclusive makes a new file under an unpredictable name in dir
// (which the installer made): O_EXCL|O_NOFOLLOW, so nothing planted is
// ever opened.
func createExclusive(dir, prefix string) (*os.File, error) {
	var rnd [12]byte
	if _, err := rand.Read(rnd[:]); err != nil {
		return nil, err
	}
	return os.OpenFile(filepath.Join(dir, prefix+hex.EncodeToString(rnd[:])),
		os.O_RDWR|os.O_CREATE|os.O_EXCL|noFollow, 0o600)
}

func syncDir(dir string) error {
	f, err := os.OpenFile(dir, os.O_RDONLY|noFollow|syscall.O_DIRECTORY, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Sync()
}

// writeFileSync creates path with bytes and fsyncs it (no rename: used
// inside a staging dir that is itself renamed into place).
func writeFileSync(path string, b []byte, mode os.FileMode) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL|noFollow, mode)
	if err != nil {
		return err
	}
	if _, err = f.Write(b); err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// writeFileAtomic replaces path via an exclusive temp file + fsync +
// rename + dir fsync.
func writeFileAtomic(path string, b []byte, mode os.FileMode) error {
	dir := filepath.Dir(path)
	f, err := createExclusive(dir, "."+filepath.Base(path)+".tmp-")
	if err != nil {
		return err
	}
	tmp := f.Name()
	_, err = f.Write(b)
	if err == nil {
		err = f.Chmod(mode)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return err
	}
	return syncDir(dir)
}
