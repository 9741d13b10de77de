package tests

// Reliability, leaks on removal (issue 10, items 7 and 8): whichever way a
// sandbox goes (Close, Remove, detached Remove, removal by name, Kill, Stop,
// its helper SIGKILLed, its host process SIGKILLed and the next engine
// start's cleanup), no cgroup directory is left in any mounted hierarchy
// and no pasta process is left running. Also three silent results: Start
// twice, a failing stdin reader, a sandbox removed by another process.

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"lockbox.dev/lockbox"
)

// cgroupMounts lists the mount point of every cgroup and cgroup2 mount.
func cgroupMounts(t *testing.T) []string {
	t.Helper()
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, l := range strings.Split(string(b), "\n") {
		left, right, ok := strings.Cut(l, " - ")
		if !ok {
			continue
		}
		fs := strings.Fields(right)
		f := strings.Fields(left)
		if len(fs) > 0 && (fs[0] == "cgroup" || fs[0] == "cgroup2") && len(f) > 4 {
			out = append(out, f[4])
		}
	}
	return out
}

// lockboxCgroups lists every sandbox cgroup directory (a child of a
// directory named "lockbox") in every mounted hierarchy.
func lockboxCgroups(t *testing.T) []string {
	t.Helper()
	var out []string
	for _, m := range cgroupMounts(t) {
		base := strings.Count(m, "/")
		filepath.WalkDir(m, func(p string, d os.DirEntry, err error) error {
			if err != nil || !d.IsDir() {
				return nil
			}
			if filepath.Base(filepath.Dir(p)) == "lockbox" {
				out = append(out, p)
				return filepath.SkipDir
			}
			if strings.Count(p, "/")-base > 6 {
				return filepath.SkipDir
			}
			return nil
		})
	}
	return out
}

// cgroupsOf keeps the directories of the sandboxes with these ids.
func cgroupsOf(dirs []string, ids ...string) []string {
	var out []string
	for _, d := range dirs {
		for _, id := range ids {
			if id != "" && filepath.Base(d) == id {
				out = append(out, d)
			}
		}
	}
	return out
}

// pastaForSandbox lists running pasta processes started for the sandbox named
// name (their pid file lives in the sandbox's directory).
func pastaForSandbox(name string) []int {
	var out []int
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		// pasta is passt under another name: comm may be "passt.avx2".
		comm, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "comm"))
		cmd, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		argv0, _, _ := strings.Cut(string(cmd), "\x00")
		if !strings.HasPrefix(string(comm), "pasta") && !strings.HasPrefix(string(comm), "passt") &&
			filepath.Base(argv0) != "pasta" {
			continue
		}
		if strings.Contains(string(cmd), "/sandboxes/"+name+"/") {
			out = append(out, pid)
		}
	}
	return out
}

// leakTarget is one sandbox whose leftovers are checked.
type leakTarget struct{ name, id string }

// noLeftovers waits a little (some cleanup finishes just after the call
// returns) and then fails if any cgroup directory or pasta process of the
// targets remains.
func noLeftovers(t *testing.T, path string, pasta bool, targets ...leakTarget) {
	t.Helper()
	var cg []string
	var pp []int
	// Generous: a loaded machine may take seconds to finish the teardown.
	deadline := time.Now().Add(30 * time.Second)
	for {
		cg, pp = nil, nil
		all := lockboxCgroups(t)
		for _, tg := range targets {
			cg = append(cg, cgroupsOf(all, tg.id)...)
			if pasta {
				pp = append(pp, pastaForSandbox(tg.name)...)
			}
		}
		if (len(cg) == 0 && len(pp) == 0) || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if len(cg) > 0 {
		t.Errorf("%s: cgroup directories left: %v", path, cg)
	}
	if len(pp) > 0 {
		t.Errorf("%s: pasta processes left: %v", path, pp)
	}
}

// present is the control: while the sandbox lives, the same probes do see
// its cgroup directories (in every hierarchy it was placed in) and its
// pasta, so an empty result after removal means they are gone.
func present(t *testing.T, pasta bool, tg leakTarget) {
	t.Helper()
	cg := cgroupsOf(lockboxCgroups(t), tg.id)
	joined := hierarchiesJoined(tg.id)
	if len(cg) == 0 || len(cg) < len(joined) {
		t.Fatalf("control: live sandbox %s (%s) is in hierarchies %v, found directories %v", tg.name, tg.id, joined, cg)
	}
	if pasta && len(pastaForSandbox(tg.name)) == 0 {
		t.Fatalf("control: no pasta process found for live sandbox %s", tg.name)
	}
}

// hierarchiesJoined lists the hierarchies (the controller field of
// /proc/<pid>/cgroup) in which some host process sits in the sandbox's
// cgroup.
func hierarchiesJoined(id string) []string {
	seen := map[string]bool{}
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		if _, err := strconv.Atoi(e.Name()); err != nil {
			continue
		}
		b, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "cgroup"))
		for _, l := range strings.Split(string(b), "\n") {
			f := strings.SplitN(l, ":", 3)
			if len(f) == 3 && strings.HasSuffix(f[2], "/lockbox/"+id) {
				seen[f[1]] = true
			}
		}
	}
	var out []string
	for h := range seen {
		out = append(out, h)
	}
	sort.Strings(out)
	return out
}

