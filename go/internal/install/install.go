package install

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"

	"lockbox.dev/lockbox/internal/abi"
)

// maxParallelDownloads bounds the artifacts fetched at once.
const maxParallelDownloads = 4

// Installation is a completely installed, verified version; package
// lockbox converts it to its public Installation (same fields).
type Installation struct {
	Version     string
	Dir         string // <root>/versions/<version>
	LibraryPath string // Dir/lib/liblockbox.so
	HelperPath  string // Dir/bin/lockbox-helper
	ImagesDir   string // Dir/images
	// VMAssetsDir is Dir/vm when the VM assets were asked for
	// (Settings.VMAssets) and are installed and verified, else "".
	VMAssetsDir string
}

// The steps Ensure reports to Settings.Progress.
const (
	AlreadyInstalled = "already-installed"
	ManifestVerified = "manifest-verified"
	Downloading      = "downloading" // Bytes of Total received for Artifact
	Retrying         = "retrying"    // Attempt, Err
	ArtifactVerified = "artifact-verified"
	Complete         = "complete"
)

// Event is one progress report.
type Event struct {
	Kind     string
	Version  string
	Artifact string // artifact path, e.g. "lib/liblockbox.so"
	Bytes    int64
	Total    int64
	Attempt  int
	Err      error
}

// lastInstalled is the most recent successful Ensure in this process,
// with the settings that re-check it: the loader's first choice
// (library.go).
var lastInstalled atomic.Pointer[installedRef]

type installedRef struct {
	inst *Installation
	s    *Settings
}

// Ensure makes sure s.Version is completely installed and verified,
// downloading it if needed, and returns where it is (lockbox.EnsureInstalled
// documents the contract). s comes from Resolve.
func Ensure(ctx context.Context, s *Settings) (*Installation, error) {
	in := newInstaller(s)
	inst, err := in.run(ctx)
	if err != nil {
		return nil, err
	}
	lastInstalled.Store(&installedRef{inst, s})
	return inst, nil
}

// IsInstalled reports whether s.Version is completely installed (Ensure's
// warm path). It never downloads.
func IsInstalled(s *Settings) bool {
	inst, _ := newInstaller(s).checkComplete()
	return inst != nil
}

type installer struct {
	s     *Settings
	paths versionPaths
	trust *embeddedTrust
	keys  []trustedKey
	// pinSHA256 is the manifest hash this install must have ("" when the
	// version has no embedded pin: then the signature alone decides).
	pinSHA256 string
	emitMu    sync.Mutex // artifacts download concurrently; progress calls do not overlap
}

func newInstaller(s *Settings) *installer {
	t := loadTrust()
	in := &installer{s: s, paths: newVersionPaths(s.Root, s.Version), trust: t}
	in.keys = append(in.keys, t.keys...)
	for i, k := range s.ExtraKeys {
		in.keys = append(in.keys, trustedKey{fmt.Sprintf("option-%d", i), k})
	}
	if s.Version == currentHost().Version && t.pinBytes != nil {
		in.pinSHA256 = t.pinSHA256
	}
	return in
}

func (in *installer) emit(ev Event) {
	if in.s.Progress != nil {
		ev.Version = in.s.Version
		in.emitMu.Lock()
		defer in.emitMu.Unlock()
		in.s.Progress(ev)
	}
}

func (in *installer) installation(paths versionPaths, m *releaseManifest) *Installation {
	inst := &Installation{
		Version:   in.s.Version,
		Dir:       paths.dir,
		ImagesDir: filepath.Join(paths.dir, "images"),
	}
	for _, a := range m.Platforms[platformName()] {
		p := filepath.Join(paths.dir, filepath.FromSlash(a.Path))
		switch {
		case a.Kind == "library":
			inst.LibraryPath = p
		case a.Kind == "helper" && (inst.HelperPath == "" || a.Name == "lockbox-helper"):
			inst.HelperPath = p
		}
	}
	return inst
}

// notCompleteError: there is no install to look at (no tree, no marker,
// or a marker for another manifest). Any other checkComplete error means
// an install is there but must not be used.
type notCompleteError struct{ err error }

