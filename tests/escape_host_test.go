package tests

// Attacks from inside a sandbox on the host's ids, quotas, network and
// process table (issue 9, items 4, 5, 6 and 9). The probes are
// cmd/hostprobe (static), bound read-only at /hostprobe.

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"lockbox.dev/lockbox"
)

// hostProbeBinary is cmd/hostprobe's path.
func hostProbeBinary(t *testing.T) string {
	return filepath.Join(staticProbe(t, "hostprobe"), "hostprobe")
}

// hostProbeSandbox creates a sandbox with cmd/hostprobe at /hostprobe.
func hostProbeSandbox(t *testing.T, opts ...lockbox.Option) *lockbox.Sandbox {
	t.Helper()
	return newSandbox(t, append([]lockbox.Option{lockbox.WithVolume(hostProbeBinary(t), "/hostprobe", true)}, opts...)...)
}

func runHostProbe(t *testing.T, sb *lockbox.Sandbox, args ...string) *lockbox.ExecResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	res, err := sb.ExecArgs(ctx, append([]string{"/hostprobe"}, args...))
	if err != nil {
		t.Fatalf("hostprobe %v: %v", args, err)
	}
	t.Logf("hostprobe %v -> exit %d signal %d\n%s%s", args, res.ExitCode, res.Signal, res.Stdout, res.Stderr)
	return res
}

// Item 4: a writable volume never gets files of host root or of host users
// outside the sandbox's range, and never a setuid or setgid file.
func TestEscapeHostVolumeIDsAndModes(t *testing.T) {
	needEngine(t)
	ctx := context.Background()
	root := os.Geteuid() == 0
	const owner = 4242
	vol := t.TempDir()
	os.Chmod(vol, 0o755)
	if root {
		if err := os.Chown(vol, owner, owner); err != nil {
			t.Fatal(err)
		}
	}
	// Host root's own directory, open to everyone: sandbox root may write
	// there, but as its own host id, not as host root.
	shared := t.TempDir()
	os.Chmod(shared, 0o777)
	sb := hostProbeSandbox(t, lockbox.WithVolume(vol, "/vol", false), lockbox.WithVolume(shared, "/shared", false))

	// Rootless the sandbox has one id, and the chowns fail.
	res, err := sb.Shell(ctx, "echo a > /vol/byroot && echo b > /vol/by1000 && echo c > /vol/chown0 && "+
		"echo d > /shared/byroot && echo e > /shared/by1000 || exit 1; chown 1000:1000 /vol/by1000; "+
		"chown 0:0 /vol/chown0; chown 0:0 /shared/byroot; chown 1000:1000 /shared/by1000; true")
	if err != nil || res.ExitCode != 0 {
		t.Fatalf("writes into the volumes failed: %v %+v %s", err, res, res.Stderr)
	}
	stat := func(p string) (uint32, uint32, os.FileMode) {
		t.Helper()
		fi, err := os.Lstat(p)
		if err != nil {
			t.Fatalf("the sandbox's write did not reach the host: %v", err)
		}
		st := fi.Sys().(*syscall.Stat_t)
		return st.Uid, st.Gid, fi.Mode()
	}
	if root {
		// The sandbox's files, stat'ed on the host: its root writes as the
		// volume's owner where the volume has one, else as its own host id
		// (never host root), its uid 1000 as 101000 (never host 1000).
		for _, c := range []struct {
			path string
			want uint32
		}{
			{filepath.Join(vol, "byroot"), owner},
			{filepath.Join(vol, "chown0"), owner},
			{filepath.Join(vol, "by1000"), 101000},
			{filepath.Join(shared, "byroot"), 100000},
			{filepath.Join(shared, "by1000"), 101000},
		} {
			u, g, _ := stat(c.path)
			t.Logf("%s: host uid %d gid %d", c.path, u, g)
			if u != c.want || g != c.want {
				t.Fatalf("ESCAPE: %s is host %d:%d, want %d:%d", c.path, u, g, c.want, c.want)
			}
		}
	}

	// setuid/setgid modes through every call that takes a mode.
	out := string(runHostProbe(t, sb, "modes", "/vol").Stdout)
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 7*3 {
		t.Fatalf("probe printed %d lines, want 21:\n%s", len(lines), out)
	}
	for _, l := range lines {
		f := strings.Fields(l)
		plain := f[1] == "755"
		switch {
		case plain && f[2] != "ok" && !(f[0] == "openat2" && f[2] == "ENOSYS"):
			// Control: the same call without the bits works, so a refusal
			// above is the filter, not a broken probe.
			t.Fatalf("control failed: %s", l)
		case !plain && f[2] == "ok":
			t.Fatalf("ESCAPE: %s", l)
		}
	}
	ents, _ := os.ReadDir(vol)
	made := 0
	for _, e := range ents {
		_, _, mode := stat(filepath.Join(vol, e.Name()))
		if mode&(os.ModeSetuid|os.ModeSetgid) != 0 {
			t.Fatalf("HOST CHANGED: %s is %v in the volume", e.Name(), mode)
		}
		if strings.HasSuffix(e.Name(), "-755") {
			made++
		}
	}
	if made != 6 { // every plain-mode control but openat2 made a file
		t.Fatalf("control: %d plain-mode files on the host, want 6", made)
	}
}

