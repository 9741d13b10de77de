package lockbox

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// newSandbox makes a sandbox from the dev base image and removes it at the
// end of the test.
func newSandbox(t *testing.T, opts ...Option) *Sandbox {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	sb, err := CreateSandbox(ctx, opts...)
	if err != nil {
		t.Fatalf("CreateSandbox: %v", err)
	}
	t.Cleanup(func() { _ = sb.Remove(context.Background()) })
	return sb
}

func TestExecCollectsOutputAndExitCode(t *testing.T) {
	ctx := context.Background()
	sb := newSandbox(t, WithEnv("GREETING", "hello"))
	res, err := sb.Exec(ctx, "sh", "-c", `echo "$GREETING out"; echo err >&2; exit 7`)
	if err != nil {
		t.Fatal(err)
	}
	if string(res.Stdout) != "hello out\n" || string(res.Stderr) != "err\n" || res.ExitCode != 7 {
		t.Fatalf("got %+v (stdout %q stderr %q)", res, res.Stdout, res.Stderr)
	}
	res, err = sb.Shell(ctx, "pwd; id -u; echo $X", WithExecDir("/tmp"), WithExecEnv("X", "y"))
	if err != nil {
		t.Fatal(err)
	}
	if string(res.Stdout) != "/tmp\n0\ny\n" {
		t.Fatalf("stdout %q", res.Stdout)
	}
	res, err = sb.ExecArgs(ctx, []string{"cat"}, WithStdin(strings.NewReader("from stdin")))
	if err != nil || string(res.Stdout) != "from stdin" {
		t.Fatalf("cat: %v %q", err, res.Stdout)
	}
	res, err = sb.ExecArgs(ctx, []string{"sleep", "10"}, WithExecTimeout(200*time.Millisecond))
	if err != nil || !res.TimedOut || res.Signal != int(syscall.SIGKILL) {
		t.Fatalf("timeout: %v %+v", err, res)
	}
}

func TestExecMissingBinaryIsClear(t *testing.T) {
	sb := newSandbox(t)
	for _, name := range []string{"/no/such/program", "no-such-program-in-path"} {
		_, err := sb.Exec(context.Background(), name)
		if !errors.Is(err, ErrNotFound) {
			t.Fatalf("exec %s: want ErrNotFound, got %v", name, err)
		}
		if !strings.Contains(err.Error(), "no-such-program") && !strings.Contains(err.Error(), "/no/such") {
			t.Fatalf("error does not name the program: %v", err)
		}
	}
	// The sandbox is fine afterwards.
	if res, err := sb.Exec(context.Background(), "true"); err != nil || res.ExitCode != 0 {
		t.Fatalf("after a failed exec: %v", err)
	}
}

func TestCmdIsShapedLikeOsExec(t *testing.T) {
	ctx := context.Background()
	sb := newSandbox(t)

	out, err := sb.CommandContext(ctx, "echo", "a", "b").Output()
	if err != nil || string(out) != "a b\n" {
		t.Fatalf("Output: %v %q", err, out)
	}
	out, err = sb.CommandContext(ctx, "sh", "-c", "echo o; echo e >&2; exit 3").CombinedOutput()
	var ee *ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 3 || !strings.Contains(string(out), "o\n") || !strings.Contains(string(out), "e\n") {
		t.Fatalf("CombinedOutput: %v %q", err, out)
	}
	_, err = sb.CommandContext(ctx, "sh", "-c", "echo bad >&2; exit 2").Output()
	if !errors.As(err, &ee) || string(ee.Stderr) != "bad\n" {
		t.Fatalf("Output stderr: %v", err)
	}

	cmd := sb.CommandContext(ctx, "tr", "a-z", "A-Z")
	in, _ := cmd.StdinPipe()
	stdout, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	if cmd.Process.Pid <= 0 {
		t.Fatalf("pid %d", cmd.Process.Pid)
	}
	go func() { _, _ = io.WriteString(in, "shout"); in.Close() }()
	got, _ := io.ReadAll(stdout)
	if err := cmd.Wait(); err != nil || string(got) != "SHOUT" {
		t.Fatalf("pipes: %v %q", err, got)
	}

	var buf bytes.Buffer
	cmd = sb.CommandContext(ctx, "cat")
	cmd.Stdin = strings.NewReader("x")
	cmd.Stdout = &buf
	cmd.Env = []string{"A=1"}
	cmd.Dir = "/"
	if err := cmd.Run(); err != nil || buf.String() != "x" || !cmd.ProcessState.Success() {
		t.Fatalf("Run: %v %q", err, buf.String())
	}

	cmd = sb.CommandContext(ctx, "sleep", "30")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	err = cmd.Wait()
	if !errors.As(err, &ee) || ee.ProcessState.Signal() != syscall.SIGTERM || ee.ExitCode() != -1 {
		t.Fatalf("signal: %v", err)
	}

	cctx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	defer cancel()
	err = sb.CommandContext(cctx, "sleep", "30").Run()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("context: %v", err)
	}
}

