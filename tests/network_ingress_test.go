package tests

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"lockbox.dev/lockbox"
)

// Servers inside the sandbox (busybox nc, one process per connection):
// an echo, and two "bridges" that hand each accepted connection to a
// connection of their own to a lab host, one the policy denies (B) and
// one it allows (A, the control).
const ingressServers = `
nc -ll -p 8080 -e cat &
nc -ll -p 8081 -e nc %[1]s 8080 &
nc -ll -p 8082 -e nc %[2]s 80 &
wait`

// TestNetworkIngress: published ports on a sandbox with a network policy.
// The host's 127.0.0.1:<port> reaches the sandbox's server (a MiB each
// way, compared byte for byte); the port listens on loopback only (the
// host's other addresses refuse, while a control listener on them is
// reached); a host port already in use fails the create clearly; and the
// sandbox cannot use an accepted connection, or the gateway side of it,
// to reach anything the policy does not allow. Then the connection
// latency through it and through pasta's published port, same run.
func TestNetworkIngress(t *testing.T) {
	lab := newNetLab(t)
	checkLab(t, lab)
	ctx := context.Background()
	echo, deniedBridge, allowedBridge := freeTCPPort(t), freeTCPPort(t), freeTCPPort(t)
	policy := lockbox.NewNetworkPolicy(lockbox.Allow(lab.A.String()).Port(80))
	sb := lab.sandbox(t, lockbox.WithNetworkPolicy(policy),
		lockbox.WithPort(echo, 8080), lockbox.WithPort(deniedBridge, 8081), lockbox.WithPort(allowedBridge, 8082))
	info, err := sb.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"network_policy", "ports"} {
		if !slices.Contains(info.Enforced, f) {
			t.Fatalf("Info: %q not enforced: %v %v", f, info.Enforced, info.NotEnforced)
		}
	}
	srv := sb.CommandContext(ctx, "sh", "-c", fmt.Sprintf(ingressServers, lab.B, lab.A))
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Process.Kill(); srv.Wait() })

	t.Run("round trip", func(t *testing.T) {
		sent := make([]byte, 1<<20)
		rand.Read(sent)
		got := echoThrough(t, echo, sent)
		if !bytes.Equal(got, sent) {
			t.Fatalf("echo through 127.0.0.1:%d: %d bytes back of %d, equal prefix %d",
				echo, len(got), len(sent), commonPrefix(got, sent))
		}
		t.Logf("network_ingress: 1 MiB each way through 127.0.0.1:%d, identical", echo)
	})

	t.Run("loopback only", func(t *testing.T) {
		addrs := hostIPv4s(t)
		if len(addrs) == 0 {
			t.Skip("no non-loopback IPv4 address on this host")
		}
		control, err := net.Listen("tcp4", "0.0.0.0:0")
		if err != nil {
			t.Fatal(err)
		}
		defer control.Close()
		go func() {
			for {
				c, err := control.Accept()
				if err != nil {
					return
				}
				c.Close()
			}
		}()
		cport := control.Addr().(*net.TCPAddr).Port
		for _, a := range addrs {
			c, err := net.DialTimeout("tcp4", net.JoinHostPort(a, strconv.Itoa(cport)), 2*time.Second)
			if err != nil {
				t.Fatalf("control: a listener on every address is not reached at %s: %v", a, err)
			}
			c.Close()
			c, err = net.DialTimeout("tcp4", net.JoinHostPort(a, strconv.Itoa(echo)), 2*time.Second)
			if err == nil {
				c.Close()
				t.Fatalf("INGRESS: the published port answers on %s:%d, not only on loopback", a, echo)
			}
			t.Logf("network_ingress: %s:%d refused (%v); control listener reached there", a, echo, err)
		}
	})

	t.Run("host port in use", func(t *testing.T) {
		held, err := net.Listen("tcp4", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer held.Close()
		port := held.Addr().(*net.TCPAddr).Port
		cctx, cancel := context.WithTimeout(ctx, 60*time.Second)
		defer cancel()
		other, err := lockbox.CreateSandbox(cctx, lockbox.WithNetworkPolicy(policy), lockbox.WithPort(port, 8080))
		if err == nil {
			other.Remove(ctx)
			t.Fatalf("create with host port %d in use succeeded", port)
		}
		if !errors.Is(err, lockbox.ErrAlreadyExists) || !strings.Contains(err.Error(), "127.0.0.1:"+strconv.Itoa(port)) ||
			!strings.Contains(err.Error(), "in use") {
			t.Fatalf("create with host port %d in use: %v (want ErrAlreadyExists naming the port)", port, err)
		}
		t.Logf("network_ingress: port in use: %v", err)
	})

	t.Run("no way out through ingress", func(t *testing.T) {
		evs := collectEvents(t, ctx, sb)
		req := []byte("GET / HTTP/1.0\r\nHost: x\r\n\r\n")
		// Control: the bridge to an allowed host works, so a bridge that
		// got through would be seen.
		if got := string(echoThrough(t, allowedBridge, req)); !strings.Contains(got, "hello-from-") {
			t.Fatalf("control: the bridge to the allowed %s returned %q", lab.A, got)
		}
		got, err := exchange(deniedBridge, req)
		if strings.Contains(string(got), "hello-from-") {
			t.Fatalf("EGRESS: an accepted connection was bridged to the denied %s: %q", lab.B, got)
		}
		t.Logf("network_ingress: the bridge to the denied %s returned %q (%v)", lab.B, got, err)
		// The bridge did try: the policy refused it.
		evs.wait(t, "bridge to the denied host", func(ev lockbox.NetworkEvent) bool {
			return ev.IP.String() == lab.B.String() && ev.Port == 8080
		})
		// With a connection held open, the sandbox aims at the gateway
		// side of it (the port it sees as its peer) and at the published
		// port numbers on the gateway: nothing answers there.
		c, peer := holdIngress(t, sb, echo)
		defer c.Close()
		for _, p := range []int{peer, echo, 8080} {
			mustRefuse(t, sb, tcpRefused, "http", "10.0.2.2:"+strconv.Itoa(p), "x")
		}
		// The held connection still works: it was never disturbed.
		c.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Write([]byte("still\n")); err != nil {
			t.Fatal(err)
		}
		if line, err := bufio.NewReader(c).ReadString('\n'); err != nil || line != "still\n" {
			t.Fatalf("the held connection after the probes: %q %v", line, err)
		}
	})

	t.Run("latency", func(t *testing.T) {
		pastaPort := freeTCPPort(t)
		cctx, cancel := context.WithTimeout(ctx, 60*time.Second)
		defer cancel()
		out, err := lockbox.CreateSandbox(cctx, lockbox.WithNetwork(lockbox.NetworkOutbound), lockbox.WithPort(pastaPort, 8080))
		if err != nil {
			t.Skipf("no outbound sandbox to compare with: %v", err)
		}
		defer out.Remove(ctx)
		oi, _ := out.Info(ctx)
		if oi == nil || !slices.Contains(oi.Enforced, "network_outbound") {
			t.Skip("pasta is not running here: nothing to compare with")
		}
		osrv := out.CommandContext(ctx, "sh", "-c", "nc -ll -p 8080 -e cat")
		if err := osrv.Start(); err != nil {
			t.Fatal(err)
		}
		defer func() { osrv.Process.Kill(); osrv.Wait() }()
		echoThrough(t, pastaPort, []byte("warm\n"))
		const n = 100
		var viaPolicy, viaPasta []time.Duration
		for i := 0; i < n; i++ {
			viaPolicy = append(viaPolicy, firstByte(t, echo))
			viaPasta = append(viaPasta, firstByte(t, pastaPort))
		}
		t.Logf("network_ingress: connect + 1-byte echo, p50/p90 over %d (interleaved): forwarder %v/%v, pasta %v/%v",
			n, pct(viaPolicy, 50), pct(viaPolicy, 90), pct(viaPasta, 50), pct(viaPasta, 90))
	})
}

