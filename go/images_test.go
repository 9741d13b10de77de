package lockbox

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// staticBusybox finds the busybox of the dev base image (make image-base),
// a static binary an image can carry without a libc.
func staticBusybox(t *testing.T) []byte {
	t.Helper()
	roots := []string{filepath.Join("..", "build", "images")}
	if r := os.Getenv("LOCKBOX_IMAGES"); r != "" {
		roots = append([]string{r}, roots...)
	}
	for _, r := range roots {
		if b, err := os.ReadFile(filepath.Join(r, "base", "rootfs", "bin", "busybox")); err == nil {
			return b
		}
	}
	t.Skip("no static busybox: run `make image-base`")
	return nil
}

// testLayer is one uncompressed layer with busybox (as /bin/busybox,
// /bin/sh, /bin/cat) and /etc/msg.txt holding msg.
func testLayer(t *testing.T, busybox []byte, msg string) []byte {
	t.Helper()
	var layer bytes.Buffer
	tw := tar.NewWriter(&layer)
	for _, d := range []string{"bin/", "data/", "dev/", "etc/", "proc/", "sys/", "tmp/", "root/", "work/"} {
		mode := int64(0o755)
		if d == "tmp/" {
			mode = 0o1777
		}
		must(t, tw.WriteHeader(&tar.Header{Name: d, Typeflag: tar.TypeDir, Mode: mode}))
	}
	files := []struct {
		name string
		mode int64
		body []byte
	}{{"bin/busybox", 0o755, busybox}, {"etc/msg.txt", 0o644, []byte(msg)}}
	for _, f := range files {
		must(t, tw.WriteHeader(&tar.Header{Name: f.name, Typeflag: tar.TypeReg, Mode: f.mode, Size: int64(len(f.body))}))
		_, err := tw.Write(f.body)
		must(t, err)
	}
	for _, l := range []string{"bin/sh", "bin/cat", "bin/id", "bin/pwd", "bin/echo"} {
		must(t, tw.WriteHeader(&tar.Header{Name: l, Typeflag: tar.TypeSymlink, Linkname: "busybox", Mode: 0o777}))
	}
	must(t, tw.Close())
	return layer.Bytes()
}

// defaultTestConfig is the runtime part of testConfig's image config.
var defaultTestConfig = map[string]any{
	"Env": []string{"PATH=/bin", "MSG=imported"},
	"Cmd": []string{"/bin/sh"},
}

// testConfig is an image config with runtime config cfg over one layer
// whose uncompressed digest is diffID.
func testConfig(t *testing.T, diffID string, cfg map[string]any) []byte {
	t.Helper()
	b, err := json.Marshal(map[string]any{
		"architecture": runtime.GOARCH,
		"os":           "linux",
		"config":       cfg,
		"rootfs":       map[string]any{"type": "layers", "diff_ids": []string{diffID}},
	})
	must(t, err)
	return b
}

// writeOCILayout writes an OCI image layout by hand: testLayer, testConfig,
// a manifest and index.json. refName, if set, is the manifest's ref-name
// annotation.
func writeOCILayout(t *testing.T, dir string, busybox []byte, msg, refName string) {
	t.Helper()
	writeOCILayoutWithConfig(t, dir, busybox, msg, refName, defaultTestConfig)
}