func (e *notCompleteError) Error() string { return e.err.Error() }
func (e *notCompleteError) Unwrap() error { return e.err }

// checkComplete is the warm path, and the check before every load. The
// marker is public (the manifest's hash), so it only says which manifest
// to check against: every artifact must then be a regular file of the
// manifest's size, owned by this user or root and not writable by
// others, in directories with the same property all the way up to /.
// For the pinned version the marker must equal the embedded manifest
// hash; otherwise the installed manifest must match the marker and carry
// a trusted signature.
//
// With Settings.VMAssets the VM assets must be there too, re-hashed
// (checkVM); a *vmNotReadyError then means only they are missing.
func (in *installer) checkComplete() (*Installation, error) {
	inst, m, err := in.check()
	if err != nil || !in.s.VMAssets {
		return inst, err
	}
	_, vm := splitVM(m.Platforms[platformName()])
	if len(vm) == 0 {
		return nil, noVMAssets(m, platformName())
	}
	if err := checkVM(inst.Dir, vm); err != nil {
		return nil, err
	}
	inst.VMAssetsDir = filepath.Join(inst.Dir, vmDir)
	return inst, nil
}

// installedManifest is check's manifest once the version passed it.
func (in *installer) installedManifest() (*releaseManifest, error) {
	_, m, err := in.check()
	return m, err
}

func (in *installer) check() (*Installation, *releaseManifest, error) {
	root, err := resolveRoot(in.s.Root, false)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil, &notCompleteError{err}
	} else if err != nil {
		return nil, nil, err
	}
	paths := newVersionPaths(root, in.s.Version)
	for _, d := range []string{paths.versions, paths.dir} {
		if err := checkDir(d); errors.Is(err, fs.ErrNotExist) {
			return nil, nil, &notCompleteError{err}
		} else if err != nil {
			return nil, nil, err
		}
	}
	marker, err := readTrusted(filepath.Join(paths.dir, markerFile), 256)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil, &notCompleteError{err}
	} else if err != nil {
		return nil, nil, err
	}
	var m *releaseManifest
	if in.pinSHA256 != "" {
		if string(marker) != in.trust.pinMarkerStr || in.trust.pinManifest == nil {
			return nil, nil, &notCompleteError{errors.New("marker does not match the pinned manifest")}
		}
		m = in.trust.pinManifest
	} else {
		b, err := readTrusted(filepath.Join(paths.dir, manifestFile), maxManifestBytes)
		if err != nil {
			return nil, nil, err
		}
		if string(marker) != markerContent(sha256Hex(b)) {
			return nil, nil, &notCompleteError{errors.New("marker does not match the installed manifest")}
		}
		sig, err := readTrusted(filepath.Join(paths.dir, signatureFile), maxSignatureBytes)
		if err != nil {
			return nil, nil, err
		}
		if m, err = in.verifyManifest(b, sig); err != nil {
			return nil, nil, err
		}
	}
	arts, err := m.artifactsFor(platformName())
	if err != nil {
		return nil, nil, err
	}
	// The VM assets are optional here: checkComplete checks them when asked.
	arts, _ = splitVM(arts)
	checked := map[string]bool{}
	for _, a := range arts {
		p := filepath.Join(paths.dir, filepath.FromSlash(a.Path))
		if d := filepath.Dir(p); !checked[d] {
			if err := checkDir(d); err != nil {
				return nil, nil, fmt.Errorf("%s is marked complete but: %w", paths.dir, err)
			}
			checked[d] = true
		}
		if err := checkArtifactFile(p, a); err != nil {
			return nil, nil, fmt.Errorf("%s is marked complete but: %w", paths.dir, err)
		}
	}
	return in.installation(paths, m), m, nil
}

// checkArtifactFile: an lstat'ed regular file, owned by this user or
// root, not writable by others, of the manifest's size.
func checkArtifactFile(p string, a releaseArtifact) error {
	fi, err := os.Lstat(p)
	if err != nil {
		return err
	}
	if err := checkNode(p, fi, false, true); err != nil {
		return err
	}
	if fi.Size() != a.Size {
		return fmt.Errorf("%w: %s has %d bytes, the manifest says %d", ErrVerification, p, fi.Size(), a.Size)
	}
	return nil
}

