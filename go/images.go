package lockbox

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"lockbox.dev/lockbox/internal/wire"
)

// ImageService manages the image store that WithImage draws from: images
// pulled from a registry or imported from an OCI layout or a `docker save`
// tarball, and the named release images (base, python) once unpacked. Each
// image is unpacked once, content-addressed, and shared read-only by every
// sandbox made from it. Get one with Images(); it holds no resources.
type ImageService struct{}

// Images returns the image store's API.
func Images() *ImageService { return &ImageService{} }

// ImageInfo describes a stored image.
type ImageInfo struct {
	// Digest identifies the content ("sha256:<hex>"): the config digest
	// for OCI images, the archive's for release images. Any call that
	// takes a name also takes this digest.
	Digest string `json:"digest"`
	// Names are the names and references that point at it; empty for an
	// unnamed image (Prune removes those).
	Names []string `json:"names"`
	// Rootfs is the unpacked root directory on the host. Never write to it:
	// sandboxes share it.
	Rootfs string `json:"rootfs"`
	// Config holds the runtime defaults from the image's config.
	Config ImageConfig `json:"config"`
	// Stats counts what the unpack did.
	Stats ImageStats `json:"stats"`
	// Source says where it came from (an archive path, an OCI layout, a
	// registry).
	Source  string    `json:"source"`
	Created time.Time `json:"-"`

	CreatedUnix int64 `json:"created_unix"`
}

// ImageConfig holds the defaults an image carries for its sandboxes.
type ImageConfig struct {
	Env        []string `json:"env"`
	WorkingDir string   `json:"workdir,omitempty"`
	User       string   `json:"user,omitempty"`
	Entrypoint []string `json:"entrypoint"`
	Cmd        []string `json:"cmd"`
}

// ImageStats counts what unpacking an image did. Device nodes are skipped
// (a sandbox gets its own /dev) and setuid/setgid bits dropped.
type ImageStats struct {
	Entries          uint64 `json:"entries"`
	Bytes            uint64 `json:"bytes"`
	Layers           uint32 `json:"layers"`
	SkippedDevices   uint64 `json:"skipped_devices"`
	DroppedSetIDBits uint64 `json:"dropped_setid_bits"`
	ClampedIDs       uint64 `json:"clamped_ids"`
	Whiteouts        uint64 `json:"whiteouts"`
}

// PruneReport says what Prune removed.
type PruneReport struct {
	// Removed are the digests of unnamed images that were deleted.
	Removed []string `json:"removed"`
	// KeptInUse are unnamed images kept because a sandbox uses them.
	KeptInUse []string `json:"kept_in_use"`
	// RemovedTempDirs counts leftovers of interrupted unpacks.
	RemovedTempDirs uint64 `json:"removed_temp_dirs"`
}

// PullOption adjusts a Pull.
type PullOption func(*pullParams)

// pullParams is what PullOptions set: image.pull's params.
type pullParams = wire.ImagePullParams

// WithRegistryAuth sends a username and password (or token) to the
// registry, as basic auth or to its bearer token service.
func WithRegistryAuth(username, password string) PullOption {
	return func(p *pullParams) { p.Username, p.Password = &username, &password }
}

// WithPlainHTTP talks to the registry over plain HTTP instead of HTTPS.
// Only when asked: HTTPS never falls back to it.
func WithPlainHTTP() PullOption { return func(p *pullParams) { p.PlainHTTP = true } }

// WithPlatform picks "os/arch" (for example "linux/arm64") from a
// multi-platform image; the default is linux and this machine's
// architecture.
func WithPlatform(platform string) PullOption {
	return func(p *pullParams) { p.Platform = platform }
}

// ImportOption adjusts an Import.
type ImportOption func(*importParams)

// importParams is what ImportOptions set: image.import's params.
type importParams = wire.ImageImportParams

// WithImageName records the imported image under name (else under the
// reference it was found by, if any). WithImage accepts a name made of
// letters, digits, '_', '.' and '-'.
func WithImageName(name string) ImportOption { return func(p *importParams) { p.Name = name } }

// WithImageReference picks one image from an archive or layout that holds
// several: a `docker save` RepoTag ("repo:tag") or an OCI layout's
// org.opencontainers.image.ref.name annotation.
func WithImageReference(ref string) ImportOption {
	return func(p *importParams) { p.Reference = ref }
}