// Item 6: a sandbox takes at most its own share of inotify instances; the
// host user that owns its namespace keeps the rest. As root the sandbox
// also tries with several of its uids at once (the kernel counts per user
// of the namespace, then charges the namespace's owner).
func TestEscapeHostInotifyQuota(t *testing.T) {
	needEngine(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	hostMax := readInt(t, "/proc/sys/fs/inotify/max_user_instances")
	sb := hostProbeSandbox(t)
	users := []string{""}
	if os.Geteuid() == 0 {
		users = append(users, "1", "2", "3", "4", "5")
	}
	total := 0
	for i, u := range users {
		cmd := sb.CommandContext(ctx, "/hostprobe", "inotify")
		cmd.User = u
		stdin, _ := cmd.StdinPipe()
		stdout, _ := cmd.StdoutPipe()
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		// Each holds its instances until the test ends.
		defer func() { stdin.Close(); cmd.Wait() }()
		line, err := bufio.NewReader(stdout).ReadString('\n')
		if err != nil {
			t.Fatalf("probe: %v", err)
		}
		t.Logf("probe as %q: %s (host max_user_instances %d)", u, strings.TrimSpace(line), hostMax)
		var n, errno, limit int
		if _, err := fmt.Sscanf(line, "inotify %d errno %d limit %d", &n, &errno, &limit); err != nil {
			t.Fatalf("bad probe line %q: %v", line, err)
		}
		// Control: the first probe takes every instance it is allowed, so
		// the probe would find a missing limit.
		if i == 0 && n != limit {
			t.Fatalf("the probe took %d instances, its limit is %d", n, limit)
		}
		if limit <= 0 || limit >= hostMax {
			t.Fatalf("ESCAPE: the sandbox's inotify limit is %d, the host's per-user limit %d", limit, hostMax)
		}
		total += n
	}
	t.Logf("the sandbox holds %d inotify instances", total)
	// While the sandbox holds all it can: the host user still gets some.
	fd, err := syscall.InotifyInit1(syscall.IN_CLOEXEC)
	if err != nil {
		t.Fatalf("HOST CHANGED: inotify_init on the host fails while the sandbox holds %d instances: %v", total, err)
	}
	syscall.Close(fd)
}

func readInt(t *testing.T, p string) int {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// Item 9: PID 1's argv and environment name no host path, and x32 system
// calls are refused.
func TestEscapeHostStringsAndX32(t *testing.T) {
	needEngine(t)
	ctx := context.Background()
	vol := t.TempDir()
	sb := hostProbeSandbox(t, lockbox.WithVolume(vol, "/vol", false))
	info, err := sb.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// Control: the host paths are there to find, in the helper's own argv.
	host, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", info.HelperPID))
	if err != nil {
		t.Fatal(err)
	}
	secrets := []string{"launch.json", "lockbox-helper"}
	if h := os.Getenv("LOCKBOX_HOME"); h != "" {
		secrets = append(secrets, h)
	}
	for _, s := range secrets[:2] {
		if !strings.Contains(string(host), s) {
			t.Fatalf("control: the helper's argv %q lacks %q", host, s)
		}
	}
	out := string(runHostProbe(t, sb, "strings").Stdout)
	for _, l := range strings.Split(out, "\n") {
		if !strings.HasPrefix(l, "file /proc/1/cmdline") && !strings.HasPrefix(l, "file /proc/1/environ") {
			continue
		}
		for _, s := range secrets {
			if strings.Contains(l, s) {
				t.Fatalf("ESCAPE: a host path (%s) leaks inside: %s", s, l)
			}
		}
	}
	if !strings.Contains(out, `file /proc/1/cmdline "lockbox-agent\x00`) {
		t.Fatalf("PID 1's argv is not the agent's name:\n%s", out)
	}
	// Volume sources in mountinfo: reported here, fixed in the mount code.
	for _, s := range append(secrets, vol) {
		if strings.Contains(out, s) {
			t.Logf("NOTE: %s shows inside (mountinfo or /proc/1/exe)", s)
		}
	}

	res := runHostProbe(t, sb, "x32")
	if strings.Contains(string(res.Stdout), "ALIVE") || res.Signal != int(syscall.SIGSYS) {
		t.Fatalf("ESCAPE: an x32 system call was not killed: %+v %s", res, res.Stdout)
	}
}

// Item 5: outbound sandboxes reach the outside but not the host's own
// addresses or private ranges. The "outside" is a peer network namespace
// behind a veth pair: 203.0.113.2 stands for a public host, 172.16.99.2
// for a private one; the host's end holds 203.0.113.1 and 172.16.99.1.
func TestEscapeHostOutboundRanges(t *testing.T) {
	needEngine(t)
	if os.Geteuid() != 0 {
		t.Skip("the peer network needs root")
	}
	peer := fmt.Sprintf("lbxpeer%d", os.Getpid()%100000)
	hostIf, peerIf := "lbxh"+peer[7:], "lbxp"+peer[7:]
	ip := func(args ...string) {
		t.Helper()
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %v: %v %s", args, err, out)
		}
	}
	ip("netns", "add", peer)
	t.Cleanup(func() {
		exec.Command("ip", "link", "del", hostIf).Run()
		exec.Command("ip", "netns", "del", peer).Run()
	})
	ip("link", "add", hostIf, "type", "veth", "peer", "name", peerIf)
	ip("link", "set", peerIf, "netns", peer)
	ip("addr", "add", "203.0.113.1/24", "dev", hostIf)
	ip("addr", "add", "172.16.99.1/24", "dev", hostIf)
	ip("link", "set", hostIf, "up")
	for _, a := range []string{"203.0.113.2/24", "172.16.99.2/24"} {
		ip("-n", peer, "addr", "add", a, "dev", peerIf)
	}
	ip("-n", peer, "link", "set", peerIf, "up")
	ip("-n", peer, "link", "set", "lo", "up")

	// A service on every host address, and one in the peer.
	hostLn, err := net.Listen("tcp4", "0.0.0.0:0")
	if err != nil {
		t.Fatal(err)
	}
	defer hostLn.Close()
	hostHits := make(chan string, 16)
	go acceptAll(hostLn, hostHits)
	peerLn := listenInNetns(t, peer)
	defer peerLn.Close()
	peerHits := make(chan string, 16)
	go acceptAll(peerLn, peerHits)
	hostPort := strconv.Itoa(hostLn.Addr().(*net.TCPAddr).Port)
	peerPort := strconv.Itoa(peerLn.Addr().(*net.TCPAddr).Port)

	sb := outboundSandbox(t)
	// Control: a permitted destination is reached, so a refusal below is
	// the filter and not a broken network.
	if line, _ := probe(t, sb, "tcp", "203.0.113.2:"+peerPort); !strings.HasPrefix(line, "ESCAPED") {
		t.Fatalf("control: the public peer is unreachable: %s", line)
	}
	select {
	case <-peerHits:
	case <-time.After(30 * time.Second):
		t.Fatal("control: the peer saw no connection")
	}
	targets := []string{"203.0.113.1:" + hostPort, "172.16.99.1:" + hostPort, "172.16.99.2:" + peerPort, "10.0.2.2:" + hostPort}
	for _, a := range hostAddrs(t) {
		targets = append(targets, net.JoinHostPort(a, hostPort))
	}
	for _, a := range targets {
		mustBlock(t, sb, "tcp", a)
	}
	select {
	case h := <-hostHits:
		t.Fatalf("ESCAPE: the host's service got a connection from %s", h)
	case h := <-peerHits:
		t.Fatalf("ESCAPE: the private peer got a connection from %s", h)
	default:
	}
}

// outboundSandbox is newSandbox with NetworkOutbound. Rootless, pasta may
// lack /dev/net/tun: then the test is skipped; as root it must work.
func outboundSandbox(t *testing.T, opts ...lockbox.Option) *lockbox.Sandbox {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	opts = append([]lockbox.Option{lockbox.WithVolume(escapeProbe(t), "/probe", true),
		lockbox.WithNetwork(lockbox.NetworkOutbound)}, opts...)
	sb, err := lockbox.CreateSandbox(ctx, opts...)
	if errors.Is(err, lockbox.ErrUnsupported) && os.Geteuid() != 0 {
		t.Skipf("outbound networking unavailable here: %v", err)
	}
	if err != nil {
		t.Fatalf("CreateSandbox: %v", err)
	}
	t.Cleanup(func() { _ = sb.Remove(context.Background()) })
	return sb
}

func acceptAll(ln net.Listener, hits chan<- string) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		select {
		case hits <- c.RemoteAddr().String():
		default:
		}
		c.Close()
	}
}