// verifyManifest: signature first, then pin, version and ABI, so nothing
// unsigned is ever parsed for use.
func (in *installer) verifyManifest(b, sig []byte) (*releaseManifest, error) {
	if _, err := verifySignature(in.keys, b, sig); err != nil {
		return nil, err
	}
	if in.pinSHA256 != "" && sha256Hex(b) != in.pinSHA256 {
		return nil, fmt.Errorf("%w: manifest sha256 %s differs from the one pinned in this SDK (%s)", ErrVerification, sha256Hex(b), in.pinSHA256)
	}
	m, err := parseManifest(b)
	if err != nil {
		return nil, err
	}
	if m.Version != in.s.Version {
		return nil, fmt.Errorf("%w: manifest is for version %s, want %s", ErrVerification, m.Version, in.s.Version)
	}
	if m.ABIVersion != abi.ABIVersion {
		return nil, fmt.Errorf("%w: manifest has ABI %d, this SDK speaks %d", ErrVerification, m.ABIVersion, abi.ABIVersion)
	}
	return m, nil
}

func (in *installer) run(ctx context.Context) (*Installation, error) {
	if in.trust.err != nil {
		return nil, fmt.Errorf("%w: %v", ErrVerification, in.trust.err)
	}
	inst, cerr := in.checkComplete()
	if cerr == nil {
		in.emit(Event{Kind: AlreadyInstalled})
		return inst, nil
	}
	var noVM *noVMAssetsError
	if errors.As(cerr, &noVM) {
		return nil, cerr // installed, but the release has no VM assets to add
	}
	var vmErr *vmNotReadyError
	if in.s.Offline && errors.As(cerr, &vmErr) {
		return nil, fmt.Errorf("%w (offline): version %s is installed in %s without usable VM assets: %w",
			abi.ErrNotInstalled, in.s.Version, in.paths.dir, cerr)
	}
	if in.s.Offline {
		var nc *notCompleteError
		if errors.As(cerr, &nc) {
			return nil, fmt.Errorf("%w (offline): %s", abi.ErrNotInstalled, in.describeMissing())
		}
		return nil, fmt.Errorf("%w (offline): %s: %w", abi.ErrNotInstalled, in.describeMissing(), cerr)
	}
	if in.s.ReleaseURL == "" {
		if errors.Is(cerr, ErrInstallDirUnsafe) {
			return nil, cerr // say why the tree there is not used
		}
		if errors.As(cerr, &vmErr) {
			return nil, fmt.Errorf("%w: lockbox %s is installed in %s, its VM assets are not (%v), and no release source is set: set LOCKBOX_RELEASE_URL (or WithReleaseURL)",
				ErrNoReleaseURL, in.s.Version, in.paths.dir, cerr)
		}
		return nil, fmt.Errorf("%w: lockbox %s is not installed in %s and no release source is set: set LOCKBOX_RELEASE_URL (or WithReleaseURL) to an http(s):// mirror or a directory made by `make release`; there is no default download server",
			ErrNoReleaseURL, in.s.Version, in.paths.dir)
	}
	src, err := parseReleaseSource(in.s.ReleaseURL)
	if err != nil {
		return nil, err
	}
	if in.s.InstallTimeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, in.s.InstallTimeout)
		defer cancel()
	}
	src.stall, src.minBytes = in.s.StallTimeout, max(1, int64(in.s.StallTimeout.Seconds()*float64(in.s.MinRate)))
	root, err := resolveRoot(in.s.Root, true)
	if err == nil {
		in.paths = newVersionPaths(root, in.s.Version)
		err = ensureDir(in.paths.versions)
	}
	if err != nil {
		if errors.Is(err, ErrInstallDirUnsafe) {
			return nil, err // it names the path and the reason
		}
		return nil, fmt.Errorf("lockbox: install dir %s: %w", in.s.Root, err)
	}
	unlock, err := lockFile(ctx, in.paths.lock)
	if err != nil {
		return nil, fmt.Errorf("lockbox: install lock %s: %w", in.paths.lock, err)
	}
	defer unlock()
	// Another process may have finished while we waited.
	inst, cerr = in.checkComplete()
	if cerr == nil {
		in.emit(Event{Kind: AlreadyInstalled})
		return inst, nil
	}
	if err := in.clearScratch(); err != nil {
		return nil, err
	}
	if errors.As(cerr, &vmErr) {
		// The rest of the version passed check: only the VM assets are added.
		m, err := in.installedManifest()
		if err != nil {
			return nil, err
		}
		return in.installVM(ctx, src, m)
	}
	if err := in.clearVersionDir(); err != nil {
		return nil, err
	}
	return in.fetchAndInstall(ctx, src)
}