func TestExecStreamDeliversEventsInOrder(t *testing.T) {
	sb := newSandbox(t)
	es, err := sb.ExecStream(context.Background(), []string{"sh", "-c", "for i in 1 2 3; do echo $i; done; echo e >&2; exit 4"})
	if err != nil {
		t.Fatal(err)
	}
	var out, errOut []byte
	var exit *ExecEvent
	for ev := range es.Events() {
		switch ev.Kind {
		case EventStdout:
			out = append(out, ev.Data...)
		case EventStderr:
			errOut = append(errOut, ev.Data...)
		case EventExit:
			e := ev
			exit = &e
		}
	}
	if string(out) != "1\n2\n3\n" || string(errOut) != "e\n" || exit == nil || exit.Exit.ExitCode != 4 || exit.Err != nil {
		t.Fatalf("out %q err %q exit %+v", out, errOut, exit)
	}
}

func TestFSRoundTripsAndStreams(t *testing.T) {
	ctx := context.Background()
	sb := newSandbox(t)
	f := sb.FS()
	if err := f.MkdirAll(ctx, "/work/a/b", 0o755); err != nil {
		t.Fatal(err)
	}
	data := bytes.Repeat([]byte("0123456789abcdef"), 1<<16) // 1 MiB
	if err := f.WriteFile(ctx, "/work/a/b/f.bin", data, 0o600); err != nil {
		t.Fatal(err)
	}
	got, err := f.ReadFile(ctx, "/work/a/b/f.bin")
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("ReadFile: %v (len %d)", err, len(got))
	}
	st, err := f.Stat(ctx, "/work/a/b/f.bin")
	if err != nil || st.Size() != int64(len(data)) || st.Mode().Perm() != 0o600 || st.IsDir() {
		t.Fatalf("Stat: %v %+v", err, st)
	}
	ents, err := f.ReadDir(ctx, "/work/a")
	if err != nil || len(ents) != 1 || ents[0].Name() != "b" || !ents[0].IsDir() {
		t.Fatalf("ReadDir: %v %+v", err, ents)
	}
	// The file is visible to processes in the sandbox.
	res, _ := sb.Exec(ctx, "wc", "-c", "/work/a/b/f.bin")
	if !strings.HasPrefix(strings.TrimSpace(string(res.Stdout)), "1048576") {
		t.Fatalf("wc: %q", res.Stdout)
	}
	if err := f.Rename(ctx, "/work/a/b/f.bin", "/work/g.bin"); err != nil {
		t.Fatal(err)
	}
	if ok, err := f.Exists(ctx, "/work/a/b/f.bin"); ok || err != nil {
		t.Fatalf("Exists after rename: %v %v", ok, err)
	}
	w, err := f.Create(ctx, "/work/stream.txt")
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 100; i++ {
		if _, err := io.WriteString(w, "line\n"); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	r, err := f.Open(ctx, "/work/stream.txt")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(r)
	r.Close()
	if len(b) != 500 {
		t.Fatalf("streamed file has %d bytes", len(b))
	}
	if err := f.Remove(ctx, "/work/a"); err == nil {
		t.Fatal("Remove of a non-empty dir succeeded")
	}
	if err := f.RemoveAll(ctx, "/work/a"); err != nil {
		t.Fatal(err)
	}
	if _, err := f.Stat(ctx, "/work/a"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Stat after RemoveAll: %v", err)
	}
	if _, err := f.ReadFile(ctx, "/no/such"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("ReadFile missing: %v", err)
	}
	if err := f.WriteFile(ctx, "relative", nil, 0o644); !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("relative path: %v", err)
	}
}