// listenInNetns opens a TCP listener inside a named network namespace: a
// locked thread joins it, makes the socket, and is then thrown away.
func listenInNetns(t *testing.T, name string) net.Listener {
	t.Helper()
	type result struct {
		ln  net.Listener
		err error
	}
	ch := make(chan result, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread dies with us
		f, err := os.Open("/run/netns/" + name)
		if err != nil {
			ch <- result{nil, err}
			return
		}
		defer f.Close()
		const cloneNewnet = 0x40000000
		if _, _, e := syscall.RawSyscall(308 /* setns */, f.Fd(), cloneNewnet, 0); e != 0 {
			ch <- result{nil, e}
			return
		}
		ln, err := net.Listen("tcp4", "0.0.0.0:0")
		ch <- result{ln, err}
	}()
	r := <-ch
	if r.err != nil {
		t.Fatalf("listen in %s: %v", name, r.err)
	}
	return r.ln
}

// hostAddrs lists the host's non-loopback IPv4 addresses.
func hostAddrs(t *testing.T) []string {
	ifs, err := net.InterfaceAddrs()
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, a := range ifs {
		if n, ok := a.(*net.IPNet); ok && n.IP.To4() != nil && !n.IP.IsLoopback() {
			out = append(out, n.IP.String())
		}
	}
	return out
}

