package tests

import (
	"encoding/json"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/creack/pty"
	"golang.org/x/sys/unix"

	"lockbox.dev/lockbox"
)

// The CLI is tested as users run it: the built binary, real sandboxes,
// the release engine (make test-cli sets LOCKBOX_LIB, LOCKBOX_HELPER,
// LOCKBOX_IMAGES, LOCKBOX_HOME, and LOCKBOX_CLI to the built binary).

func TestCLIDoctorJSON(t *testing.T) {
	r := runCLI(t, "", nil, "doctor", "--json")
	var rep lockbox.Report
	if err := json.Unmarshal([]byte(r.stdout), &rep); err != nil {
		t.Fatalf("doctor --json is not a report: %v\n%v", err, r)
	}
	var names []string
	for _, it := range rep.Items {
		names = append(names, it.Name)
	}
	for _, want := range []string{"userns", "landlock", "cgroup", "seccomp", "pasta", "kvm", "engine"} {
		if !slices.Contains(names, want) {
			t.Errorf("doctor has no %s item: %v", want, names)
		}
	}
	if eng, _ := rep.Item("engine"); eng.Status != lockbox.CheckOK || !strings.Contains(eng.Found, os.Getenv("LOCKBOX_LIB")) {
		t.Errorf("engine item with LOCKBOX_LIB set: %+v", eng)
	}
	if want := map[bool]int{false: 0, true: 1}[rep.Failed()]; r.code != want {
		t.Errorf("doctor exit %d with failed=%v, want %d", r.code, rep.Failed(), want)
	}
	// An engine that cannot be found is a fail item and exit code 1, and
	// doctor still runs: it is what to run when the engine will not.
	r = runCLI(t, "", []string{"LOCKBOX_LIB=", "LOCKBOX_HOME=" + t.TempDir()}, "doctor", "--json")
	if err := json.Unmarshal([]byte(r.stdout), &rep); err != nil || r.code != 1 {
		t.Fatalf("doctor without an engine: %v; %v", err, r)
	}
	if eng, _ := rep.Item("engine"); eng.Status != lockbox.CheckFail || eng.Fix == "" {
		t.Errorf("engine item without an engine: %+v", eng)
	}
}

func TestCLIRunExitCodes(t *testing.T) {
	r := cli(t, 7, "run", "base", "--", "sh", "-c", "echo out; echo err >&2; exit 7")
	if r.stdout != "out\n" || !strings.Contains(r.stderr, "err\n") {
		t.Errorf("streams: %v", r)
	}
	cli(t, 0, "run", "base", "true")
	// A signal ends it: 128+15, as a shell reports it.
	cli(t, 143, "run", "base", "sh", "-c", "kill -TERM $$")
	cli(t, 124, "run", "--timeout", "300ms", "base", "sleep", "30")
	// No such command inside: 127, as a shell and docker run.
	cli(t, 127, "run", "base", "no-such-command-here")
	// The engine cannot make the sandbox: 125, as docker run.
	r = cli(t, 125, "run", "no-such-image-here", "true")
	if !strings.Contains(r.stderr, "no-such-image-here") {
		t.Errorf("no image named in: %v", r)
	}
}

func TestCLIRunEnvVolumeWorkdirStdin(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "f"), []byte("from the host\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	r := runCLI(t, "", []string{"LOCKBOX_CLI_TEST_B=from-host-env"},
		"run", "-e", "A=1", "-e", "LOCKBOX_CLI_TEST_B", "-v", dir+":/mnt:ro", "-w", "/mnt", "base",
		"sh", "-c", `echo "$A $LOCKBOX_CLI_TEST_B"; cat f; pwd; touch x 2>/dev/null && echo WROTE; true`)
	if want := "1 from-host-env\nfrom the host\n/mnt\n"; r.code != 0 || r.stdout != want {
		t.Fatalf("want %q: %v", want, r)
	}
	if _, err := os.Stat(filepath.Join(dir, "x")); err == nil {
		t.Error("a read-only volume was written")
	}
	// The sandbox writes as its own host ids: the volume must let it.
	rw := filepath.Join(dir, "rw")
	if err := os.Mkdir(rw, 0o777); err != nil || os.Chmod(rw, 0o777) != nil {
		t.Fatal(err)
	}
	r = runCLI(t, "", nil, "run", "-v", rw+":/mnt", "base", "sh", "-c", "echo made > /mnt/made")
	if b, err := os.ReadFile(filepath.Join(rw, "made")); r.code != 0 || string(b) != "made\n" {
		t.Errorf("a writable volume: %q %v; %v", b, err, r)
	}
	// -i sends stdin; without it the command reads EOF at once.
	if r = runCLI(t, "piped in\n", nil, "run", "-i", "base", "cat"); r.code != 0 || r.stdout != "piped in\n" {
		t.Errorf("run -i cat: %v", r)
	}
	if r = runCLI(t, "piped in\n", nil, "run", "base", "cat"); r.code != 0 || r.stdout != "" {
		t.Errorf("run cat without -i: %v", r)
	}
	r = runCLI(t, "", nil, "run", "-m", "64m", "--cpus", "0.5", "--network", "none", "-u", "1000", "base", "id", "-u")
	if r.code != 0 || r.stdout != "1000\n" {
		t.Errorf("run -m -u: %v", r)
	}
}