func (in *installer) onRetry(artifact string) func(int, error) {
	return func(attempt int, err error) {
		in.emit(Event{Kind: Retrying, Artifact: artifact, Attempt: attempt, Err: err})
	}
}

func (in *installer) fetchAndInstall(ctx context.Context, src *releaseSource) (*Installation, error) {
	v := in.s.Version
	mb, err := src.fetchSmall(ctx, v+"/"+manifestFile, maxManifestBytes, in.onRetry(manifestFile))
	if err != nil {
		return nil, err
	}
	sig, err := src.fetchSmall(ctx, v+"/"+signatureFile, maxSignatureBytes, in.onRetry(signatureFile))
	if err != nil {
		return nil, err
	}
	m, err := in.verifyManifest(mb, sig)
	if err != nil {
		return nil, err
	}
	in.emit(Event{Kind: ManifestVerified})
	arts, err := m.artifactsFor(platformName())
	if err != nil {
		return nil, err
	}
	arts, vm := splitVM(arts)
	if in.s.VMAssets {
		if len(vm) == 0 {
			return nil, noVMAssets(m, platformName())
		}
		arts = append(arts, vm...)
	}
	staging, err := in.paths.scratchDir("staging")
	if err != nil {
		return nil, err
	}
	if err := checkDir(staging); err != nil {
		os.RemoveAll(staging)
		return nil, err
	}
	if err := in.stage(ctx, src, staging, mb, sig, arts); err != nil {
		os.RemoveAll(staging)
		return nil, err
	}
	if err := os.Rename(staging, in.paths.dir); err != nil {
		os.RemoveAll(staging)
		return nil, err
	}
	if err := syncDir(in.paths.versions); err != nil {
		return nil, err
	}
	if err := writeFileAtomic(filepath.Join(in.paths.dir, markerFile), []byte(markerContent(sha256Hex(mb))), 0o644); err != nil {
		return nil, err
	}
	in.emit(Event{Kind: Complete})
	inst := in.installation(in.paths, m)
	if in.s.VMAssets {
		inst.VMAssetsDir = filepath.Join(in.paths.dir, vmDir)
	}
	return inst, nil
}

func (in *installer) stage(ctx context.Context, src *releaseSource, staging string, mb, sig []byte, arts []releaseArtifact) error {
	if err := writeFileSync(filepath.Join(staging, manifestFile), mb, 0o644); err != nil {
		return err
	}
	if err := writeFileSync(filepath.Join(staging, signatureFile), sig, 0o644); err != nil {
		return err
	}
	if err := in.downloadAll(ctx, src, staging, arts); err != nil {
		return err
	}
	return syncDir(staging)
}

