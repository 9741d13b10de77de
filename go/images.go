package lockbox

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"time"
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

type pullParams struct {
	Reference string  `json:"reference"`
	Username  *string `json:"username,omitempty"`
	Password  *string `json:"password,omitempty"`
	PlainHTTP bool    `json:"plain_http,omitempty"`
	Platform  string  `json:"platform,omitempty"`
}

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

type importParams struct {
	Kind      string `json:"kind"`
	Path      string `json:"path"`
	Reference string `json:"reference,omitempty"`
	Name      string `json:"name,omitempty"`
}

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
	return imageCall(ctx, "images.pull", "image.pull", &p)
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
	return imageCall(ctx, "images.import", "image.import", &p)
}

// List returns every stored image.
func (*ImageService) List(ctx context.Context) ([]ImageInfo, error) {
	var r struct {
		Images []ImageInfo `json:"images"`
	}
	if err := call(ctx, "images.list", "image.list", nil, &r); err != nil {
		return nil, err
	}
	for i := range r.Images {
		r.Images[i].Created = time.Unix(r.Images[i].CreatedUnix, 0)
	}
	return r.Images, nil
}

// Inspect describes one image by name, reference or digest; ErrNotFound
// if there is none.
func (*ImageService) Inspect(ctx context.Context, nameOrDigest string) (*ImageInfo, error) {
	return imageCall(ctx, "images.inspect", "image.inspect", map[string]string{"name": nameOrDigest})
}

// Remove drops a name; the content goes with its last name. Given a
// digest, it removes the content and every name on it. Content a sandbox
// (running or stopped) was made from is protected: ErrUnavailable, and
// nothing changes.
func (*ImageService) Remove(ctx context.Context, nameOrDigest string) error {
	return call(ctx, "images.remove", "image.remove", map[string]string{"name": nameOrDigest}, nil)
}

// Prune removes unnamed images no sandbox uses, and what interrupted
// unpacks left behind.
func (*ImageService) Prune(ctx context.Context) (*PruneReport, error) {
	var r PruneReport
	if err := call(ctx, "images.prune", "image.prune", nil, &r); err != nil {
		return nil, err
	}
	return &r, nil
}

func imageCall(ctx context.Context, op, method string, params any) (*ImageInfo, error) {
	var info ImageInfo
	if err := call(ctx, op, method, params, &info); err != nil {
		return nil, err
	}
	info.Created = time.Unix(info.CreatedUnix, 0)
	return &info, nil
}