// writeOCILayoutWithConfig is writeOCILayout with the image's runtime
// config (Env, WorkingDir, User, Entrypoint, Cmd) given.
func writeOCILayoutWithConfig(t *testing.T, dir string, busybox []byte, msg, refName string, cfg map[string]any) {
	t.Helper()
	layer := testLayer(t, busybox, msg)
	blobs := filepath.Join(dir, "blobs", "sha256")
	must(t, os.MkdirAll(blobs, 0o755))
	type desc struct {
		MediaType   string            `json:"mediaType"`
		Digest      string            `json:"digest"`
		Size        int               `json:"size"`
		Annotations map[string]string `json:"annotations,omitempty"`
	}
	put := func(mediaType string, b []byte) desc {
		h := sha256Hex(b)
		must(t, os.WriteFile(filepath.Join(blobs, h), b, 0o644))
		return desc{MediaType: mediaType, Digest: "sha256:" + h, Size: len(b)}
	}
	toJSON := func(v any) []byte {
		b, err := json.Marshal(v)
		must(t, err)
		return b
	}
	layerDesc := put("application/vnd.oci.image.layer.v1.tar", layer)
	config := put("application/vnd.oci.image.config.v1+json", testConfig(t, layerDesc.Digest, cfg))
	manifest := put("application/vnd.oci.image.manifest.v1+json", toJSON(map[string]any{
		"schemaVersion": 2,
		"mediaType":     "application/vnd.oci.image.manifest.v1+json",
		"config":        config,
		"layers":        []desc{layerDesc},
	}))
	if refName != "" {
		manifest.Annotations = map[string]string{"org.opencontainers.image.ref.name": refName}
	}
	must(t, os.WriteFile(filepath.Join(dir, "index.json"), toJSON(map[string]any{
		"schemaVersion": 2,
		"manifests":     []desc{manifest},
	}), 0o644))
	must(t, os.WriteFile(filepath.Join(dir, "oci-layout"), []byte(`{"imageLayoutVersion":"1.0.0"}`), 0o644))
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func listed(t *testing.T, digest string) *ImageInfo {
	t.Helper()
	all, err := Images().List(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for i := range all {
		if all[i].Digest == digest {
			return &all[i]
		}
	}
	return nil
}

func TestImageImportRunRemove(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	bb := staticBusybox(t)
	dir := t.TempDir()
	// The message makes the content (and so the digest) unique to this run.
	msg := fmt.Sprintf("hello from the layer %d %d\n", os.Getpid(), time.Now().UnixNano())
	writeOCILayout(t, dir, bb, msg, "v1")
	name := fmt.Sprintf("imgapi-test-%d", os.Getpid())

	info, err := Images().Import(ctx, dir, WithImageName(name))
	if err != nil {
		t.Fatalf("Import: %v", err)
	}
	t.Cleanup(func() { _ = Images().Remove(context.Background(), info.Digest) })
	if len(info.Digest) != len("sha256:")+64 || !slices.Contains(info.Names, name) {
		t.Fatalf("Import: %+v", info)
	}
	if !slices.Contains(info.Config.Env, "MSG=imported") || !slices.Equal(info.Config.Cmd, []string{"/bin/sh"}) {
		t.Fatalf("config not read: %+v", info.Config)
	}
	if info.Stats.Layers != 1 || info.Stats.Entries < 10 || info.Created.IsZero() {
		t.Fatalf("stats: %+v created %v", info.Stats, info.Created)
	}
	if l := listed(t, info.Digest); l == nil || !slices.Contains(l.Names, name) {
		t.Fatalf("List: %+v", l)
	}
	for _, key := range []string{name, info.Digest} {
		got, err := Images().Inspect(ctx, key)
		if err != nil || got.Digest != info.Digest || got.Rootfs != info.Rootfs {
			t.Fatalf("Inspect(%s): %v %+v", key, err, got)
		}
	}

	sb, err := CreateSandbox(ctx, WithImage(name))
	if err != nil {
		t.Fatalf("CreateSandbox(WithImage(%q)): %v", name, err)
	}
	defer sb.Remove(context.Background())
	res, err := sb.Exec(ctx, "cat", "/etc/msg.txt")
	if err != nil || res.ExitCode != 0 || string(res.Stdout) != msg {
		t.Fatalf("cat in the imported image: %v %+v stdout %q stderr %q", err, res, res.Stdout, res.Stderr)
	}

	// In use: neither the name nor the content may go.
	for _, key := range []string{name, info.Digest} {
		wantCode(t, Images().Remove(ctx, key), CodeUnavailable, ErrUnavailable)
	}
	if got, err := Images().Inspect(ctx, name); err != nil || got.Digest != info.Digest {
		t.Fatalf("after refused remove: %v %+v", err, got)
	}

	if err := sb.Remove(ctx); err != nil {
		t.Fatal(err)
	}
	if err := Images().Remove(ctx, name); err != nil {
		t.Fatalf("Remove after the sandbox went: %v", err)
	}
	_, err = Images().Inspect(ctx, name)
	wantCode(t, err, CodeNotFound, ErrNotFound)
	if l := listed(t, info.Digest); l != nil {
		t.Fatalf("still listed after its last name went: %+v", l)
	}
	if _, err := os.Stat(info.Rootfs); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("rootfs left behind: %v", err)
	}
}

func TestImagePruneKeepsImagesInUse(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	bb := staticBusybox(t)
	dir := t.TempDir()
	msg := fmt.Sprintf("unnamed %d %d\n", os.Getpid(), time.Now().UnixNano())
	writeOCILayout(t, dir, bb, msg, "")

	// No name and no ref annotation: an unnamed image, what Prune collects.
	info, err := Images().Import(ctx, dir)
	if err != nil {
		t.Fatalf("Import: %v", err)
	}
	t.Cleanup(func() { _ = Images().Remove(context.Background(), info.Digest) })
	if len(info.Names) != 0 {
		t.Fatalf("names: %v", info.Names)
	}
	sb, err := CreateSandbox(ctx, WithImage(info.Digest))
	if err != nil {
		t.Fatalf("CreateSandbox(WithImage(digest)): %v", err)
	}
	defer sb.Remove(context.Background())
	res, err := sb.Exec(ctx, "cat", "/etc/msg.txt")
	if err != nil || string(res.Stdout) != msg {
		t.Fatalf("cat: %v %q", err, res.Stdout)
	}

	rep, err := Images().Prune(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(rep.KeptInUse, info.Digest) || slices.Contains(rep.Removed, info.Digest) {
		t.Fatalf("prune with the sandbox live: %+v", rep)
	}
	if _, err := Images().Inspect(ctx, info.Digest); err != nil {
		t.Fatalf("pruned while in use: %v", err)
	}

	if err := sb.Remove(ctx); err != nil {
		t.Fatal(err)
	}
	rep, err = Images().Prune(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(rep.Removed, info.Digest) {
		t.Fatalf("prune after the sandbox went: %+v", rep)
	}
	_, err = Images().Inspect(ctx, info.Digest)
	wantCode(t, err, CodeNotFound, ErrNotFound)
}

func TestImageBadInputIsTyped(t *testing.T) {
	ctx := context.Background()
	_, err := Images().Inspect(ctx, "imgapi-no-such-image")
	wantCode(t, err, CodeNotFound, ErrNotFound)
	_, err = Images().Inspect(ctx, "sha256:"+fmt.Sprintf("%064x", 7))
	wantCode(t, err, CodeNotFound, ErrNotFound)
	wantCode(t, Images().Remove(ctx, "imgapi-no-such-image"), CodeNotFound, ErrNotFound)

	for _, ref := range []string{"Has Spaces", "example.com/UPPER/case:tag", "repo:bad:tag:", ""} {
		_, err = Images().Pull(ctx, ref)
		wantCode(t, err, CodeInvalidArgument, ErrInvalidArgument)
	}
	// Nothing listens on port 1: the registry is unavailable, not a bug.
	_, err = Images().Pull(ctx, "127.0.0.1:1/x:1", WithPlainHTTP(), WithRegistryAuth("u", "p"))
	wantCode(t, err, CodeUnavailable, ErrUnavailable)

	// Raw params the Go API never sends are refused by the library too.
	for _, c := range []struct {
		method string
		params map[string]any
	}{
		{"image.pull", map[string]any{"reference": "x:1", "username": "only-user"}},
		{"image.pull", map[string]any{"reference": "x:1", "insecure": true}},
		{"image.import", map[string]any{"kind": "zip", "path": "/tmp"}},
		{"image.import", map[string]any{"kind": "oci_layout", "path": ""}},
		{"image.inspect", map[string]any{}},
	} {
		err := call(ctx, "t", c.method, c.params, nil)
		wantCode(t, err, CodeInvalidArgument, ErrInvalidArgument)
	}

	_, err = Images().Import(ctx, filepath.Join(t.TempDir(), "missing"))
	wantCode(t, err, CodeNotFound, ErrNotFound)
	// A directory that is not an OCI layout, and a file that is not a tar.
	empty := t.TempDir()
	_, err = Images().Import(ctx, empty)
	if err == nil {
		t.Fatal("import of an empty dir succeeded")
	}
	junk := filepath.Join(empty, "junk.tar")
	must(t, os.WriteFile(junk, []byte("not a tarball"), 0o644))
	_, err = Images().Import(ctx, junk)
	wantCode(t, err, CodeInvalidArgument, ErrInvalidArgument)
}

// A registry on 127.0.0.1 that never answers: canceling the context ends
// the Pull at once with a canceled error.
func TestImagePullHonoursCancel(t *testing.T) {
	release := make(chan struct{})
	var hits atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	t.Cleanup(srv.Close)
	t.Cleanup(func() { close(release) })

	host := strings.TrimPrefix(srv.URL, "http://")
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		for hits.Load() == 0 {
			time.Sleep(5 * time.Millisecond)
		}
		cancel()
	}()
	_, err := Images().Pull(ctx, host+"/stalls:1", WithPlainHTTP())
	if !errors.Is(err, context.Canceled) || !errors.Is(err, ErrCanceled) {
		t.Fatalf("want canceled, got %v", err)
	}
	if hits.Load() == 0 {
		t.Fatal("the registry was never asked")
	}
}

// startRegistry runs Debian's docker-registry on a free 127.0.0.1 port
// (anonymous, plain HTTP) until the test ends, and returns its address.
func startRegistry(t *testing.T) string {
	t.Helper()
	bin, err := exec.LookPath("docker-registry")
	if err != nil {
		t.Fatalf("docker-registry (Debian package, scripts/deps.sh): %v", err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	must(t, err)
	addr := l.Addr().String()
	l.Close()
	dir := t.TempDir()
	cfg := fmt.Sprintf("version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: %s\nhttp:\n  addr: %s\n",
		filepath.Join(dir, "data"), addr)
	must(t, os.WriteFile(filepath.Join(dir, "config.yml"), []byte(cfg), 0o644))
	var logBuf bytes.Buffer
	cmd := exec.Command(bin, "serve", filepath.Join(dir, "config.yml"))
	cmd.Stderr = &logBuf
	must(t, cmd.Start())
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if c, err := net.Dial("tcp", addr); err == nil {
			c.Close()
			return addr
		}
		if time.Now().After(deadline) {
			t.Fatalf("registry did not start: %s", logBuf.String())
		}
	}
}

// An image pushed by skopeo to a real registry on 127.0.0.1, pulled and run.
func TestImagePullFromLoopbackRegistry(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	bb := staticBusybox(t)
	skopeo, err := exec.LookPath("skopeo")
	if err != nil {
		t.Fatalf("skopeo (Debian package, scripts/deps.sh): %v", err)
	}
	addr := startRegistry(t)
	layout := t.TempDir()
	msg := fmt.Sprintf("pulled %d %d\n", os.Getpid(), time.Now().UnixNano())
	writeOCILayout(t, layout, bb, msg, "1.0")
	ref := addr + "/lockbox/imgapi:1.0"
	out, err := exec.CommandContext(ctx, skopeo, "--insecure-policy", "copy", "--quiet",
		"--dest-tls-verify=false", "oci:"+layout+":1.0", "docker://"+ref).CombinedOutput()
	if err != nil {
		t.Fatalf("skopeo copy: %v: %s", err, out)
	}

	// HTTPS is the default and never falls back to plain HTTP.
	_, err = Images().Pull(ctx, ref)
	if err == nil {
		t.Fatal("pulled over plain HTTP without WithPlainHTTP")
	}
	info, err := Images().Pull(ctx, ref, WithPlainHTTP(), WithPlatform("linux/"+runtime.GOARCH))
	if err != nil {
		t.Fatalf("Pull: %v", err)
	}
	t.Cleanup(func() { _ = Images().Remove(context.Background(), info.Digest) })
	if !slices.Contains(info.Names, ref) || !slices.Contains(info.Config.Env, "MSG=imported") {
		t.Fatalf("pulled: %+v", info)
	}
	if got, err := Images().Inspect(ctx, ref); err != nil || got.Digest != info.Digest {
		t.Fatalf("Inspect(ref): %v %+v", err, got)
	}
	sb, err := CreateSandbox(ctx, WithImage(info.Digest))
	if err != nil {
		t.Fatalf("CreateSandbox: %v", err)
	}
	defer sb.Remove(context.Background())
	res, err := sb.Exec(ctx, "cat", "/etc/msg.txt")
	if err != nil || string(res.Stdout) != msg {
		t.Fatalf("cat: %v %q", err, res.Stdout)
	}
	wantCode(t, Images().Remove(ctx, ref), CodeUnavailable, ErrUnavailable)
	must(t, sb.Remove(ctx))
	must(t, Images().Remove(ctx, ref))

	_, err = Images().Pull(ctx, addr+"/lockbox/missing:1.0", WithPlainHTTP())
	wantCode(t, err, CodeNotFound, ErrNotFound)
}

// Credentials reach the registry: a 127.0.0.1 server that wants basic
// auth refuses the anonymous pull and sees the user and password given.
func TestImagePullSendsRegistryAuth(t *testing.T) {
	var seen atomic.Value
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		u, p, ok := r.BasicAuth()
		if !ok {
			w.Header().Set("WWW-Authenticate", `Basic realm="lockbox-test"`)
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		seen.Store(u + ":" + p)
		http.NotFound(w, r) // authenticated, but there is no such image
	}))
	t.Cleanup(srv.Close)
	ctx := context.Background()
	ref := strings.TrimPrefix(srv.URL, "http://") + "/private/app:1"

	_, err := Images().Pull(ctx, ref, WithPlainHTTP())
	wantCode(t, err, CodePermissionDenied, ErrPermission)
	_, err = Images().Pull(ctx, ref, WithPlainHTTP(), WithRegistryAuth("alice", "s3cret"))
	wantCode(t, err, CodeNotFound, ErrNotFound)
	if got, _ := seen.Load().(string); got != "alice:s3cret" {
		t.Fatalf("registry saw credentials %q", got)
	}
}

// writeDockerArchive writes a `docker save` tarball by hand (legacy
// format): manifest.json, <config hex>.json, <layer>/layer.tar.
func writeDockerArchive(t *testing.T, path string, busybox []byte, msg, repoTag string) {
	t.Helper()
	layer := testLayer(t, busybox, msg)
	layerHex := sha256Hex(layer)
	config := testConfig(t, "sha256:"+layerHex, defaultTestConfig)
	manifest, err := json.Marshal([]map[string]any{{
		"Config":   sha256Hex(config) + ".json",
		"RepoTags": []string{repoTag},
		"Layers":   []string{layerHex + "/layer.tar"},
	}})
	must(t, err)
	f, err := os.Create(path)
	must(t, err)
	defer f.Close()
	tw := tar.NewWriter(f)
	for _, e := range []struct {
		name string
		body []byte
	}{{"manifest.json", manifest}, {sha256Hex(config) + ".json", config}, {layerHex + "/layer.tar", layer}} {
		must(t, tw.WriteHeader(&tar.Header{Name: e.name, Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(len(e.body))}))
		_, err := tw.Write(e.body)
		must(t, err)
	}
	must(t, tw.Close())
}

// A `docker save` tarball imports under its RepoTag or a given name.
func TestImageImportDockerArchive(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	bb := staticBusybox(t)
	msg := fmt.Sprintf("docker save %d %d\n", os.Getpid(), time.Now().UnixNano())
	tarball := filepath.Join(t.TempDir(), "image.tar")
	writeDockerArchive(t, tarball, bb, msg, "imgapi/docker:1")

	_, err := Images().Import(ctx, tarball, WithImageReference("imgapi/other:1"))
	wantCode(t, err, CodeNotFound, ErrNotFound)

	name := fmt.Sprintf("imgapi-docker-%d", os.Getpid())
	info, err := Images().Import(ctx, tarball, WithImageReference("imgapi/docker:1"), WithImageName(name))
	if err != nil {
		t.Fatalf("Import: %v", err)
	}
	t.Cleanup(func() { _ = Images().Remove(context.Background(), info.Digest) })
	if !slices.Equal(info.Names, []string{name}) || !strings.HasPrefix(info.Source, "docker-archive:") {
		t.Fatalf("Import: %+v", info)
	}
	sb, err := CreateSandbox(ctx, WithImage(name))
	if err != nil {
		t.Fatalf("CreateSandbox: %v", err)
	}
	defer sb.Remove(context.Background())
	res, err := sb.Exec(ctx, "cat", "/etc/msg.txt")
	if err != nil || string(res.Stdout) != msg {
		t.Fatalf("cat: %v %q", err, res.Stdout)
	}

	// Without a name it is recorded under its RepoTag: a second name on
	// the same content.
	again, err := Images().Import(ctx, tarball)
	if err != nil || again.Digest != info.Digest || !slices.Contains(again.Names, "imgapi/docker:1") || !slices.Contains(again.Names, name) {
		t.Fatalf("re-import: %v %+v", err, again)
	}
	// Dropping one name while the sandbox runs is fine: the content stays.
	must(t, Images().Remove(ctx, "imgapi/docker:1"))
	wantCode(t, Images().Remove(ctx, name), CodeUnavailable, ErrUnavailable)
}

// An imported image's config is the sandbox's default env, workdir and
// user; WithEnv overrides per key; a reference-form name works in
// WithImage, and its entrypoint/cmd and digest are in the sandbox's info.
func TestImageConfigAppliedByReference(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	bb := staticBusybox(t)
	dir := t.TempDir()
	msg := fmt.Sprintf("config test %d %d\n", os.Getpid(), time.Now().UnixNano())
	ref := fmt.Sprintf("example.test/app-%d:1", os.Getpid())
	writeOCILayoutWithConfig(t, dir, bb, msg, ref, map[string]any{
		"Env":        []string{"PATH=/bin", "FOO=bar"},
		"WorkingDir": "/data",
		"User":       "1000",
		"Entrypoint": []string{"/bin/sh", "-c"},
		"Cmd":        []string{"echo default"},
	})
	info, err := Images().Import(ctx, dir, WithImageReference(ref))
	if err != nil {
		t.Fatalf("Import: %v", err)
	}
	t.Cleanup(func() { _ = Images().Remove(context.Background(), info.Digest) })
	if !slices.Contains(info.Names, ref) {
		t.Fatalf("not recorded under %q: %+v", ref, info)
	}

	const script = "echo $FOO; pwd; id -u"
	sb := newSandbox(t, WithImage(ref))
	res, err := sb.Exec(ctx, "sh", "-c", script)
	if err != nil || res.ExitCode != 0 || string(res.Stdout) != "bar\n/data\n1000\n" {
		t.Fatalf("image config not applied: %v %+v stdout %q stderr %q", err, res, res.Stdout, res.Stderr)
	}
	si, err := sb.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"/bin/sh", "-c", "echo default"}
	if si.Image != ref || si.ImageUsed == nil || si.ImageUsed.Digest != info.Digest ||
		!slices.Equal(si.ImageUsed.DefaultCommand(), want) {
		t.Fatalf("info: image %q used %+v, want digest %s command %q", si.Image, si.ImageUsed, info.Digest, want)
	}
	res, err = sb.Exec(ctx, si.ImageUsed.DefaultCommand()[0], si.ImageUsed.DefaultCommand()[1:]...)
	if err != nil || string(res.Stdout) != "default\n" {
		t.Fatalf("default command: %v %q %q", err, res.Stdout, res.Stderr)
	}
	// The recorded digest protects the image while the sandbox exists.
	wantCode(t, Images().Remove(ctx, info.Digest), CodeUnavailable, ErrUnavailable)

	// The sandbox's own settings win over the image's.
	sb2 := newSandbox(t, WithImage(info.Digest), WithEnv("FOO", "x"), WithWorkdir("/tmp"), WithUser("7"))
	res, err = sb2.Exec(ctx, "sh", "-c", script)
	if err != nil || string(res.Stdout) != "x\n/tmp\n7\n" {
		t.Fatalf("overrides: %v stdout %q stderr %q", err, res.Stdout, res.Stderr)
	}
	res, err = sb2.Exec(ctx, "sh", "-c", "echo $PATH")
	if err != nil || string(res.Stdout) != "/bin\n" {
		t.Fatalf("image PATH is not the base env: %v %q", err, res.Stdout)
	}

	// A reference that is not in the store is not found, by name; a
	// malformed one is invalid. Neither pulls.
	missing := fmt.Sprintf("127.0.0.1:1/nothing-%d:1", os.Getpid())
	_, err = CreateSandbox(ctx, WithImage(missing))
	wantCode(t, err, CodeNotFound, ErrNotFound)
	if err == nil || !strings.Contains(err.Error(), missing) {
		t.Fatalf("error does not name the image: %v", err)
	}
	_, err = CreateSandbox(ctx, WithImage("example.test/UPPER:1"))
	wantCode(t, err, CodeInvalidArgument, ErrInvalidArgument)
}

// The named images keep their behaviour: PATH from the defaults, "/" as
// the workdir, root, and /bin/sh as the recorded default command.
func TestNamedImageDefaults(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	sb := newSandbox(t)
	res, err := sb.Shell(ctx, "pwd; id -u; echo $PATH")
	if err != nil || string(res.Stdout) != "/\n0\n/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n" {
		t.Fatalf("named image defaults: %v stdout %q stderr %q", err, res.Stdout, res.Stderr)
	}
	si, err := sb.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if si.ImageUsed != nil && !slices.Equal(si.ImageUsed.DefaultCommand(), []string{"/bin/sh"}) {
		t.Fatalf("named image command: %+v", si.ImageUsed)
	}
}
