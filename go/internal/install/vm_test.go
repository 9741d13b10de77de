package install

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"lockbox.dev/lockbox/internal/abi"
)

// The VM assets' install tests: a real signed release of random bytes in a
// directory, served by a real HTTP server on 127.0.0.1 that counts
// requests and can misbehave, installed into a fresh root.

const (
	vmTestVersion = "7.0.0"
	kernelPath    = "vm/vmlinuz"
	initramfsPath = "vm/initramfs.img"
)

type vmRelease struct {
	dist  string
	pub   ed25519.PublicKey
	files map[string][]byte // artifact path -> bytes as released
}

// buildVMRelease writes dist/<vmTestVersion>/ with a library, a helper
// and (withVM) both VM assets; edit may change the artifact list before
// the manifest is signed.
func buildVMRelease(t *testing.T, withVM bool, edit func([]releaseArtifact)) *vmRelease {
	t.Helper()
	r := &vmRelease{dist: t.TempDir(), files: map[string][]byte{}}
	add := func(path string, n int) {
		b := make([]byte, n)
		rand.Read(b)
		r.files[path] = b
	}
	add("lib/liblockbox.so", 64<<10)
	add("bin/lockbox-helper", 16<<10)
	if withVM {
		add(kernelPath, 400<<10)
		add(initramfsPath, 300<<10)
	}
	kinds := map[string]string{"lib/liblockbox.so": "library", "bin/lockbox-helper": "helper",
		kernelPath: kindVMKernel, initramfsPath: kindVMInitramfs}
	var arts []releaseArtifact
	dir := filepath.Join(r.dist, vmTestVersion)
	for path, b := range r.files {
		arts = append(arts, releaseArtifact{Name: filepath.Base(path), Path: path, Kind: kinds[path],
			Size: int64(len(b)), SHA256: sha256Hex(b)})
		writeTestFile(t, filepath.Join(dir, path), b)
	}
	if edit != nil {
		edit(arts)
	}
	mb, err := json.MarshalIndent(releaseManifest{SchemaVersion: 1, Product: "lockbox", Version: vmTestVersion,
		ABIVersion: abi.ABIVersion, Platforms: map[string][]releaseArtifact{platformName(): arts}}, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	pub, priv, _ := ed25519.GenerateKey(rand.Reader)
	r.pub = pub
	writeTestFile(t, filepath.Join(dir, manifestFile), mb)
	writeTestFile(t, filepath.Join(dir, signatureFile), []byte(base64.StdEncoding.EncodeToString(ed25519.Sign(priv, mb))+"\n"))
	return r
}

func writeTestFile(t *testing.T, path string, b []byte) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// vmServer serves a release over HTTP on 127.0.0.1. fault may take over a
// request (return true).
type vmServer struct {
	*httptest.Server
	mu   sync.Mutex
	hits map[string]int
}

func serveVM(t *testing.T, dist string, fault func(w http.ResponseWriter, r *http.Request) bool) *vmServer {
	s := &vmServer{hits: map[string]int{}}
	files := http.FileServer(http.Dir(dist))
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		s.hits[strings.TrimPrefix(r.URL.Path, "/"+vmTestVersion+"/")]++
		s.mu.Unlock()
		if fault != nil && fault(w, r) {
			return
		}
		files.ServeHTTP(w, r)
	}))
	t.Cleanup(func() { s.CloseClientConnections(); s.Close() })
	return s
}

func (s *vmServer) count(path string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.hits[path]
}

func vmSettings(t *testing.T, root, url string, pub ed25519.PublicKey, vm bool) *Settings {
	s := settings(t, root, vmTestVersion, pub)
	s.ReleaseURL, s.VMAssets = url, vm
	s.StallTimeout = 5 * time.Second
	return s
}

// assertVMInstalled: both files hold the release's bytes, and the
// installation reports their directory.
func assertVMInstalled(t *testing.T, inst *Installation, r *vmRelease) {
	t.Helper()
	if want := filepath.Join(inst.Dir, "vm"); inst.VMAssetsDir != want {
		t.Fatalf("VMAssetsDir %q, want %q", inst.VMAssetsDir, want)
	}
	for _, p := range []string{kernelPath, initramfsPath} {
		b, err := os.ReadFile(filepath.Join(inst.Dir, p))
		if err != nil || string(b) != string(r.files[p]) {
			t.Fatalf("%s: not the release's bytes (%v)", p, err)
		}
	}
}