func needPasta(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("pasta leak check needs root (NetworkOutbound with its host-range filter)")
	}
	if _, err := exec.LookPath("nft"); err != nil {
		t.Skip("pasta leak check needs nft for NetworkOutbound")
	}
	if _, err := exec.LookPath("pasta"); err != nil {
		t.Skip("pasta leak check needs pasta for NetworkOutbound")
	}
}

func needCgroups(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("cgroup leak check needs root (rootless sandboxes may get no cgroup)")
	}
}

// removalPaths runs every in-process removal path `rounds` times, each
// on a sandbox that ran an exec, and checks for leftovers after each.
func removalPaths(t *testing.T, prefix string, pasta bool, rounds int, opts ...lockbox.Option) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	before := lockboxCgroups(t)
	type path struct {
		name     string
		detached bool
		remove   func(t *testing.T, sb *lockbox.Sandbox, tg leakTarget)
	}
	paths := []path{
		{"close", false, func(t *testing.T, sb *lockbox.Sandbox, _ leakTarget) {
			if err := sb.Close(); err != nil {
				t.Fatalf("Close: %v", err)
			}
		}},
		{"remove", false, func(t *testing.T, sb *lockbox.Sandbox, _ leakTarget) {
			if err := sb.Remove(ctx); err != nil {
				t.Fatalf("Remove: %v", err)
			}
		}},
		{"detached-remove", true, func(t *testing.T, sb *lockbox.Sandbox, _ leakTarget) {
			if err := sb.Remove(ctx); err != nil {
				t.Fatalf("Remove: %v", err)
			}
		}},
		{"detached-remove-by-name", true, func(t *testing.T, sb *lockbox.Sandbox, tg leakTarget) {
			if err := sb.Close(); err != nil {
				t.Fatalf("Close: %v", err)
			}
			if err := lockbox.RemoveSandbox(ctx, tg.name); err != nil {
				t.Fatalf("RemoveSandbox: %v", err)
			}
		}},
		{"kill", false, func(t *testing.T, sb *lockbox.Sandbox, tg leakTarget) {
			if err := sb.Kill(ctx); err != nil {
				t.Fatalf("Kill: %v", err)
			}
			// Killed but not yet removed: nothing may keep running or
			// keep its cgroups.
			noLeftovers(t, "kill (before Remove)", pasta, tg)
			if err := sb.Remove(ctx); err != nil {
				t.Fatalf("Remove: %v", err)
			}
		}},
		{"detached-stop", true, func(t *testing.T, sb *lockbox.Sandbox, tg leakTarget) {
			if err := sb.Stop(ctx); err != nil {
				t.Fatalf("Stop: %v", err)
			}
			noLeftovers(t, "stop (before Remove)", pasta, tg)
			if err := sb.Remove(ctx); err != nil {
				t.Fatalf("Remove: %v", err)
			}
		}},
		{"helper-killed", false, func(t *testing.T, sb *lockbox.Sandbox, tg leakTarget) {
			info, err := sb.Info(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if err := syscall.Kill(info.HelperPID, syscall.SIGKILL); err != nil {
				t.Fatalf("kill helper %d: %v", info.HelperPID, err)
			}
			for syscall.Kill(info.HelperPID, 0) == nil {
				time.Sleep(10 * time.Millisecond)
			}
			_ = sb.Close()
		}},
	}
	var made []leakTarget
	for r := 0; r < rounds; r++ {
		for _, p := range paths {
			name := fmt.Sprintf("%s-%s-%d", prefix, p.name, r)
			o := append([]lockbox.Option{lockbox.WithName(name), lockbox.WithReplace()}, opts...)
			if p.detached {
				o = append(o, lockbox.WithDetached())
			}
			sb, err := lockbox.CreateSandbox(ctx, o...)
			if err != nil {
				t.Fatalf("%s: create: %v", name, err)
			}
			tg := leakTarget{name: name, id: sb.ID()}
			made = append(made, tg)
			if res, err := sb.Shell(ctx, "sleep 300 >/dev/null 2>&1 & echo up"); err != nil || string(res.Stdout) != "up\n" {
				_ = sb.Remove(ctx)
				t.Fatalf("%s: exec: %v %+v", name, err, res)
			}
			present(t, pasta, tg)
			p.remove(t, sb, tg)
			noLeftovers(t, p.name, pasta, tg)
		}
	}
	after := lockboxCgroups(t)
	var ids []string
	for _, tg := range made {
		ids = append(ids, tg.id)
	}
	t.Logf("%d create/exec/remove cycles over %d paths: lockbox cgroup dirs on the host %d before, %d after (other processes' sandboxes included); this test's: %d left",
		len(made), len(paths), len(before), len(after), len(cgroupsOf(after, ids...)))
}