func TestCopyBetweenHostAndSandbox(t *testing.T) {
	ctx := context.Background()
	sb := newSandbox(t)
	src := t.TempDir()
	os.MkdirAll(filepath.Join(src, "d/e"), 0o755)
	os.WriteFile(filepath.Join(src, "d/e/f.txt"), []byte("deep"), 0o644)
	os.WriteFile(filepath.Join(src, "top.txt"), []byte("top"), 0o600)
	if err := sb.FS().CopyFromHost(ctx, src, "/in"); err != nil {
		t.Fatal(err)
	}
	res, _ := sb.Shell(ctx, "cat /in/d/e/f.txt /in/top.txt")
	if string(res.Stdout) != "deeptop" {
		t.Fatalf("copied: %q", res.Stdout)
	}
	if _, err := sb.Shell(ctx, "mkdir -p /out/sub && echo made > /out/sub/x && ln -s /etc /out/link"); err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(t.TempDir(), "out")
	if err := sb.FS().CopyToHost(ctx, "/out", dst); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(filepath.Join(dst, "sub/x")); string(b) != "made\n" {
		t.Fatalf("copied back: %q", b)
	}
	if l, err := os.Readlink(filepath.Join(dst, "link")); err != nil || l != "/etc" {
		t.Fatalf("symlink copied as %q %v", l, err)
	}
}