// assertNoVMDir: nothing that could look like installed VM assets.
func assertNoVMDir(t *testing.T, root string) {
	t.Helper()
	if _, err := os.Lstat(filepath.Join(root, "versions", vmTestVersion, "vm")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("a vm/ dir is there after a failed install: %v", err)
	}
}

// A native install never asks the server for the VM assets; asking for
// them later downloads exactly them, not the library again.
func TestVMAssetsOnlyWhenAskedAndAddedLater(t *testing.T) {
	r := buildVMRelease(t, true, nil)
	srv := serveVM(t, r.dist, nil)
	root := t.TempDir()
	inst, err := Ensure(context.Background(), vmSettings(t, root, srv.URL, r.pub, false))
	if err != nil {
		t.Fatal(err)
	}
	if srv.count("lib/liblockbox.so") != 1 {
		t.Fatalf("control: the library was requested %d times", srv.count("lib/liblockbox.so"))
	}
	if n := srv.count(kernelPath) + srv.count(initramfsPath); n != 0 {
		t.Fatalf("a native install made %d requests for VM assets", n)
	}
	if inst.VMAssetsDir != "" {
		t.Fatalf("native install reports VM assets at %s", inst.VMAssetsDir)
	}
	assertNoVMDir(t, root)
	if IsInstalled(vmSettings(t, root, srv.URL, r.pub, true)) {
		t.Fatal("IsInstalled with VM assets before they were installed")
	}

	inst, err = Ensure(context.Background(), vmSettings(t, root, srv.URL, r.pub, true))
	if err != nil {
		t.Fatal(err)
	}
	assertVMInstalled(t, inst, r)
	if srv.count(kernelPath) != 1 || srv.count(initramfsPath) != 1 || srv.count("lib/liblockbox.so") != 1 || srv.count(manifestFile) != 1 {
		t.Fatalf("adding the VM assets: requests %v", srv.hits)
	}
	// Warm: nothing downloaded, both kinds of install still complete.
	if _, err := Ensure(context.Background(), vmSettings(t, root, srv.URL, r.pub, true)); err != nil {
		t.Fatal(err)
	}
	if !IsInstalled(vmSettings(t, root, srv.URL, r.pub, false)) || srv.count(kernelPath) != 1 {
		t.Fatalf("warm path: requests %v", srv.hits)
	}
	// Installed without them and no source to get them from: the error
	// says what is missing, not that nothing is installed.
	noSrc := vmSettings(t, t.TempDir(), "", r.pub, false)
	if _, err := Ensure(context.Background(), vmSettings(t, noSrc.Root, srv.URL, r.pub, false)); err != nil {
		t.Fatal(err)
	}
	noSrc.VMAssets = true
	if _, err := Ensure(context.Background(), noSrc); !errors.Is(err, ErrNoReleaseURL) || !strings.Contains(err.Error(), "VM assets are not") {
		t.Fatalf("no release URL, VM assets missing: %v", err)
	}
	// A fresh install with them fetches everything in one go.
	root2 := t.TempDir()
	inst, err = Ensure(context.Background(), vmSettings(t, root2, srv.URL, r.pub, true))
	if err != nil {
		t.Fatal(err)
	}
	assertVMInstalled(t, inst, r)
}