// echoThrough sends data through the host's 127.0.0.1:port and returns
// what came back, retrying while the sandbox's server starts (a reset
// before any byte).
func echoThrough(t *testing.T, port int, data []byte) []byte {
	t.Helper()
	var last error
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		got, err := exchange(port, data)
		if len(got) > 0 {
			return got
		}
		last = err
	}
	t.Fatalf("nothing back through 127.0.0.1:%d: %v", port, last)
	return nil
}

// exchange connects once, sends data, closes its sending side and returns
// everything that came back.
func exchange(port int, data []byte) ([]byte, error) {
	c, err := net.DialTimeout("tcp4", "127.0.0.1:"+strconv.Itoa(port), 2*time.Second)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(20 * time.Second))
	errc := make(chan error, 1)
	go func() {
		_, err := c.Write(data)
		if err == nil {
			err = c.(*net.TCPConn).CloseWrite()
		}
		errc <- err
	}()
	got, rerr := io.ReadAll(c)
	werr := <-errc
	if rerr != nil || werr != nil {
		return got, fmt.Errorf("read: %v, write: %v", rerr, werr)
	}
	return got, nil
}

// holdIngress opens a connection through the published echo port and
// returns it with the port the sandbox sees as its peer (the gateway's
// side), read from the sandbox's /proc/net/tcp{,6} (busybox nc listens on
// IPv6's any address, so an IPv4 peer shows as ::ffff:a.b.c.d there).
func holdIngress(t *testing.T, sb *lockbox.Sandbox, port int) (net.Conn, int) {
	t.Helper()
	c, err := net.DialTimeout("tcp4", "127.0.0.1:"+strconv.Itoa(port), 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write([]byte("held\n")); err != nil {
		t.Fatal(err)
	}
	if line, err := bufio.NewReader(c).ReadString('\n'); err != nil || line != "held\n" {
		t.Fatalf("held connection: %q %v", line, err)
	}
	res, err := sb.Shell(context.Background(), "cat /proc/net/tcp /proc/net/tcp6")
	if err != nil {
		t.Fatal(err)
	}
	// local 10.0.2.100:8080 (6402000A:1F90), remote 10.0.2.2 (0202000A),
	// state 01 (established); addresses are little-endian hex, IPv4 ones
	// in tcp6 prefixed with ::ffff:.
	for _, line := range strings.Split(string(res.Stdout), "\n") {
		f := strings.Fields(line)
		if len(f) < 4 || !strings.HasSuffix(f[1], "6402000A:1F90") || f[3] != "01" {
			continue
		}
		addr, port, ok := strings.Cut(f[2], ":")
		if !ok || !strings.HasSuffix(addr, "0202000A") {
			continue
		}
		p, err := strconv.ParseUint(port, 16, 16)
		if err == nil {
			t.Logf("network_ingress: the sandbox sees the held connection from 10.0.2.2:%d", p)
			return c, int(p)
		}
	}
	t.Fatalf("no established connection from the gateway to 8080 in the sandbox:\n%s", res.Stdout)
	return nil, 0
}

// firstByte is the time from dial to one byte echoed back.
func firstByte(t *testing.T, port int) time.Duration {
	t.Helper()
	start := time.Now()
	c, err := net.DialTimeout("tcp4", "127.0.0.1:"+strconv.Itoa(port), 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	b := []byte{'x'}
	if _, err := c.Write(b); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(c, b); err != nil {
		t.Fatalf("echo on %d: %v", port, err)
	}
	return time.Since(start)
}

func commonPrefix(a, b []byte) int {
	n := 0
	for n < len(a) && n < len(b) && a[n] == b[n] {
		n++
	}
	return n
}

// hostIPv4s lists the host's IPv4 addresses other than loopback.
func hostIPv4s(t *testing.T) []string {
	t.Helper()
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok && n.IP.To4() != nil && !n.IP.IsLoopback() {
			out = append(out, n.IP.String())
		}
	}
	return out
}