// Item 5: pasta goes with its sandbox, on Remove and when the helper is
// killed; the published port is free again.
func TestEscapeHostPastaLifetime(t *testing.T) {
	needEngine(t)
	ctx := context.Background()
	for _, how := range []string{"remove", "kill-helper"} {
		t.Run(how, func(t *testing.T) {
			port := freeTCPPort(t)
			sb := outboundSandbox(t, lockbox.WithPort(port, 8080))
			info, err := sb.Info(ctx)
			if err != nil {
				t.Fatal(err)
			}
			pasta := pastaOf(info.HelperPID)
			// Control: pasta is there and holds the port.
			if len(pasta) != 1 {
				out, _ := exec.Command("ps", "-eo", "pid,ppid,comm,args").CombinedOutput()
				t.Fatalf("control: helper %d has pasta children %v\n%s", info.HelperPID, pasta, out)
			}
			if portFree(port) {
				t.Fatalf("control: port %d is free while the sandbox runs", port)
			}
			if how == "remove" {
				if err := sb.Remove(ctx); err != nil {
					t.Fatal(err)
				}
			} else {
				syscall.Kill(info.HelperPID, syscall.SIGKILL)
			}
			// Polled: 20 s of room for a loaded machine; pasta that
			// outlives its sandbox stays for good.
			deadline := time.Now().Add(20 * time.Second)
			for time.Now().Before(deadline) && (isPasta(pasta[0]) || !portFree(port)) {
				time.Sleep(20 * time.Millisecond)
			}
			if isPasta(pasta[0]) {
				t.Fatalf("HOST CHANGED: pasta %d outlived its sandbox (%s)", pasta[0], how)
			}
			if !portFree(port) {
				t.Fatalf("HOST CHANGED: port %d still bound after %s", port, how)
			}
		})
	}
}

func freeTCPPort(t *testing.T) int {
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

func portFree(port int) bool {
	ln, err := net.Listen("tcp4", "127.0.0.1:"+strconv.Itoa(port))
	if err != nil {
		return false
	}
	ln.Close()
	return true
}

// pastaOf lists the pasta processes the helper ppid runs: children of its
// children (pasta runs under a watchdog the helper forks).
func pastaOf(ppid int) []int {
	var out []int
	for _, c := range children(ppid) {
		for _, g := range children(c) {
			if isPasta(g) {
				out = append(out, g)
			}
		}
	}
	return out
}

func children(ppid int) []int {
	var out []int
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			continue
		}
		s := string(b)
		f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
		if len(f) > 1 && f[1] == strconv.Itoa(ppid) {
			out = append(out, pid)
		}
	}
	return out
}

// isPasta: Debian's pasta re-executes itself as passt or passt.avx2.
func isPasta(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
	c := strings.TrimSpace(string(b))
	return err == nil && (c == "pasta" || strings.HasPrefix(c, "passt"))
}