// What a hostile or broken server sends for a VM asset is refused and
// leaves no vm/ dir, whether the VM assets come with a fresh install or
// are added to one; the native install beside them stays usable.
func TestVMAssetsBadServerRefused(t *testing.T) {
	flip := func(r *vmRelease) {
		b := append([]byte(nil), r.files[initramfsPath]...)
		b[len(b)/2] ^= 1
		writeTestFile(t, filepath.Join(r.dist, vmTestVersion, initramfsPath), b)
	}
	truncate := func(r *vmRelease) {
		writeTestFile(t, filepath.Join(r.dist, vmTestVersion, kernelPath), r.files[kernelPath][:len(r.files[kernelPath])-1])
	}
	missing := func(r *vmRelease) {
		if err := os.Remove(filepath.Join(r.dist, vmTestVersion, kernelPath)); err != nil {
			t.Fatal(err)
		}
	}
	cases := []struct {
		name  string
		spoil func(*vmRelease)
		edit  func([]releaseArtifact)
		want  error
		text  string
	}{
		{"one byte flipped", flip, nil, ErrVerification, "sha256"},
		{"truncated", truncate, nil, ErrVerification, "bytes"},
		{"missing on the server", missing, nil, ErrReleaseNotFound, "404"},
		{"wrong size in the manifest", nil, func(arts []releaseArtifact) {
			for i := range arts {
				if arts[i].Path == kernelPath {
					arts[i].Size++
				}
			}
		}, ErrVerification, "manifest says"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := buildVMRelease(t, true, c.edit)
			srv := serveVM(t, r.dist, nil)
			// Native first (the VM assets are not looked at), then the add.
			root := t.TempDir()
			if _, err := Ensure(context.Background(), vmSettings(t, root, srv.URL, r.pub, false)); err != nil {
				t.Fatal(err)
			}
			// Control: before the spoiling, the add would succeed.
			if c.spoil != nil {
				ctl := t.TempDir()
				if _, err := Ensure(context.Background(), vmSettings(t, ctl, srv.URL, r.pub, true)); err != nil {
					t.Fatalf("control install: %v", err)
				}
				c.spoil(r)
			}
			_, err := Ensure(context.Background(), vmSettings(t, root, srv.URL, r.pub, true))
			if !errors.Is(err, c.want) || !strings.Contains(err.Error(), c.text) {
				t.Fatalf("added from a bad server: %v (want %v, %q)", err, c.want, c.text)
			}
			assertNoVMDir(t, root)
			if IsInstalled(vmSettings(t, root, srv.URL, r.pub, true)) {
				t.Fatal("VM assets look installed after a refused add")
			}
			if !IsInstalled(vmSettings(t, root, srv.URL, r.pub, false)) {
				t.Fatal("the native install did not survive a refused VM add")
			}
			// A fresh install asking for them installs nothing at all.
			fresh := t.TempDir()
			if _, err := Ensure(context.Background(), vmSettings(t, fresh, srv.URL, r.pub, true)); !errors.Is(err, c.want) {
				t.Fatalf("fresh install from a bad server: %v", err)
			}
			if _, err := os.Lstat(filepath.Join(fresh, "versions", vmTestVersion)); !errors.Is(err, os.ErrNotExist) {
				t.Fatalf("a failed fresh install left a version dir: %v", err)
			}
		})
	}
}

// Installed VM assets that were damaged afterwards (a byte flipped, same
// size; a file gone) are not reported as installed, and the next install
// that asks for them replaces exactly them.
func TestVMAssetsDamagedAreDetectedAndRepaired(t *testing.T) {
	r := buildVMRelease(t, true, nil)
	srv := serveVM(t, r.dist, nil)
	root := t.TempDir()
	inst, err := Ensure(context.Background(), vmSettings(t, root, srv.URL, r.pub, true))
	if err != nil {
		t.Fatal(err)
	}
	for i, damage := range []func(){
		func() {
			p := filepath.Join(inst.Dir, initramfsPath)
			b, _ := os.ReadFile(p)
			b[1000] ^= 1
			if err := os.WriteFile(p, b, 0o644); err != nil {
				t.Fatal(err)
			}
		},
		func() { os.Remove(filepath.Join(inst.Dir, kernelPath)) },
	} {
		if !IsInstalled(vmSettings(t, root, srv.URL, r.pub, true)) {
			t.Fatalf("control %d: the intact install is not complete", i)
		}
		damage()
		if IsInstalled(vmSettings(t, root, srv.URL, r.pub, true)) {
			t.Fatalf("damage %d: VM assets still reported installed", i)
		}
		if !IsInstalled(vmSettings(t, root, srv.URL, r.pub, false)) {
			t.Fatalf("damage %d: the native install is no longer complete", i)
		}
		_, err := Ensure(context.Background(), func() *Settings {
			s := vmSettings(t, root, srv.URL, r.pub, true)
			s.Offline = true
			return s
		}())
		if !errors.Is(err, abi.ErrNotInstalled) {
			t.Fatalf("damage %d: offline: %v", i, err)
		}
		lib := srv.count("lib/liblockbox.so")
		inst, err = Ensure(context.Background(), vmSettings(t, root, srv.URL, r.pub, true))
		if err != nil {
			t.Fatalf("repair %d: %v", i, err)
		}
		assertVMInstalled(t, inst, r)
		if srv.count("lib/liblockbox.so") != lib {
			t.Fatalf("repair %d downloaded the library again", i)
		}
	}
	if srv.count(kernelPath) != 3 || srv.count(initramfsPath) != 3 {
		t.Fatalf("requests %v: want the first install and 2 repairs", srv.hits)
	}
}