// Item 8: no cgroup directory, in any hierarchy, outlives its sandbox.
func TestReliabLeaksCgroupsEveryRemovalPath(t *testing.T) {
	needEngine(t)
	needCgroups(t)
	rounds := 2
	// A soak: LOCKBOX_RELIAB_LEAK_ROUNDS=100 runs 700 cycles.
	if n, err := strconv.Atoi(os.Getenv("LOCKBOX_RELIAB_LEAK_ROUNDS")); err == nil && n > 0 {
		rounds = n
	}
	removalPaths(t, "leak-cg", false, rounds)
}

// Item 7: pasta goes with its sandbox on every removal path.
func TestReliabLeaksPastaEveryRemovalPath(t *testing.T) {
	needEngine(t)
	needCgroups(t)
	needPasta(t)
	removalPaths(t, "leak-net", true, 1, lockbox.WithNetwork(lockbox.NetworkOutbound))
}

// TestReliabLeaksChild runs in a child process: it creates the sandboxes
// named in LOCKBOX_RELIAB_LEAK_CHILD, prints their helper pids and ids,
// and waits to be killed.
func TestReliabLeaksChild(t *testing.T) {
	spec := os.Getenv("LOCKBOX_RELIAB_LEAK_CHILD")
	if spec == "" {
		t.Skip("helper process for TestReliabLeaksHostAndHelperKilled")
	}
	ctx := context.Background()
	names, net, _ := strings.Cut(spec, ";")
	for _, n := range strings.Split(names, ",") {
		opts := []lockbox.Option{lockbox.WithName(strings.TrimPrefix(n, "detached:")), lockbox.WithReplace()}
		if strings.HasPrefix(n, "detached:") {
			opts = append(opts, lockbox.WithDetached())
		}
		if net != "" {
			opts = append(opts, lockbox.WithNetwork(lockbox.Network(net)))
		}
		sb, err := lockbox.CreateSandbox(ctx, opts...)
		if err != nil {
			fmt.Println("ERROR", err)
			os.Exit(1)
		}
		info, err := sb.Info(ctx)
		if err == nil {
			_, err = sb.Shell(ctx, "sleep 300 >/dev/null 2>&1 &")
		}
		if err != nil {
			fmt.Println("ERROR", err)
			os.Exit(1)
		}
		fmt.Printf("HELPER %s %d %s\n", sb.Name(), info.HelperPID, info.ID)
	}
	fmt.Println("READY")
	time.Sleep(time.Hour)
}