func TestVolumesPersistAcrossSandboxes(t *testing.T) {
	ctx := context.Background()
	name := "vol-" + strings.ReplaceAll(t.Name(), "/", "-")
	_ = RemoveVolume(ctx, name)
	v, err := CreateVolume(ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := CreateVolume(ctx, name); !errors.Is(err, ErrAlreadyExists) {
		t.Fatalf("duplicate volume: %v", err)
	}
	sb1 := newSandbox(t, WithNamedVolume(name, "/data", false))
	if _, err := sb1.Shell(ctx, "echo kept > /data/f"); err != nil {
		t.Fatal(err)
	}
	if err := RemoveVolume(ctx, name); err == nil {
		t.Fatal("removed a volume in use")
	}
	sb1.Remove(ctx)
	sb2 := newSandbox(t, WithNamedVolume(name, "/data", true))
	res, _ := sb2.Shell(ctx, "cat /data/f; echo x > /data/g")
	if string(res.Stdout) != "kept\n" || res.ExitCode == 0 {
		t.Fatalf("second sandbox: %+v %q", res, res.Stdout)
	}
	vols, _ := ListVolumes(ctx)
	found := false
	for _, x := range vols {
		found = found || x.Name == name && x.Path == v.Path
	}
	if !found {
		t.Fatalf("ListVolumes: %+v", vols)
	}
	sb2.Remove(ctx)
	if err := RemoveVolume(ctx, name); err != nil {
		t.Fatal(err)
	}
}

func TestBadInputGetsTypedErrors(t *testing.T) {
	ctx := context.Background()
	cases := []struct {
		opts []Option
		want error
	}{
		{[]Option{WithMemory(-1)}, ErrInvalidArgument},
		{[]Option{WithCPUs(0)}, ErrInvalidArgument},
		{[]Option{WithPids(1 << 40)}, ErrInvalidArgument},
		{[]Option{WithName("bad/name")}, ErrInvalidArgument},
		{[]Option{WithImage("no-such-image")}, ErrNotFound},
		{[]Option{WithVolume("/no/such/dir", "/x", false)}, ErrNotFound},
		{[]Option{WithVolume("relative", "/x", false)}, ErrInvalidArgument},
		{[]Option{WithEnv("", "x")}, ErrInvalidArgument},
	}
	for _, c := range cases {
		sb, err := CreateSandbox(ctx, c.opts...)
		if !errors.Is(err, c.want) {
			if sb != nil {
				sb.Remove(ctx)
			}
			t.Errorf("%+v: want %v, got %v", c.opts, c.want, err)
		}
	}
	sb := newSandbox(t, WithName("dup-test"))
	if _, err := CreateSandbox(ctx, WithName("dup-test")); !errors.Is(err, ErrAlreadyExists) {
		t.Fatalf("duplicate: %v", err)
	}
	// The original is untouched by the failed duplicate.
	if res, err := sb.Exec(ctx, "true"); err != nil || res.ExitCode != 0 {
		t.Fatalf("original after duplicate: %v", err)
	}
	sb2, err := CreateSandbox(ctx, WithName("dup-test"), WithReplace())
	if err != nil {
		t.Fatal(err)
	}
	defer sb2.Remove(ctx)
	if _, err := sb.Exec(ctx, "true"); err == nil {
		t.Fatal("exec on a replaced sandbox succeeded")
	}
	if err := sb.Remove(ctx); err != nil && !errors.Is(err, ErrNotFound) {
		t.Fatal(err)
	}
	if _, err := sb.Exec(ctx, "true"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("exec after Remove: %v", err)
	}
	if err := RemoveSandbox(ctx, "never-existed"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("remove missing: %v", err)
	}
	if _, err := GetSandbox(ctx, "never-existed"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("get missing: %v", err)
	}
}

func TestInfoMetricsListStopKill(t *testing.T) {
	ctx := context.Background()
	sb := newSandbox(t, WithName("info-test"), WithMemory(128), WithPids(64), WithLabels(map[string]string{"team": "x"}))
	info, err := sb.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.Name != "info-test" || !info.Running() || info.Labels["team"] != "x" || len(info.Enforced) == 0 {
		t.Fatalf("Info: %+v", info)
	}
	for _, n := range info.NotEnforced {
		if n.Reason == "" {
			t.Fatalf("not-enforced without a reason: %+v", n)
		}
	}
	if _, err := sb.Shell(ctx, "i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done"); err != nil {
		t.Fatal(err)
	}
	m, err := sb.Metrics(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if m.MemoryBytes == 0 || m.CPUTime == 0 || m.Pids == 0 {
		t.Fatalf("Metrics: %+v", m)
	}
	list, err := ListSandboxes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	seen := false
	for _, s := range list {
		seen = seen || s.Name == "info-test" && s.Running()
	}
	if !seen {
		t.Fatalf("ListSandboxes: %+v", list)
	}
	if err := sb.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	info, _ = sb.Info(ctx)
	if info.Running() {
		t.Fatal("running after Stop")
	}
	if _, err := sb.Exec(ctx, "true"); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("exec on stopped: %v", err)
	}

	sb2 := newSandbox(t)
	if err := sb2.Kill(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := sb2.Exec(ctx, "true"); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("exec on killed: %v", err)
	}
}

func TestDetachedSandboxIsFoundByName(t *testing.T) {
	ctx := context.Background()
	sb, err := CreateSandbox(ctx, WithName("detached-test"), WithDetached(), WithReplace())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := sb.Shell(ctx, "echo state > /tmp/s"); err != nil {
		t.Fatal(err)
	}
	if err := sb.Close(); err != nil {
		t.Fatal(err)
	}
	// Close released the handle only: the sandbox still runs.
	// Polled with a generous deadline (was 50 x 20 ms): a loaded machine
	// may take longer than a second to let go of the handle.
	var again *Sandbox
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		again, err = GetSandbox(ctx, "detached-test")
		if err == nil || time.Now().After(deadline) {
			break
		}
	}
	if err != nil {
		t.Fatal(err)
	}
	res, err := again.Exec(ctx, "cat", "/tmp/s")
	if err != nil {
		t.Fatalf("reattached: %v", err)
	}
	if string(res.Stdout) != "state\n" {
		t.Fatalf("reattached: %q", res.Stdout)
	}
	if err := again.Remove(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := GetSandbox(ctx, "detached-test"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("after remove: %v", err)
	}
}

// stateHome is where the library keeps state (LOCKBOX_HOME or its default).
func stateHome() string {
	if h := os.Getenv("LOCKBOX_HOME"); h != "" {
		return h
	}
	if x := os.Getenv("XDG_DATA_HOME"); x != "" {
		return filepath.Join(x, "lockbox")
	}
	h, _ := os.UserHomeDir()
	return filepath.Join(h, ".local", "share", "lockbox")
}

func TestCloseRemovesNonDetached(t *testing.T) {
	ctx := context.Background()
	sb, err := CreateSandbox(ctx, WithName("close-test"), WithReplace())
	if err != nil {
		t.Fatal(err)
	}
	if err := sb.Close(); err != nil {
		t.Fatal(err)
	}
	if err := sb.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	// Close returned once the sandbox was gone: the name is free at once.
	if _, err = os.Stat(filepath.Join(stateHome(), "sandboxes", "close-test")); !os.IsNotExist(err) {
		t.Fatalf("sandbox dir after Close: %v", err)
	}
	sb2, err := CreateSandbox(ctx, WithName("close-test"))
	if err != nil {
		t.Fatal(err)
	}
	sb2.Close()
	if _, err = GetSandbox(ctx, "close-test"); errors.Is(err, ErrNotFound) {
		return
	}
	t.Fatalf("sandbox still there after Close: %v", err)
}

func TestImagePythonFromTheStore(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	sb, err := CreateSandbox(ctx, WithImage("python"))
	if errors.Is(err, ErrNotFound) && os.Getenv("LOCKBOX_REQUIRE_PYTHON") == "" {
		// make test-image-python sets LOCKBOX_REQUIRE_PYTHON and builds the image first.
		t.Skipf("python image not built (make image-python): %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	defer sb.Remove(ctx)
	res, err := sb.Exec(ctx, "python3", "-c", "print(6*7)")
	if err != nil || string(res.Stdout) != "42\n" {
		t.Fatalf("python3: %v %+v", err, res)
	}
	// The image's files are owned by the sandbox's root, not nobody.
	res, _ = sb.Shell(ctx, "stat -c %u /usr/bin/python3 /etc/passwd | sort -u")
	if strings.TrimSpace(string(res.Stdout)) != "0" {
		t.Fatalf("image file owners inside: %q", res.Stdout)
	}
}

func TestUserWorkdirHostnameAndReadOnlyVolume(t *testing.T) {
	ctx := context.Background()
	ro := t.TempDir()
	os.WriteFile(filepath.Join(ro, "f"), []byte("keep"), 0o644)
	sb := newSandbox(t, WithUser("1000:1000"), WithWorkdir("/tmp"), WithHostname("box1"),
		WithVolume(ro, "/ro", true), WithTmpfs("/scratch", 8))
	res, err := sb.Shell(ctx, "id -u; id -g; pwd; hostname")
	if err != nil || string(res.Stdout) != "1000\n1000\n/tmp\nbox1\n" {
		t.Fatalf("defaults: %v %q", err, res.Stdout)
	}
	res, err = sb.Shell(ctx, "id -u", WithExecUser("0"))
	if err != nil || string(res.Stdout) != "0\n" {
		t.Fatalf("exec user: %v %q", err, res.Stdout)
	}
	if err := sb.FS().WriteFile(ctx, "/ro/f", []byte("x"), 0o644); !errors.Is(err, ErrPermission) {
		t.Fatalf("write to read-only volume: %v", err)
	}
	if b, _ := os.ReadFile(filepath.Join(ro, "f")); string(b) != "keep" {
		t.Fatalf("read-only volume changed: %q", b)
	}
	res, _ = sb.Shell(ctx, "head -c 16777216 /dev/zero > /scratch/big", WithExecUser("0"))
	if res.ExitCode == 0 {
		t.Fatal("tmpfs size limit not applied")
	}
	if _, err := sb.Shell(ctx, "true", WithExecUser("no-such-user")); !errors.Is(err, ErrNotFound) {
		t.Fatalf("unknown user: %v", err)
	}
}

func TestExecStreamWithTTY(t *testing.T) {
	sb := newSandbox(t)
	es, err := sb.ExecStream(context.Background(), []string{"sh", "-c", "stty size; read x; stty size"}, WithTTY(24, 80))
	if err != nil {
		t.Fatal(err)
	}
	var out []byte
	resized := false
	for ev := range es.Events() {
		switch ev.Kind {
		case EventStdout:
			out = append(out, ev.Data...)
			if !resized && strings.Contains(string(out), "24 80") {
				resized = true
				if err := es.Resize(40, 100); err != nil {
					t.Fatal(err)
				}
				io.WriteString(es.Stdin(), "go\n")
			}
		case EventStderr:
			t.Fatalf("stderr event with a tty: %q", ev.Data)
		case EventExit:
			if ev.Err != nil || ev.Exit.ExitCode != 0 {
				t.Fatalf("exit: %+v", ev)
			}
		}
	}
	if !strings.Contains(string(out), "24 80") || !strings.Contains(string(out), "40 100") {
		t.Fatalf("tty output %q", out)
	}
}