// downloadAll fetches arts into their paths under staging (a scratch dir
// this install made) and fsyncs the directories that received them.
func (in *installer) downloadAll(ctx context.Context, src *releaseSource, staging string, arts []releaseArtifact) error {
	dirs := map[string]bool{}
	for _, a := range arts {
		d := filepath.Join(staging, filepath.Dir(filepath.FromSlash(a.Path)))
		if !dirs[d] {
			if err := ensureDir(d); err != nil {
				return err
			}
		}
		dirs[d] = true
	}
	// Artifacts download concurrently, largest first: one file's fsync and
	// hashing overlap the others' transfers. The first failure cancels the rest.
	order := slices.Clone(arts)
	slices.SortStableFunc(order, func(a, b releaseArtifact) int { return cmp.Compare(b.Size, a.Size) })
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		wg       sync.WaitGroup
		errOnce  sync.Once
		firstErr error
		slots    = make(chan struct{}, maxParallelDownloads)
	)
	for _, a := range order {
		wg.Add(1)
		go func() {
			defer wg.Done()
			slots <- struct{}{}
			defer func() { <-slots }()
			if ctx.Err() != nil {
				return
			}
			if err := in.downloadArtifact(ctx, src, a, filepath.Join(staging, filepath.FromSlash(a.Path))); err != nil {
				errOnce.Do(func() { firstErr = err; cancel() })
			}
		}()
	}
	wg.Wait()
	if firstErr != nil {
		return firstErr
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	for d := range dirs {
		if err := syncDir(d); err != nil {
			return err
		}
	}
	return nil
}

// downloadArtifact fetches a into a new file of unpredictable name next
// to dest (inside the staging dir this install made) and gives it dest's
// name once its size and sha256 are verified. A failed download is
// deleted, and anything a killed one left goes with its staging dir.
func (in *installer) downloadArtifact(ctx context.Context, src *releaseSource, a releaseArtifact, dest string) error {
	f, err := createExclusive(filepath.Dir(dest), ".download-")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer func() {
		if f != nil {
			f.Close()
			os.Remove(tmp)
		}
	}()
	progress := func(have int64) {
		in.emit(Event{Kind: Downloading, Artifact: a.Path, Bytes: have, Total: a.Size})
	}
	if err := src.download(ctx, in.s.Version+"/"+a.Path, a, f, progress, in.onRetry(a.Path)); err != nil {
		return err
	}
	if err := f.Chmod(os.FileMode(a.mode())); err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		return err
	}
	err = f.Close()
	f = nil
	if err == nil {
		err = os.Rename(tmp, dest)
	}
	if err != nil {
		os.Remove(tmp)
		return err
	}
	in.emit(Event{Kind: ArtifactVerified, Artifact: a.Path, Bytes: a.Size, Total: a.Size})
	return nil
}

// clearScratch runs under the lock: staging/trash dirs of this version
// belong to killed installs, and an older installer's partial downloads
// are unverified.
func (in *installer) clearScratch() error {
	entries, err := os.ReadDir(in.paths.versions)
	if err != nil {
		return err
	}
	for _, e := range entries {
		leftover := e.Name() == in.paths.legacyPartial()
		for _, p := range in.paths.scratchPrefixes() {
			leftover = leftover || strings.HasPrefix(e.Name(), p)
		}
		if leftover {
			if err := os.RemoveAll(filepath.Join(in.paths.versions, e.Name())); err != nil {
				return err
			}
		}
	}
	return nil
}

// clearVersionDir runs under the lock: a version dir that failed check is
// not installed. Renamed aside first so no reader sees a half-deleted tree.
func (in *installer) clearVersionDir() error {
	if _, err := os.Lstat(in.paths.dir); err == nil {
		trash, err := in.paths.scratchDir("trash")
		if err != nil {
			return err
		}
		target := filepath.Join(trash, "old")
		if err := os.Rename(in.paths.dir, target); err != nil {
			return err
		}
		if err := syncDir(in.paths.versions); err != nil {
			return err
		}
		return os.RemoveAll(trash)
	}
	return nil
}

func (in *installer) describeMissing() string {
	b, err := readTrusted(filepath.Join(in.paths.dir, manifestFile), maxManifestBytes)
	var missing []string
	if m, perr := parseManifest(b); err != nil || perr != nil {
		missing = append(missing, in.paths.dir+" (no manifest)")
	} else {
		for _, a := range m.Platforms[platformName()] {
			if _, err := os.Lstat(filepath.Join(in.paths.dir, filepath.FromSlash(a.Path))); err != nil {
				missing = append(missing, a.Path)
			}
		}
		missing = append(missing, markerFile+" (not a complete, verified install)")
	}
	return fmt.Sprintf("version %s is not completely installed in %s; missing: %s",
		in.s.Version, in.paths.dir, strings.Join(missing, ", "))
}