// A release without VM assets: asking for them fails with
// ErrReleaseNotFound before anything is downloaded; without asking, the
// install is as before.
func TestVMAssetsAbsentFromRelease(t *testing.T) {
	r := buildVMRelease(t, false, nil)
	srv := serveVM(t, r.dist, nil)
	root := t.TempDir()
	_, err := Ensure(context.Background(), vmSettings(t, root, srv.URL, r.pub, true))
	if !errors.Is(err, ErrReleaseNotFound) || !strings.Contains(err.Error(), "no VM assets") {
		t.Fatalf("VM assets from a release without them: %v", err)
	}
	if srv.count("lib/liblockbox.so") != 0 {
		t.Fatal("the library was downloaded for an install that cannot succeed")
	}
	if _, err := Ensure(context.Background(), vmSettings(t, root, srv.URL, r.pub, false)); err != nil {
		t.Fatalf("control: native install: %v", err)
	}
	if _, err := Ensure(context.Background(), vmSettings(t, root, srv.URL, r.pub, true)); !errors.Is(err, ErrReleaseNotFound) {
		t.Fatalf("adding VM assets the release lacks: %v", err)
	}
}

// An add of the VM assets killed (SIGKILL) while the kernel is half
// downloaded leaves nothing that looks installed; the next install
// removes its staging dir and completes.
func TestVMAssetsKilledHalfway(t *testing.T) {
	if spec := os.Getenv("LOCKBOX_VM_KILL_CHILD"); spec != "" {
		parts := strings.Split(spec, "|") // root, URL, key
		root, url := parts[0], parts[1]
		pub, _ := base64.StdEncoding.DecodeString(parts[2])
		_, err := Ensure(context.Background(), vmSettings(t, root, url, pub, true))
		fmt.Fprintf(os.Stderr, "child install returned: %v\n", err)
		os.Exit(3) // never reached when killed as intended
	}
	r := buildVMRelease(t, true, nil)
	half := make(chan struct{}, 1)
	stalling := true
	var mu sync.Mutex
	srv := serveVM(t, r.dist, func(w http.ResponseWriter, req *http.Request) bool {
		mu.Lock()
		stall := stalling && strings.HasSuffix(req.URL.Path, kernelPath)
		mu.Unlock()
		if !stall {
			return false
		}
		b := r.files[kernelPath]
		w.Header().Set("Content-Length", fmt.Sprint(len(b)))
		w.Write(b[:len(b)/2])
		w.(http.Flusher).Flush()
		select {
		case half <- struct{}{}:
		default:
		}
		<-req.Context().Done()
		return true
	})
	root := t.TempDir()
	if _, err := Ensure(context.Background(), vmSettings(t, root, srv.URL, r.pub, false)); err != nil {
		t.Fatal(err)
	}
	child := exec.Command(os.Args[0], "-test.run", "^TestVMAssetsKilledHalfway$")
	child.Env = append(os.Environ(), "LOCKBOX_VM_KILL_CHILD="+root+"|"+srv.URL+"|"+base64.StdEncoding.EncodeToString(r.pub))
	var stderr strings.Builder
	child.Stderr = &stderr
	if err := child.Start(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-half:
	case <-time.After(30 * time.Second):
		child.Process.Kill()
		child.Wait()
		t.Fatalf("the child never got half of the kernel: %s", stderr.String())
	}
	child.Process.Signal(syscall.SIGKILL)
	err := child.Wait()
	if ws, ok := child.ProcessState.Sys().(syscall.WaitStatus); !ok || !ws.Signaled() {
		t.Fatalf("control: the child was not killed mid-install (%v): %s", err, stderr.String())
	}
	mu.Lock()
	stalling = false
	mu.Unlock()

	assertNoVMDir(t, root)
	if IsInstalled(vmSettings(t, root, srv.URL, r.pub, true)) {
		t.Fatal("VM assets look installed after a killed add")
	}
	if !IsInstalled(vmSettings(t, root, srv.URL, r.pub, false)) {
		t.Fatal("the native install did not survive a killed VM add")
	}
	leftovers := func() []string {
		ents, _ := os.ReadDir(filepath.Join(root, "versions"))
		var out []string
		for _, e := range ents {
			if strings.HasPrefix(e.Name(), ".staging-") || strings.HasPrefix(e.Name(), ".trash-") {
				out = append(out, e.Name())
			}
		}
		return out
	}
	if len(leftovers()) == 0 {
		t.Fatal("control: the killed install left no staging dir, so it was not killed mid-download")
	}
	inst, err := Ensure(context.Background(), vmSettings(t, root, srv.URL, r.pub, true))
	if err != nil {
		t.Fatal(err)
	}
	assertVMInstalled(t, inst, r)
	if l := leftovers(); len(l) != 0 {
		t.Fatalf("leftovers after the next install: %v", l)
	}
}

