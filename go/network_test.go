package lockbox

import (
	"context"
	"io"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"
)

// hostIPv4 is a non-loopback address of this machine, or "".
func hostIPv4() string {
	addrs, _ := net.InterfaceAddrs()
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok && !n.IP.IsLoopback() && n.IP.To4() != nil {
			return n.IP.String()
		}
	}
	return ""
}

func freePort(t *testing.T) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func serveHello(t *testing.T, addr string) net.Listener {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Write([]byte("hello from host\n"))
			c.Close()
		}
	}()
	t.Cleanup(func() { ln.Close() })
	return ln
}

func TestNetworkOutboundAndPublishedPort(t *testing.T) {
	ctx := context.Background()
	hostPort := freePort(t)
	sb := newSandbox(t, WithNetwork(NetworkOutbound), WithPort(hostPort, 8080))
	info, err := sb.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if reason, ok := notEnforced(info, "network_outbound"); ok {
		t.Skipf("outbound networking unavailable here: %s", reason)
	}

	// The host's own external address is closed like its loopback (the
	// outbound filter; tests/escape_host_test.go shows a public peer is
	// reached through the same path).
	if ip := hostIPv4(); ip != "" {
		ext := serveHello(t, ip+":0")
		port := strconv.Itoa(ext.Addr().(*net.TCPAddr).Port)
		res, err := sb.Shell(ctx, "echo | timeout 3 nc "+ip+" "+port)
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(string(res.Stdout), "hello from host") {
			t.Fatalf("sandbox reached the host's own address %s", ip)
		}
	}
	// The host's loopback stays private even with outbound access.
	lo := serveHello(t, "127.0.0.1:0")
	loPort := strconv.Itoa(lo.Addr().(*net.TCPAddr).Port)
	for _, h := range []string{"127.0.0.1", "10.0.2.2"} {
		res, _ := sb.Shell(ctx, "echo | timeout 3 nc "+h+" "+loPort)
		if strings.Contains(string(res.Stdout), "hello from host") {
			t.Fatalf("sandbox reached the host's loopback service via %s", h)
		}
	}

	// Published port: the host's 127.0.0.1:hostPort reaches the sandbox's 8080.
	cmd := sb.CommandContext(ctx, "sh", "-c", "echo served | nc -l -p 8080")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	// Polled until nc listens inside, with a deadline a loaded machine
	// cannot run into (it was 50 tries, ~2.5 s).
	var got []byte
	for deadline := time.Now().Add(30 * time.Second); string(got) != "served\n" && time.Now().Before(deadline); {
		c, err := net.DialTimeout("tcp", "127.0.0.1:"+strconv.Itoa(hostPort), time.Second)
		if err == nil {
			got, _ = io.ReadAll(c)
			c.Close()
		}
		if string(got) != "served\n" {
			time.Sleep(50 * time.Millisecond)
		}
	}
	if string(got) != "served\n" {
		t.Fatalf("published port returned %q", got)
	}
}

func notEnforced(info *SandboxInfo, feature string) (string, bool) {
	for _, n := range info.NotEnforced {
		if n.Feature == feature {
			return n.Reason, true
		}
	}
	return "", false
}