// The host process and the helpers are SIGKILLed (nothing of theirs gets
// to clean up); the next engine start's cleanup must leave no cgroup
// directory and no pasta behind, for the owned sandbox (removed) and the
// detached one (kept, stopped).
func TestReliabLeaksHostAndHelperKilled(t *testing.T) {
	needEngine(t)
	needCgroups(t)
	net := ""
	pasta := false
	if os.Geteuid() == 0 {
		if _, err := exec.LookPath("nft"); err == nil {
			if _, err := exec.LookPath("pasta"); err == nil {
				net, pasta = string(lockbox.NetworkOutbound), true
			}
		}
	}
	if !pasta {
		t.Log("pasta part skipped: needs root, nft and pasta")
	}
	child := exec.Command(os.Args[0], "-test.run=^TestReliabLeaksChild$", "-test.v")
	child.Env = append(os.Environ(), "LOCKBOX_RELIAB_LEAK_CHILD=leak-host-owned,detached:leak-host-det;"+net)
	out, _ := child.StdoutPipe()
	child.Stderr = os.Stderr
	if err := child.Start(); err != nil {
		t.Fatal(err)
	}
	defer child.Process.Kill()
	helpers := map[string]int{}
	var targets []leakTarget
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) == 4 && f[0] == "HELPER" {
			helpers[f[1]], _ = strconv.Atoi(f[2])
			targets = append(targets, leakTarget{name: f[1], id: f[3]})
		}
		if len(f) > 0 && f[0] == "ERROR" {
			t.Fatalf("child: %s", sc.Text())
		}
		if len(f) > 0 && f[0] == "READY" {
			break
		}
	}
	go func() {
		for sc.Scan() {
		}
	}()
	if len(targets) != 2 {
		t.Fatalf("child made %v", targets)
	}
	ctx := context.Background()
	defer lockbox.RemoveSandbox(ctx, "leak-host-det")
	for _, tg := range targets {
		present(t, pasta, tg)
	}
	// Helpers first: their own teardown never runs, so only the engine's
	// cleanup can remove what they made.
	for _, pid := range helpers {
		syscall.Kill(pid, syscall.SIGKILL)
	}
	child.Process.Signal(syscall.SIGKILL)
	child.Wait()
	for _, pid := range helpers {
		for syscall.Kill(pid, 0) == nil {
			time.Sleep(10 * time.Millisecond)
		}
	}
	// A fresh engine (a new process) runs the startup cleanup.
	lister := exec.Command(os.Args[0], "-test.run=^TestLifecycleLister$")
	lister.Env = append(os.Environ(), "LOCKBOX_LIFECYCLE_LIST=1")
	if b, err := lister.CombinedOutput(); err != nil {
		t.Fatalf("lister: %v\n%s", err, b)
	}
	noLeftovers(t, "host and helper SIGKILLed, next engine start", pasta, targets...)
	if err := lockbox.RemoveSandbox(ctx, "leak-host-det"); err != nil {
		t.Fatalf("remove the stopped detached sandbox: %v", err)
	}
	noLeftovers(t, "detached sandbox removed after the cleanup", pasta, targets...)
	var ids []string
	for _, tg := range targets {
		ids = append(ids, tg.id)
	}
	sort.Strings(ids)
	if !t.Failed() {
		t.Logf("sandboxes %v: no cgroup dirs or pasta left", ids)
	}
}

// failingReader yields data, then fails.
type failingReader struct {
	data []byte
	err  error
}

func (f *failingReader) Read(p []byte) (int, error) {
	if len(f.data) == 0 {
		return 0, f.err
	}
	n := copy(p, f.data)
	f.data = f.data[n:]
	return n, nil
}

var errReaderBroke = errors.New("reader broke")