// BenchmarkWarmVMCheck: what WithVMAssets adds to the warm path: the
// re-hash of a guest of the size make vm-assets builds (14186432-byte
// kernel, 3710725-byte initramfs).
func BenchmarkWarmVMCheck(b *testing.B) {
	dir := b.TempDir()
	var vm []releaseArtifact
	for path, n := range map[string]int{kernelPath: 14186432, initramfsPath: 3710725} {
		buf := make([]byte, n)
		rand.Read(buf)
		if err := os.MkdirAll(filepath.Join(dir, "vm"), 0o700); err != nil {
			b.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, path), buf, 0o644); err != nil {
			b.Fatal(err)
		}
		kind := kindVMKernel
		if path == initramfsPath {
			kind = kindVMInitramfs
		}
		vm = append(vm, releaseArtifact{Path: path, Kind: kind, Size: int64(n), SHA256: sha256Hex(buf)})
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if err := checkVM(dir, vm); err != nil {
			b.Fatal(err)
		}
	}
}

// VM assets have one path each and come as a pair: a manifest naming them
// otherwise is refused (the engine looks only at vm/vmlinuz and
// vm/initramfs.img). Control: the right pair parses.
func TestManifestVMKinds(t *testing.T) {
	sum := strings.Repeat("0", 64)
	lib := releaseArtifact{Name: "liblockbox.so", Path: "lib/liblockbox.so", Kind: "library", Size: 1, SHA256: sum}
	kernel := releaseArtifact{Name: "vmlinuz", Path: kernelPath, Kind: kindVMKernel, Size: 1, SHA256: sum}
	initramfs := releaseArtifact{Name: "initramfs.img", Path: initramfsPath, Kind: kindVMInitramfs, Size: 1, SHA256: sum}
	m := func(arts ...releaseArtifact) *releaseManifest {
		return &releaseManifest{SchemaVersion: 1, Product: "lockbox", Version: "1.0.0", ABIVersion: 1,
			Platforms: map[string][]releaseArtifact{platformName(): arts}}
	}
	if err := m(lib, kernel, initramfs).validate(); err != nil {
		t.Fatalf("control: %v", err)
	}
	if m(lib, kernel).validate() == nil || m(lib, initramfs).validate() == nil {
		t.Fatal("half a pair accepted")
	}
	for _, bad := range []releaseArtifact{
		{Name: "bzImage", Path: "vm/bzImage", Kind: kindVMKernel, Size: 1, SHA256: sum},
		{Name: "vmlinuz", Path: "vm/vmlinuz", Kind: kindVMInitramfs, Size: 1, SHA256: sum},
		{Name: "vmlinuz", Path: "lib/vmlinuz", Kind: kindVMKernel, Size: 1, SHA256: sum},
		{Name: "x.so", Path: "vm/x.so", Kind: "library", Size: 1, SHA256: sum},
	} {
		if bad.validate() == nil {
			t.Errorf("accepted %+v", bad)
		}
	}
}