func TestCLINamedSandboxRoundTrip(t *testing.T) {
	name := "cli-roundtrip"
	runCLI(t, "", nil, "rm", "-f", name)
	t.Cleanup(func() { runCLI(t, "", nil, "rm", "-f", name) })
	if r := cli(t, 0, "create", "-e", "GREETING=hi", name, "base"); r.stdout != name+"\n" {
		t.Errorf("create printed %q", r.stdout)
	}
	var list []lockbox.SandboxInfo
	if err := json.Unmarshal([]byte(cli(t, 0, "ls", "--json").stdout), &list); err != nil {
		t.Fatal(err)
	}
	i := slices.IndexFunc(list, func(s lockbox.SandboxInfo) bool { return s.Name == name })
	if i < 0 || !list[i].Running() || !list[i].Detached {
		t.Fatalf("ls --json has no running detached %s: %+v", name, list)
	}
	// State made by one exec is seen by the next: it is one sandbox.
	cli(t, 0, "exec", name, "--", "sh", "-c", `echo "$GREETING from inside" > /tmp/out`)
	cli(t, 3, "exec", name, "sh", "-c", "exit 3")
	if r := cli(t, 0, "exec", "-e", "X=y", "-w", "/tmp", name, "sh", "-c", `echo $X; pwd`); r.stdout != "y\n/tmp\n" {
		t.Errorf("exec -e -w: %v", r)
	}
	host := t.TempDir()
	cli(t, 0, "cp", name+":/tmp/out", filepath.Join(host, "out"))
	if b, err := os.ReadFile(filepath.Join(host, "out")); err != nil || string(b) != "hi from inside\n" {
		t.Errorf("cp out: %q %v", b, err)
	}
	if err := os.WriteFile(filepath.Join(host, "in"), []byte("from the host\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	cli(t, 0, "cp", filepath.Join(host, "in"), name+":/tmp/in")
	if r := cli(t, 0, "exec", name, "cat", "/tmp/in"); r.stdout != "from the host\n" {
		t.Errorf("cp in: %v", r)
	}
	if r := cli(t, 0, "ls", "-q"); !slices.Contains(strings.Fields(r.stdout), name) {
		t.Errorf("ls -q: %v", r)
	}
	cli(t, 0, "rm", name)
	if r := cli(t, 0, "ls", "-q"); slices.Contains(strings.Fields(r.stdout), name) {
		t.Errorf("still listed after rm: %v", r)
	}
	cli(t, 1, "exec", name, "true")
	cli(t, 1, "rm", name)
	cli(t, 0, "rm", "-f", name)
}

func TestCLIImages(t *testing.T) {
	cli(t, 0, "run", "base", "true") // the release image is unpacked on first use
	var list []lockbox.ImageInfo
	if err := json.Unmarshal([]byte(cli(t, 0, "images", "ls", "--json").stdout), &list); err != nil {
		t.Fatal(err)
	}
	i := slices.IndexFunc(list, func(im lockbox.ImageInfo) bool { return slices.Contains(im.Names, "base") })
	if i < 0 || !strings.HasPrefix(list[i].Digest, "sha256:") {
		t.Fatalf("images ls --json has no base: %+v", list)
	}
	var one lockbox.ImageInfo
	if err := json.Unmarshal([]byte(cli(t, 0, "images", "inspect", "base").stdout), &one); err != nil || one.Digest != list[i].Digest {
		t.Errorf("inspect base: %+v %v, ls says %s", one, err, list[i].Digest)
	}
	if r := cli(t, 0, "images", "ls"); !strings.Contains(r.stdout, "base") || !strings.Contains(r.stdout, "NAMES") {
		t.Errorf("images ls: %v", r)
	}
	cli(t, 1, "images", "rm", "no-such-image-here")
}

func TestCLIUsageErrors(t *testing.T) {
	for _, c := range []struct {
		args []string
		msg  string
	}{
		{[]string{}, "Usage: lockbox COMMAND"},
		{[]string{"frobnicate"}, `unknown command "frobnicate"`},
		{[]string{"run"}, "an IMAGE is needed"},
		{[]string{"run", "--bogus", "base", "true"}, "flag provided but not defined: -bogus"},
		{[]string{"run", "--network", "everywhere", "base", "true"}, `--network "everywhere": want none or outbound`},
		{[]string{"run", "-m", "lots", "base", "true"}, `--memory "lots"`},
		{[]string{"exec", "just-a-name"}, "a NAME and a COMMAND are needed"},
		{[]string{"cp", "a", "b"}, "exactly one of SRC and DST must be NAME:PATH"},
		{[]string{"create", "only-a-name"}, "Usage: lockbox create"},
		{[]string{"images", "frob"}, `unknown command "frob"`},
		{[]string{"doctor", "extra"}, "Usage: lockbox doctor"},
	} {
		r := runCLI(t, "", nil, c.args...)
		if r.code != 2 || !strings.Contains(r.stderr, c.msg) {
			t.Errorf("lockbox %v: want exit 2 and %q: %v", c.args, c.msg, r)
		}
	}
	if r := cli(t, 0, "run", "-h"); !strings.Contains(r.stdout, "--volume") {
		t.Errorf("run -h: %v", r)
	}
}

// TestCLITTY runs `run -it` on a real pseudo-terminal: the command sees a
// /dev/pts terminal of the host terminal's size, a resize of the host
// terminal reaches it, and the host terminal leaves raw mode at the end.
func TestCLITTY(t *testing.T) {
	bin := lockboxCLI(t)
	cmd := exec.Command(bin, "run", "-it", "base", "sh", "-c",
		`tty; stty size; while read x; do stty size; [ "$x" = q ] && exit 5; done`)
	cmd.Env = os.Environ()
	ptmx, err := pty.StartWithSize(cmd, &pty.Winsize{Rows: 30, Cols: 100})
	if err != nil {
		t.Fatal(err)
	}
	defer ptmx.Close()
	out := make(chan string, 1)
	var seen strings.Builder
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := ptmx.Read(buf)
			if n > 0 {
				out <- string(buf[:n])
			}
			if err != nil {
				close(out)
				return
			}
		}
	}()
	waitFor := func(re *regexp.Regexp, poke func()) bool {
		deadline := time.After(30 * time.Second)
		tick := time.NewTicker(200 * time.Millisecond)
		defer tick.Stop()
		for !re.MatchString(seen.String()) {
			select {
			case s, ok := <-out:
				if !ok {
					return re.MatchString(seen.String())
				}
				seen.WriteString(s)
			case <-tick.C:
				if poke != nil {
					poke()
				}
			case <-deadline:
				return false
			}
		}
		return true
	}
	if !waitFor(regexp.MustCompile(`/dev/pts/\d+\r?\n30 100\r?\n`), nil) {
		t.Fatalf("no /dev/pts terminal of 30x100 inside: %q", seen.String())
	}
	// While it runs the host terminal is raw: no echo, no line editing.
	tio, err := unix.IoctlGetTermios(int(ptmx.Fd()), unix.TCGETS)
	if err != nil {
		t.Fatal(err)
	}
	if tio.Lflag&(unix.ICANON|unix.ECHO) != 0 {
		t.Errorf("host terminal not raw while the command runs: lflag %#x", tio.Lflag)
	}
	if err := pty.Setsize(ptmx, &pty.Winsize{Rows: 40, Cols: 120}); err != nil {
		t.Fatal(err)
	}
	// Each line read makes it print its size again: poke until the new
	// size shows (the resize travels host -> CLI -> engine -> agent).
	if !waitFor(regexp.MustCompile(`40 120\r?\n`), func() { _, _ = io.WriteString(ptmx, "\r") }) {
		t.Fatalf("resize to 40x120 never reached the command: %q", seen.String())
	}
	_, _ = io.WriteString(ptmx, "q\r")
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	go func() {
		for range out {
		}
	}()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		_ = cmd.Process.Kill()
		t.Fatalf("run -it did not end: %q", seen.String())
	}
	if code := cmd.ProcessState.ExitCode(); code != 5 {
		t.Errorf("exit code %d, want 5", code)
	}
	if tio, err = unix.IoctlGetTermios(int(ptmx.Fd()), unix.TCGETS); err == nil && tio.Lflag&unix.ICANON == 0 {
		t.Errorf("host terminal left raw after the command ended: lflag %#x", tio.Lflag)
	}
}

