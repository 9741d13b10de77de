package tests

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"lockbox.dev/lockbox"
)

// Attacks from a hostile image: the image's content (symlinks where the
// helper mounts things, setuid files, device nodes) is the attacker's.
// Each image is the base image copied and then altered by the test, and is
// used through WithRootfs exactly as a user would use an imported image.

// hostileRootfs copies the base image's rootfs into a fresh directory and
// lets alter change it. The copy is world-readable so the rootless run
// (as nobody) can use it.
func hostileRootfs(t *testing.T, alter func(root string)) string {
	t.Helper()
	images := os.Getenv("LOCKBOX_IMAGES")
	if images == "" {
		t.Skip("LOCKBOX_IMAGES is not set: run `make test-escape`")
	}
	base := filepath.Join(images, "base", "rootfs")
	dir, err := os.MkdirTemp(scratchParent(), "lockbox-hostile-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	os.Chmod(dir, 0o755)
	root := filepath.Join(dir, "rootfs")
	if out, err := exec.Command("cp", "-a", base, root).CombinedOutput(); err != nil {
		// As an unprivileged user, the image's private dirs (/root) do not
		// copy; the attacks need only its shell and /etc.
		if _, serr := os.Stat(filepath.Join(root, "bin", "busybox")); os.Getuid() == 0 || serr != nil {
			t.Fatalf("copy base rootfs: %v\n%s", err, out)
		}
		t.Logf("copy base rootfs, in part: %s", strings.TrimSpace(string(out)))
	}
	alter(root)
	return root
}

// scratchParent is a directory the test's user may write and that is not
// under /tmp: the helper covers /tmp in its own mount namespace while it
// assembles the root, so a host path there would not show an escape.
func scratchParent() string {
	if h := os.Getenv("LOCKBOX_HOME"); h != "" {
		return h
	}
	return os.TempDir()
}

func replaceWithSymlink(t *testing.T, root, guest, target string) {
	t.Helper()
	p := filepath.Join(root, guest)
	if err := os.RemoveAll(p); err != nil {
		t.Fatal(err)
	}
	os.MkdirAll(filepath.Dir(p), 0o755)
	if err := os.Symlink(target, p); err != nil {
		t.Fatal(err)
	}
}

// hostRootVisible reports the mount points inside sb under which a host
// file (the engine library, which no image holds) is reachable, i.e.
// where some part of the host's own tree is mounted.
func hostRootVisible(t *testing.T, sb *lockbox.Sandbox) []string {
	t.Helper()
	lib, err := filepath.Abs(os.Getenv("LOCKBOX_LIB"))
	if err != nil || lib == "" {
		t.Fatalf("LOCKBOX_LIB: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	script := `for m in $(cut -d' ' -f5 /proc/self/mountinfo) /.oldroot /tmp/root; do
  [ -e "$m$1" ] && echo "$m"; done; echo END`
	res, err := sb.ExecArgs(ctx, []string{"/bin/sh", "-c", script, "sh", lib})
	if err != nil {
		t.Fatalf("host-root detector: %v", err)
	}
	out := strings.TrimSpace(string(res.Stdout))
	if !strings.HasSuffix(out, "END") {
		t.Fatalf("host-root detector did not finish: %q %q", out, res.Stderr)
	}
	var seen []string
	for _, l := range strings.Split(out, "\n") {
		if l != "END" && l != "" {
			seen = append(seen, l)
		}
	}
	return seen
}

// The detector itself, against a sandbox that really does see the host's
// root: without this, an empty answer would prove nothing.
func TestEscapeImageDetectorSeesHostRoot(t *testing.T) {
	needEngine(t)
	sb := newSandbox(t, lockbox.WithVolume("/", "/hostroot", true))
	seen := hostRootVisible(t, sb)
	if len(seen) == 0 {
		t.Fatal("the detector does not see the host root even when it is mounted at /hostroot")
	}
	t.Logf("control: host root seen at %v", seen)
}

// createHostile creates a sandbox that is expected to be refused. If the
// engine accepts it, the host root must still be invisible inside.
func createHostile(t *testing.T, opts ...lockbox.Option) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	opts = append([]lockbox.Option{lockbox.WithVolume(escapeProbe(t), "/probe", true)}, opts...)
	sb, err := lockbox.CreateSandbox(ctx, opts...)
	if err != nil {
		return err
	}
	defer sb.Remove(context.Background())
	if seen := hostRootVisible(t, sb); len(seen) > 0 {
		t.Fatalf("ESCAPE: the host's root is visible inside at %v", seen)
	}
	return nil
}

func TestEscapeImageSymlinkedKernelMounts(t *testing.T) {
	needEngine(t)
	for _, c := range []struct{ guest, target string }{
		{"proc", "/.oldroot"},
		{"proc", "../../.."},
		{"sys", "/.oldroot"},
		{"sys", "/.oldroot/proc"},
		{"dev", "/.oldroot/dev"},
		{"dev", "/proc/1/root"},
	} {
		t.Run(c.guest+"->"+c.target, func(t *testing.T) {
			root := hostileRootfs(t, func(root string) { replaceWithSymlink(t, root, c.guest, c.target) })
			err := createHostile(t, lockbox.WithRootfs(root))
			if err == nil {
				t.Fatalf("an image with /%s -> %s was accepted", c.guest, c.target)
			}
			if !errors.Is(err, lockbox.ErrInvalidArgument) || !strings.Contains(err.Error(), "symlink") {
				t.Fatalf("want invalid_argument naming the symlink, got %v", err)
			}
		})
	}
}

// Mount targets below an image symlink: the helper must neither mount
// through it nor create anything where it points.
func TestEscapeImageSymlinkedMountTargets(t *testing.T) {
	needEngine(t)
	hostDir, err := os.MkdirTemp(scratchParent(), "lockbox-target-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(hostDir)
	os.Chmod(hostDir, 0o777)
	volDir := t.TempDir()
	os.Chmod(volDir, 0o755)
	cases := []struct {
		name string
		opt  lockbox.Option
	}{
		{"tmpfs", lockbox.WithTmpfs("/data/x", 1)},
		{"tmpfs-at-link", lockbox.WithTmpfs("/data", 1)},
		{"volume", lockbox.WithVolume(volDir, "/data/y", true)},
		{"named-volume", lockbox.WithNamedVolume("hostile-image-vol", "/data/z", false)},
	}
	for _, c := range cases {
		for _, link := range []string{"/.oldroot" + hostDir, "/tmp/root" + hostDir, hostDir, "../../../../../../../.." + hostDir} {
			t.Run(c.name+"/"+link, func(t *testing.T) {
				root := hostileRootfs(t, func(root string) { replaceWithSymlink(t, root, "data", link) })
				err := createHostile(t, lockbox.WithRootfs(root), c.opt)
				if err == nil {
					t.Fatalf("a mount target through the image symlink /data -> %s was accepted", link)
				}
				if !strings.Contains(err.Error(), "symlink") {
					t.Fatalf("want an error naming the symlink, got %v", err)
				}
				if ents, _ := os.ReadDir(hostDir); len(ents) != 0 {
					t.Fatalf("HOST CHANGED: the helper created %v in %s", ents, hostDir)
				}
			})
		}
	}
}

// Guest paths that name where the helper keeps (or kept) its own mounts
// are either refused or harmless: the host's root never shows up.
func TestEscapeInternalGuestPaths(t *testing.T) {
	needEngine(t)
	vol := t.TempDir()
	os.Chmod(vol, 0o755)
	for _, g := range []string{"/.oldroot", "/tmp", "/tmp/root", "/mnt", "/sys", "/sys/fs"} {
		for _, kind := range []string{"tmpfs", "volume", "named"} {
			t.Run(kind+g, func(t *testing.T) {
				var opt lockbox.Option
				switch kind {
				case "tmpfs":
					opt = lockbox.WithTmpfs(g, 1)
				case "volume":
					opt = lockbox.WithVolume(vol, g, true)
				default:
					opt = lockbox.WithNamedVolume("internal-paths", g, false)
				}
				err := createHostile(t, opt)
				t.Logf("%s at %s: %v", kind, g, err)
				if err != nil && !errors.Is(err, lockbox.ErrInvalidArgument) {
					t.Fatalf("want success or invalid_argument, got %v", err)
				}
			})
		}
	}
}

// A setuid-root binary in the image gives a user inside nothing.
func TestEscapeImageSetuidBinary(t *testing.T) {
	needEngine(t)
	if os.Getuid() != 0 {
		t.Skip("rootless, the sandbox maps one id: there is no other user to become")
	}
	root := hostileRootfs(t, func(root string) {
		b, err := os.ReadFile(filepath.Join(root, "bin", "busybox"))
		if err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(root, "busybox-suid")
		if err := os.WriteFile(p, b, 0o755); err != nil {
			t.Fatal(err)
		}
		// As the rootless user the file is ours, not root's; the mode bits
		// still say setuid, which is what the kernel must ignore.
		if err := os.Chmod(p, 0o4755|os.ModeSetuid); err != nil {
			t.Fatal(err)
		}
	})
	sb := newSandbox(t, lockbox.WithRootfs(root))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// Control: the detector reads 0 for root.
	res, err := sb.ExecArgs(ctx, []string{"/busybox-suid", "id", "-u"})
	if err != nil || strings.TrimSpace(string(res.Stdout)) != "0" {
		t.Fatalf("control: root runs the copy: %q %v", res.Stdout, err)
	}
	res, err = sb.ExecArgs(ctx, []string{"/busybox-suid", "id", "-u"}, lockbox.WithExecUser("1000"))
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.TrimSpace(string(res.Stdout)); got != "1000" {
		t.Fatalf("ESCAPE: a setuid file from the image ran with euid %q", got)
	}
}

// A device node in the image opens to nothing inside (the writable and
// image layers are nodev). The node copies a host device that the host
// itself can open here, so the same open inside would succeed if the
// kernel let it. Only root can make a node on the host.
func TestEscapeImageDeviceNode(t *testing.T) {
	needEngine(t)
	if os.Getuid() != 0 {
		t.Skip("making a device node needs root on the host")
	}
	var st syscall.Stat_t
	if err := syscall.Stat("/", &st); err != nil {
		t.Fatal(err)
	}
	type cand struct {
		name string
		mode uint32
		dev  uint64
	}
	cands := []cand{{"root disk", syscall.S_IFBLK, uint64(st.Dev)}}
	for _, p := range []string{"/dev/kvm", "/dev/loop0", "/dev/fuse", "/dev/net/tun"} {
		var ds syscall.Stat_t
		if syscall.Stat(p, &ds) == nil {
			cands = append(cands, cand{p, ds.Mode & syscall.S_IFMT, uint64(ds.Rdev)})
		}
	}
	var used string
	root := hostileRootfs(t, func(root string) {
		node := filepath.Join(root, "hostdev")
		for _, c := range cands {
			os.Remove(node)
			if err := syscall.Mknod(node, c.mode|0o666, int(c.dev)); err != nil {
				continue
			}
			// Control: the host opens this very node.
			if f, err := os.OpenFile(node, os.O_RDWR, 0); err == nil {
				f.Close()
				used = c.name
				return
			}
		}
	})
	if used == "" {
		t.Skip("no host device node opens here, so the test could not tell a success")
	}
	t.Logf("image device node copies %s, which the host opens", used)
	sb := newSandbox(t, lockbox.WithRootfs(root))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	res, err := sb.ExecArgs(ctx, []string{"/bin/sh", "-c", "exec 3<>/hostdev && echo OPENED"})
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(res.Stdout), "OPENED") {
		t.Fatalf("ESCAPE: the image's device node for %s opened inside (%s)", used, fmt.Sprint(res.Stderr))
	}
}

// The engine looks user names up in the image's /etc/passwd on the host.
// A passwd that is a link to a host file, to /dev/zero or a FIFO must
// neither leak, nor grow this process without bound, nor hang the create.
func TestEscapeImageHostilePasswd(t *testing.T) {
	needEngine(t)
	hostPasswd := filepath.Join(t.TempDir(), "passwd")
	if err := os.WriteFile(hostPasswd, []byte("hostonly:x:4242:4242::/:/bin/sh\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name  string
		alter func(p string)
	}{
		{"link-to-host-file", func(p string) { os.Symlink(hostPasswd, p) }},
		{"link-to-dev-zero", func(p string) { os.Symlink("/dev/zero", p) }},
		{"relative-link-out", func(p string) { os.Symlink("../../../../../../../dev/zero", p) }},
		{"fifo", func(p string) { syscall.Mkfifo(p, 0o644) }},
	} {
		t.Run(c.name, func(t *testing.T) {
			root := hostileRootfs(t, func(root string) {
				p := filepath.Join(root, "etc", "passwd")
				os.Remove(p)
				c.alter(p)
			})
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			start := time.Now()
			sb, err := lockbox.CreateSandbox(ctx, lockbox.WithRootfs(root), lockbox.WithUser("hostonly"))
			if err == nil {
				sb.Remove(context.Background())
				t.Fatalf("ESCAPE: user hostonly resolved through the image's /etc/passwd (%s)", c.name)
			}
			if ctx.Err() != nil || time.Since(start) > 20*time.Second {
				t.Fatalf("the create hung on a hostile /etc/passwd: %v", err)
			}
			if !errors.Is(err, lockbox.ErrNotFound) {
				t.Fatalf("want ErrNotFound, got %v", err)
			}
		})
	}
	// Control: the same user in a real passwd file of the image resolves
	// (rootless, only id 0 exists inside).
	uid := "4242"
	if os.Getuid() != 0 {
		uid = "0"
	}
	root := hostileRootfs(t, func(root string) {
		f, err := os.OpenFile(filepath.Join(root, "etc", "passwd"), os.O_APPEND|os.O_WRONLY, 0)
		if err != nil {
			t.Fatal(err)
		}
		f.WriteString("hostonly:x:" + uid + ":" + uid + "::/:/bin/sh\n")
		f.Close()
	})
	sb := newSandbox(t, lockbox.WithRootfs(root), lockbox.WithUser("hostonly"))
	res, err := sb.ExecArgs(context.Background(), []string{"id", "-u"})
	if err != nil {
		t.Fatalf("control: user from the image's passwd: %v", err)
	}
	if got := strings.TrimSpace(string(res.Stdout)); got != uid {
		t.Fatalf("control: user from the image's passwd is uid %q, want %s", got, uid)
	}
}
