package lockbox

import (
	"fmt"
	"os"
	"path/filepath"
)

const (
	manifestFile  = "manifest.json"
	signatureFile = "manifest.json.sig"
	markerFile    = ".complete"
)

// markerContent is what .complete holds: the manifest's sha256 and a newline.
func markerContent(manifestSHA256 string) string { return manifestSHA256 + "\n" }

// versionPaths names the parts of an install root for one version:
// versions/<v>/ (installed iff .complete matches), versions/<v>.lock,
// versions/.staging-<v>-* / .trash-<v>-* left by installs in progress, and
// versions/.partial-<v>/<sha256> (downloads a killed install had begun:
// the next one resumes them, and the sha256 check covers the whole file).
type versionPaths struct {
	versions, dir, lock, partial, version string
}

func newVersionPaths(root, version string) versionPaths {
	v := filepath.Join(root, "versions")
	return versionPaths{versions: v, dir: filepath.Join(v, version), lock: filepath.Join(v, version+".lock"),
		partial: filepath.Join(v, ".partial-"+version), version: version}
}

func (p versionPaths) scratchPrefixes() []string {
	return []string{".staging-" + p.version + "-", ".trash-" + p.version + "-"}
}

func (p versionPaths) scratchDir(kind string) (string, error) {
	return os.MkdirTemp(p.versions, fmt.Sprintf(".%s-%s-%d-", kind, p.version, os.Getpid()))
}

func syncDir(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Sync()
}

// writeFileSync creates path with bytes and fsyncs it (no rename: used
// inside a staging dir that is itself renamed into place).
func writeFileSync(path string, b []byte, mode os.FileMode) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
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

// writeFileAtomic replaces path via temp + fsync + rename + dir fsync.
func writeFileAtomic(path string, b []byte, mode os.FileMode) error {
	dir := filepath.Dir(path)
	tmp := filepath.Join(dir, fmt.Sprintf(".%s.tmp-%d", filepath.Base(path), os.Getpid()))
	_ = os.Remove(tmp)
	if err := writeFileSync(tmp, b, mode); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		return err
	}
	return syncDir(dir)
}