// TestCLIEngineSetupVerify installs the release in dist/ with the CLI
// (plain progress lines: stderr is no terminal), installs it again (a
// marker check), verifies it, then flips one byte of the installed
// library: verify must refuse it with exit 1. make test-cli links the CLI
// to the development pin that dist/ was signed for.
func TestCLIEngineSetupVerify(t *testing.T) {
	dist := os.Getenv("LOCKBOX_DIST")
	if dist == "" || os.Getenv("LOCKBOX_CLI") == "" {
		t.Skip("needs LOCKBOX_DIST and a CLI linked to its pin: run `make test-cli`")
	}
	dir := t.TempDir()
	noDev := []string{"LOCKBOX_LIB=", "LOCKBOX_HOME=" + dir}
	r := runCLI(t, "", noDev, "install", "--from", dist, "--dir", dir)
	if r.code != 0 || !strings.Contains(r.stdout, "installed in "+dir) || !strings.Contains(r.stderr, "verified lib/liblockbox.so") {
		t.Fatalf("install: %v", r)
	}
	if r = runCLI(t, "", noDev, "install", "--from", dist, "--dir", dir); r.code != 0 || !strings.Contains(r.stderr, "already installed") {
		t.Errorf("second install: %v", r)
	}
	r = runCLI(t, "", noDev, "verify", "--dir", dir, "--json")
	var v struct {
		Library string `json:"library"`
		Engine  string `json:"engine_version"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &v); r.code != 0 || err != nil || v.Engine == "" || v.Library == "" {
		t.Fatalf("verify: %v (%v)", r, err)
	}
	if rep := runCLI(t, "", noDev, "doctor", "--json"); !strings.Contains(rep.stdout, "installed in") {
		t.Errorf("doctor does not see the install: %v", rep)
	}
	f, err := os.OpenFile(v.Library, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 1)
	if _, err := f.ReadAt(b, 4096); err != nil {
		t.Fatal(err)
	}
	b[0] ^= 0xff
	if _, err := f.WriteAt(b, 4096); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if r = runCLI(t, "", noDev, "verify", "--dir", dir); r.code != 1 || !strings.Contains(r.stderr, "verification failed") {
		t.Errorf("verify of a tampered library: want exit 1 and a verification error: %v", r)
	}
}

// SIGTERM to `lockbox run` goes to the command (exit 128+15), and the
// sandbox is removed once it has ended.
func TestCLIRunForwardsSignalsAndCleansUp(t *testing.T) {
	name := "cli-signal"
	runCLI(t, "", nil, "rm", "-f", name)
	cmd := exec.Command(lockboxCLI(t), "run", "--name", name, "base", "sh", "-c", "echo ready; sleep 30")
	cmd.Env = os.Environ()
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	line := make([]byte, 6)
	if _, err := io.ReadFull(stdout, line); err != nil || string(line) != "ready\n" {
		t.Fatalf("%q %v", line, err)
	}
	if r := cli(t, 0, "ls", "-q"); !slices.Contains(strings.Fields(r.stdout), name) {
		t.Fatalf("the running sandbox is not listed: %v", r)
	}
	start := time.Now()
	if err := cmd.Process.Signal(unix.SIGTERM); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()
	if code := cmd.ProcessState.ExitCode(); code != 143 {
		t.Errorf("exit %d after SIGTERM, want 143", code)
	}
	if d := time.Since(start); d > 20*time.Second {
		t.Errorf("took %v to end after SIGTERM", d)
	}
	if r := cli(t, 0, "ls", "-q"); slices.Contains(strings.Fields(r.stdout), name) {
		t.Errorf("the sandbox outlived its run: %v", r)
	}
}