// Pull downloads ref ("[registry/]repository[:tag][@sha256:...]") and
// unpacks it into the store, recorded under ref as given. Every manifest,
// config and layer is checked against its digest, and layers are unpacked
// safely (nothing escapes the image root). Errors: a malformed reference
// or unsafe content ErrInvalidArgument; an image over the unpack budget
// ErrResourceExhausted; an unknown image ErrNotFound; refused credentials
// ErrPermission; an unreachable or failing registry ErrUnavailable.
// Canceling ctx returns at once; the work behind it stops at its next tar
// entry (a stalled download at the 60 s read timeout) and is discarded.
//
// The image is recorded under ref; WithImage takes its Digest (a
// reference with '/' or ':' is not a WithImage name yet).
func (*ImageService) Pull(ctx context.Context, ref string, opts ...PullOption) (*ImageInfo, error) {
	p := pullParams{Reference: ref}
	for _, o := range opts {
		o(&p)
	}
	return imageCall(ctx, "images.pull", wire.ImagePull, &p)
}

// Import unpacks an image from path: an OCI image layout directory
// (oci-layout, index.json, blobs/) or a `docker save` tarball (plain,
// gzip or zstd). Same checks as Pull.
func (*ImageService) Import(ctx context.Context, path string, opts ...ImportOption) (*ImageInfo, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, &Error{Op: "images.import", Code: CodeInvalidArgument, Message: err.Error()}
	}
	st, err := os.Stat(abs)
	if err != nil {
		code := CodeInvalidArgument
		if errors.Is(err, fs.ErrNotExist) {
			code = CodeNotFound
		}
		return nil, &Error{Op: "images.import", Code: code, Message: err.Error()}
	}
	p := importParams{Kind: "docker_archive", Path: abs}
	if st.IsDir() {
		p.Kind = "oci_layout"
	}
	for _, o := range opts {
		o(&p)
	}
	return imageCall(ctx, "images.import", wire.ImageImport, &p)
}

// List returns every stored image.
func (*ImageService) List(ctx context.Context) ([]ImageInfo, error) {
	var r wire.ImageListResult
	if err := callMethod(ctx, "images.list", wire.ImageList, nil, &r); err != nil {
		return nil, err
	}
	var out []ImageInfo
	if r.Images != nil {
		out = make([]ImageInfo, len(r.Images))
	}
	for i := range r.Images {
		out[i] = imageInfo(&r.Images[i])
	}
	return out, nil
}

// Inspect describes one image by name, reference or digest; ErrNotFound
// if there is none.
func (*ImageService) Inspect(ctx context.Context, nameOrDigest string) (*ImageInfo, error) {
	return imageCall(ctx, "images.inspect", wire.ImageInspect, &wire.NameParams{Name: nameOrDigest})
}

// Remove drops a name; the content goes with its last name. Given a
// digest, it removes the content and every name on it. Content a sandbox
// (running or stopped) was made from is protected: ErrUnavailable, and
// nothing changes.
func (*ImageService) Remove(ctx context.Context, nameOrDigest string) error {
	return callMethod(ctx, "images.remove", wire.ImageRemove, &wire.NameParams{Name: nameOrDigest}, nil)
}

// Prune removes unnamed images no sandbox uses, and what interrupted
// unpacks left behind.
func (*ImageService) Prune(ctx context.Context) (*PruneReport, error) {
	var r wire.ImagePruneResult
	if err := callMethod(ctx, "images.prune", wire.ImagePrune, nil, &r); err != nil {
		return nil, err
	}
	return &PruneReport{Removed: r.Removed, KeptInUse: r.KeptInUse, RemovedTempDirs: r.RemovedTempDirs}, nil
}

// imageCall runs an image method that returns one image's info.
func imageCall[P any](ctx context.Context, op string, m wire.Method[P, wire.ImageInfo], p *P) (*ImageInfo, error) {
	var w wire.ImageInfo
	if err := callMethod(ctx, op, m, p, &w); err != nil {
		return nil, err
	}
	info := imageInfo(&w)
	return &info, nil
}

// imageInfo is the public form of an image's info.
func imageInfo(w *wire.ImageInfo) ImageInfo {
	c := ImageConfig{Env: w.Config.Env, Entrypoint: w.Config.Entrypoint, Cmd: w.Config.Cmd}
	if w.Config.Workdir != nil {
		c.WorkingDir = *w.Config.Workdir
	}
	if w.Config.User != nil {
		c.User = *w.Config.User
	}
	s := w.Stats
	return ImageInfo{Digest: w.Digest, Names: w.Names, Rootfs: w.Rootfs, Config: c,
		Stats: ImageStats{Entries: s.Entries, Bytes: s.Bytes, Layers: s.Layers,
			SkippedDevices: s.SkippedDevices, DroppedSetIDBits: s.DroppedSetIDBits,
			ClampedIDs: s.ClampedIDs, Whiteouts: s.Whiteouts},
		Source: w.Source, CreatedUnix: w.CreatedUnix, Created: time.Unix(w.CreatedUnix, 0)}
}
