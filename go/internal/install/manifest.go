package install

import (
	"encoding/json"
	"fmt"
	"runtime"
	"strings"
)

// The release manifest (manifests/manifest.schema.json). The signature
// covers its exact bytes, so it is parsed for reading only.
type releaseManifest struct {
	SchemaVersion int                          `json:"schema_version"`
	Product       string                       `json:"product"`
	Version       string                       `json:"version"`
	ABIVersion    int                          `json:"abi_version"`
	Platforms     map[string][]releaseArtifact `json:"platforms"`
}

type releaseArtifact struct {
	Name   string `json:"name"`
	Path   string `json:"path"`
	Kind   string `json:"kind"`
	Size   int64  `json:"size"`
	SHA256 string `json:"sha256"`
}

const (
	manifestSchemaVersion = 1
	manifestProduct       = "lockbox"
	maxManifestBytes      = 1 << 20
	maxSignatureBytes     = 4096
)

// The VM kinds: the microVM guest, installed only when asked for
// (Settings.VMAssets), under one fixed path each, where the engine looks
// (<version dir>/vm/, docs/microvm.md).
const (
	kindVMKernel    = "vm-kernel"
	kindVMInitramfs = "vm-initramfs"
	vmDir           = "vm"
)

var kindDirs = map[string]string{"library": "lib", "helper": "bin", "image": "images",
	kindVMKernel: vmDir, kindVMInitramfs: vmDir}

var vmFiles = map[string]string{kindVMKernel: "vmlinuz", kindVMInitramfs: "initramfs.img"}

func (a releaseArtifact) isVM() bool { return a.Kind == kindVMKernel || a.Kind == kindVMInitramfs }

// platformName names this OS/CPU the way the Rust installer does
// (std::env::consts): linux-x86_64, linux-aarch64.
func platformName() string {
	arch := runtime.GOARCH
	switch arch {
	case "amd64":
		arch = "x86_64"
	case "arm64":
		arch = "aarch64"
	case "386":
		arch = "x86"
	}
	return runtime.GOOS + "-" + arch
}

func safeName(s string) bool {
	if s == "" || len(s) > 128 || s[0] == '.' {
		return false
	}
	for _, c := range []byte(s) {
		ok := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("._+-", c) >= 0
		if !ok {
			return false
		}
	}
	return true
}

func validVersion(v string) bool { return len(v) <= 64 && safeName(v) }

func parseManifest(b []byte) (*releaseManifest, error) {
	var m releaseManifest
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("%w: manifest is not valid JSON: %v", ErrVerification, err)
	}
	if err := m.validate(); err != nil {
		return nil, fmt.Errorf("%w: manifest: %v", ErrVerification, err)
	}
	return &m, nil
}

func (m *releaseManifest) validate() error {
	if m.SchemaVersion != manifestSchemaVersion {
		return fmt.Errorf("schema_version %d (this SDK reads %d)", m.SchemaVersion, manifestSchemaVersion)
	}
	if m.Product != manifestProduct {
		return fmt.Errorf("product %q", m.Product)
	}
	if !validVersion(m.Version) {
		return fmt.Errorf("version %q", m.Version)
	}
	for platform, arts := range m.Platforms {
		seen := map[string]bool{}
		libs, kernels, initramfs := 0, 0, 0
		for _, a := range arts {
			if err := a.validate(); err != nil {
				return fmt.Errorf("%s: %v", platform, err)
			}
			if seen[a.Path] {
				return fmt.Errorf("%s: duplicate path %s", platform, a.Path)
			}
			seen[a.Path] = true
			switch a.Kind {
			case "library":
				libs++
			case kindVMKernel:
				kernels++
			case kindVMInitramfs:
				initramfs++
			}
		}
		if libs != 1 {
			return fmt.Errorf("%s: %d libraries (want exactly 1)", platform, libs)
		}
		if kernels != initramfs {
			return fmt.Errorf("%s: %d VM kernels and %d initramfs (VM assets come as a pair)", platform, kernels, initramfs)
		}
	}
	return nil
}

// validate keeps every artifact at <kind dir>/<file>: nothing lands
// outside the version directory or over the manifest and marker.
func (a releaseArtifact) validate() error {
	dir, file, ok := strings.Cut(a.Path, "/")
	want, known := kindDirs[a.Kind]
	if !ok || !known || dir != want || !safeName(file) {
		return fmt.Errorf("path %q is not <kind dir>/<file> for kind %q", a.Path, a.Kind)
	}
	if want, fixed := vmFiles[a.Kind]; fixed && file != want {
		return fmt.Errorf("path %q: a %s is %s/%s", a.Path, a.Kind, vmDir, want)
	}
	if !safeName(a.Name) {
		return fmt.Errorf("name %q", a.Name)
	}
	if a.Size < 0 {
		return fmt.Errorf("%s: negative size", a.Path)
	}
	if len(a.SHA256) != 64 || strings.Trim(a.SHA256, "0123456789abcdef") != "" {
		return fmt.Errorf("%s: sha256 is not 64 lowercase hex digits", a.Path)
	}
	return nil
}

func (a releaseArtifact) mode() uint32 {
	if a.Kind == "helper" {
		return 0o755
	}
	return 0o644
}

// splitVM separates the VM assets from the artifacts every install has.
func splitVM(arts []releaseArtifact) (base, vm []releaseArtifact) {
	for _, a := range arts {
		if a.isVM() {
			vm = append(vm, a)
		} else {
			base = append(base, a)
		}
	}
	return base, vm
}

func (m *releaseManifest) artifactsFor(platform string) ([]releaseArtifact, error) {
	arts, ok := m.Platforms[platform]
	if !ok {
		have := make([]string, 0, len(m.Platforms))
		for p := range m.Platforms {
			have = append(have, p)
		}
		return nil, fmt.Errorf("%w: release %s has no artifacts for %s (it has: %s)",
			ErrReleaseNotFound, m.Version, platform, strings.Join(have, ", "))
	}
	return arts, nil
}