// A second Start is a typed error, and a stdin reader's failure is
// reported rather than turned into a clean EOF and exit 0.
func TestReliabSilentCmdAndStdin(t *testing.T) {
	needEngine(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	sb := createOK(t)

	c := sb.CommandContext(ctx, "true")
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	err := c.Start()
	var le *lockbox.Error
	if !errors.Is(err, lockbox.ErrAlreadyStarted) || !errors.Is(err, lockbox.ErrInvalidArgument) || !errors.As(err, &le) {
		t.Fatalf("second Start: %v (%T), want *Error matching ErrAlreadyStarted and ErrInvalidArgument", err, err)
	}
	if err := c.Wait(); err != nil {
		t.Fatalf("Wait after the refused second Start: %v", err)
	}

	wantStdinErr := func(what string, err error) {
		t.Helper()
		if !errors.Is(err, lockbox.ErrStdin) || !errors.Is(err, errReaderBroke) {
			t.Fatalf("%s: got %v, want ErrStdin wrapping the reader's error", what, err)
		}
	}
	// Exec: the process got what was read (then EOF) and exited 0; the
	// reader's failure is the result.
	res, err := sb.ExecArgs(ctx, []string{"cat"}, lockbox.WithStdin(&failingReader{[]byte("part"), errReaderBroke}))
	wantStdinErr("ExecArgs", err)
	if res == nil || string(res.Stdout) != "part" || res.ExitCode != 0 {
		t.Fatalf("ExecArgs result: %+v", res)
	}
	// Control: the same reader ending with EOF is a success.
	res, err = sb.ExecArgs(ctx, []string{"cat"}, lockbox.WithStdin(&failingReader{[]byte("all"), io.EOF}))
	if err != nil || string(res.Stdout) != "all" {
		t.Fatalf("control ExecArgs: %v %+v", err, res)
	}
	// Cmd.Run with a failing Stdin.
	var out strings.Builder
	c = sb.CommandContext(ctx, "cat")
	c.Stdin = &failingReader{[]byte("cmd"), errReaderBroke}
	c.Stdout = &out
	wantStdinErr("Cmd.Run", c.Run())
	if out.String() != "cmd" {
		t.Fatalf("Cmd stdout %q", out.String())
	}
	// ExecStream: the exit event carries it.
	es, err := sb.ExecStream(ctx, []string{"cat"}, lockbox.WithStdin(&failingReader{[]byte("s"), errReaderBroke}))
	if err != nil {
		t.Fatal(err)
	}
	st, err := es.Wait()
	wantStdinErr("ExecStream.Wait", err)
	if st.ExitCode != 0 {
		t.Fatalf("ExecStream exit %+v", st)
	}
	// A process that fails on its own reports its own exit, as os/exec does.
	res, err = sb.ExecArgs(ctx, []string{"sh", "-c", "cat; exit 3"}, lockbox.WithStdin(&failingReader{[]byte("x"), errReaderBroke}))
	if err != nil || res.ExitCode != 3 {
		t.Fatalf("failing process with failing stdin: %v %+v", err, res)
	}
}

// TestReliabLeaksRemover runs in a child process: it removes the sandbox
// named in LOCKBOX_RELIAB_REMOVE.
func TestReliabLeaksRemover(t *testing.T) {
	name := os.Getenv("LOCKBOX_RELIAB_REMOVE")
	if name == "" {
		t.Skip("helper process for TestReliabSilentRemovedElsewhere")
	}
	if err := lockbox.RemoveSandbox(context.Background(), name); err != nil {
		t.Fatal(err)
	}
}

// A sandbox removed by another process reports not-found ("was
// removed") on every later call, not a connection error; a sandbox whose
// helper merely died is still there and is not reported as removed.
func TestReliabSilentRemovedElsewhere(t *testing.T) {
	needEngine(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	sb := createOK(t, lockbox.WithName("reliab-removed-elsewhere"), lockbox.WithReplace(), lockbox.WithDetached())
	if _, err := sb.Exec(ctx, "true"); err != nil {
		t.Fatalf("control exec: %v", err)
	}
	rm := exec.Command(os.Args[0], "-test.run=^TestReliabLeaksRemover$")
	rm.Env = append(os.Environ(), "LOCKBOX_RELIAB_REMOVE="+sb.Name())
	if b, err := rm.CombinedOutput(); err != nil {
		t.Fatalf("remover: %v\n%s", err, b)
	}
	wantRemoved := func(what string, err error) {
		t.Helper()
		if !errors.Is(err, lockbox.ErrNotFound) || !strings.Contains(err.Error(), "removed") {
			t.Fatalf("%s on a sandbox removed elsewhere: %v, want ErrNotFound saying it was removed", what, err)
		}
	}
	_, err := sb.Exec(ctx, "true")
	wantRemoved("Exec", err)
	_, err = sb.Exec(ctx, "true")
	wantRemoved("second Exec", err)
	_, err = sb.Info(ctx)
	wantRemoved("Info", err)
	_, err = sb.FS().ReadFile(ctx, "/etc/hostname")
	wantRemoved("ReadFile", err)

	// Control: only the helper dies; the sandbox still exists, so the
	// error is "not running", not "removed".
	other := createOK(t, lockbox.WithName("reliab-helper-died"), lockbox.WithReplace(), lockbox.WithDetached())
	info, err := other.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	syscall.Kill(info.HelperPID, syscall.SIGKILL)
	for syscall.Kill(info.HelperPID, 0) == nil {
		time.Sleep(10 * time.Millisecond)
	}
	_, err = other.Exec(ctx, "true")
	if err == nil || errors.Is(err, lockbox.ErrNotFound) {
		t.Fatalf("Exec after the helper died (sandbox not removed): %v, want an error other than not-found", err)
	}
	if _, err := lockbox.GetSandbox(ctx, other.Name()); err != nil {
		t.Fatalf("the sandbox whose helper died is still listed: %v", err)
	}
}
