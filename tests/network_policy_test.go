package tests

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"lockbox.dev/lockbox"
)

// fastRefusal: a refused connection or query must fail at once inside the
// sandbox (a reset, ECONNREFUSED, NXDOMAIN), never by a timeout. Under
// the probe's own 3 s timeout, with room for a loaded machine (was 1 s).
const fastRefusal = 2000 // ms

// labSandbox makes a sandbox with the network probe at /probe and the
// lab's CA at /lab.
func (l *netLab) sandbox(t *testing.T, opts ...lockbox.Option) *lockbox.Sandbox {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	opts = append([]lockbox.Option{
		lockbox.WithVolume(staticProbe(t, "netprobe"), "/probe", true),
		lockbox.WithVolume(l.Dir, "/lab", true),
		lockbox.WithEnv("NETPROBE_CA", "/lab/ca.pem"),
	}, opts...)
	sb, err := lockbox.CreateSandbox(ctx, opts...)
	if err != nil {
		t.Fatalf("CreateSandbox: %v", err)
	}
	t.Cleanup(func() { _ = sb.Remove(context.Background()) })
	return sb
}

// netProbe runs cmd/netprobe inside sb: its verdict ("OK ...", "RESET",
// "NXDOMAIN", ...) and how long it took.
func netProbe(t *testing.T, sb *lockbox.Sandbox, args ...string) (string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	res, err := sb.ExecArgs(ctx, append([]string{"/probe/netprobe"}, args...))
	if err != nil {
		t.Fatalf("netprobe %v: %v", args, err)
	}
	line := strings.TrimSpace(string(res.Stdout))
	i := strings.LastIndex(line, " ms=")
	if i < 0 {
		t.Fatalf("netprobe %v: %q (exit %d) %s", args, line, res.ExitCode, res.Stderr)
	}
	ms, _ := strconv.Atoi(line[i+4:])
	t.Logf("netprobe %s -> %s (%d ms)", strings.Join(args, " "), line[:i], ms)
	return line[:i], ms
}

// mustReach asserts the probe got through and its answer holds want.
func mustReach(t *testing.T, sb *lockbox.Sandbox, want string, args ...string) {
	t.Helper()
	got, _ := netProbe(t, sb, args...)
	if !strings.HasPrefix(got, "OK") || !strings.Contains(got, want) {
		t.Fatalf("control: netprobe %v: %q, want OK with %q", args, got, want)
	}
}

// mustRefuse asserts the probe was refused the way one of want says, fast.
func mustRefuse(t *testing.T, sb *lockbox.Sandbox, want []string, args ...string) {
	t.Helper()
	got, ms := netProbe(t, sb, args...)
	for _, w := range want {
		if strings.HasPrefix(got, w) {
			if ms > fastRefusal {
				t.Errorf("netprobe %v: refused after %d ms (a hang, not a refusal)", args, ms)
			}
			return
		}
	}
	t.Fatalf("EGRESS: netprobe %v: %q, want one of %v", args, got, want)
}

var (
	tcpRefused = []string{"RESET", "REFUSED"}
	udpRefused = []string{"REFUSED"}
)

// eventLog keeps what a NetworkEvents channel delivered.
type eventLog struct {
	mu   sync.Mutex
	evs  []lockbox.NetworkEvent
	done chan struct{}
}

func collectEvents(t *testing.T, ctx context.Context, sb *lockbox.Sandbox) *eventLog {
	t.Helper()
	ch, err := sb.NetworkEvents(ctx)
	if err != nil {
		t.Fatalf("NetworkEvents: %v", err)
	}
	l := &eventLog{done: make(chan struct{})}
	go func() {
		defer close(l.done)
		for ev := range ch {
			l.mu.Lock()
			l.evs = append(l.evs, ev)
			l.mu.Unlock()
		}
	}()
	return l
}

// wait returns the first event match accepts, waiting up to 30 s for it
// (a loaded machine may be slow to deliver; a missing event still fails).
func (l *eventLog) wait(t *testing.T, what string, match func(lockbox.NetworkEvent) bool) lockbox.NetworkEvent {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		l.mu.Lock()
		for _, ev := range l.evs {
			if match(ev) {
				l.mu.Unlock()
				t.Logf("event %s: %+v", what, ev)
				return ev
			}
		}
		n := len(l.evs)
		l.mu.Unlock()
		if time.Now().After(deadline) {
			t.Fatalf("no event %s among %d received", what, n)
		}
	}
}

func (l *eventLog) count(match func(lockbox.NetworkEvent) bool) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, ev := range l.evs {
		if match(ev) {
			n++
		}
	}
	return n
}

// The lab itself works from the host: every refusal below is the policy's
// doing, not a missing server.
func checkLab(t *testing.T, lab *netLab) {
	t.Helper()
	c := http.Client{Timeout: 3 * time.Second}
	urls := []string{"http://" + lab.A.String() + "/", "http://" + lab.B.String() + ":8080/"}
	if lab.V6.IsValid() {
		urls = append(urls, "http://["+lab.V6.String()+"]/")
	}
	for _, u := range urls {
		r, err := c.Get(u)
		if err != nil {
			t.Fatalf("lab control: %s from the host: %v", u, err)
		}
		b, _ := io.ReadAll(r.Body)
		r.Body.Close()
		if !strings.HasPrefix(string(b), "hello-from-") {
			t.Fatalf("lab control: %s: %q", u, b)
		}
	}
}

// TestNetworkPolicy: rules by domain, wildcard, CIDR, port and protocol
// on a real sandbox against the lab's hosts; NXDOMAIN for denied names;
// no DNS tunnelling; SNI checked; IPv6 no way around; programs that
// ignore proxy settings; every refusal an event with its rule; live
// SetNetworkPolicy. Each refusal has a control: the same path allowed.
func TestNetworkPolicy(t *testing.T) {
	lab := newNetLab(t)
	checkLab(t, lab)
	A, B := lab.A.String(), lab.B.String()
	api, files := "api."+labZone, "files.cdn."+labZone
	policy := lockbox.NewNetworkPolicy(
		lockbox.Allow(api).Port(80, 443),
		lockbox.Allow("*.cdn."+labZone).Port(8080),
		lockbox.Deny("deny.cdn."+labZone),
		lockbox.Allow(B).Port(80).TCP(),
		lockbox.Allow(A).Port(7).UDP(),
	)
	sb := lab.sandbox(t, lockbox.WithNetworkPolicy(policy),
		// Proxy settings a program may ignore: nothing listens there, and
		// the policy path does not depend on them.
		lockbox.WithEnv("http_proxy", "http://10.0.2.2:3128"),
		lockbox.WithEnv("https_proxy", "http://10.0.2.2:3128"))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	events := collectEvents(t, ctx, sb)

	t.Run("Domain", func(t *testing.T) {
		mustReach(t, sb, A, "dns", api)
		mustReach(t, sb, "hello-from-"+A+":80", "http", A+":80", api)
		mustRefuse(t, sb, []string{"NXDOMAIN"}, "dns", "other."+labZone)
		ev := events.wait(t, "dns other", func(e lockbox.NetworkEvent) bool {
			return e.Kind == lockbox.EventDNS && e.Name == "other."+labZone
		})
		if ev.Rule != "default deny" || ev.Time.IsZero() || time.Since(ev.Time) > time.Minute {
			t.Errorf("dns event: %+v", ev)
		}
	})
	t.Run("Wildcard", func(t *testing.T) {
		mustReach(t, sb, A, "dns", files)
		mustReach(t, sb, "hello-from-"+A+":8080", "http", A+":8080", files)
		// "*.cdn" is strictly below cdn: not cdn itself.
		mustRefuse(t, sb, []string{"NXDOMAIN"}, "dns", "cdn."+labZone)
		// Deny wins over the wildcard allow, and the event names it.
		mustRefuse(t, sb, []string{"NXDOMAIN"}, "dns", "deny.cdn."+labZone)
		ev := events.wait(t, "dns deny.cdn", func(e lockbox.NetworkEvent) bool {
			return e.Kind == lockbox.EventDNS && e.Name == "deny.cdn."+labZone
		})
		if !strings.Contains(ev.Rule, `"deny"`) || !strings.Contains(ev.Rule, "deny.cdn."+labZone) {
			t.Errorf("the event names %q, not the deny rule", ev.Rule)
		}
	})
	t.Run("CIDRAndPort", func(t *testing.T) {
		mustReach(t, sb, "hello-from-"+B+":80", "http", B+":80", "b")
		mustRefuse(t, sb, tcpRefused, "http", B+":8080", "b")
		events.wait(t, "connect B:8080", func(e lockbox.NetworkEvent) bool {
			return e.Kind == lockbox.EventConnect && e.IP == lab.B && e.Port == 8080 && e.Protocol == lockbox.TCP
		})
	})
	t.Run("Protocol", func(t *testing.T) {
		mustReach(t, sb, "echo:ping", "udp", A+":7", "ping")
		// B:80 is allowed for TCP only, and a UDP echo listens there.
		mustRefuse(t, sb, udpRefused, "udp", B+":80", "ping")
		// Another port of a host allowed for UDP.
		mustRefuse(t, sb, udpRefused, "udp", A+":9", "ping")
		events.wait(t, "connect udp A:9", func(e lockbox.NetworkEvent) bool {
			return e.Kind == lockbox.EventConnect && e.IP == lab.A && e.Port == 9 && e.Protocol == lockbox.UDP
		})
	})
	t.Run("SNI", func(t *testing.T) {
		mustReach(t, sb, "hello-from-"+A+":443", "tls", A+":443", api, api)
		// The same allowed address and port, another name on it.
		mustRefuse(t, sb, tcpRefused, "tls", A+":443", "evil."+labZone, "evil."+labZone)
		events.wait(t, "sni evil", func(e lockbox.NetworkEvent) bool {
			return e.Kind == lockbox.EventSNI && e.Name == "evil."+labZone
		})
	})
	t.Run("DNSTunnel", func(t *testing.T) {
		// Control: the same probe below an allowed zone does reach the
		// lab's server (which then says NXDOMAIN itself).
		long := func(names []string) (n int) {
			for _, q := range names {
				if len(q) > 200 {
					n++
				}
			}
			return n
		}
		got, _ := netProbe(t, sb, "tunnel", "cdn."+labZone, "2")
		if !strings.HasPrefix(got, "NXDOMAIN") || long(lab.asked(".cdn."+labZone)) != 2 {
			t.Fatalf("control: random names below an allowed zone: %q, the server saw %v", got, lab.asked(".cdn."+labZone))
		}
		if len(lab.asked(api)) == 0 {
			t.Fatalf("control: the server never saw the allowed %s", api)
		}
		before := events.count(func(e lockbox.NetworkEvent) bool { return e.Kind == lockbox.EventDNS })
		got, ms := netProbe(t, sb, "tunnel", "exfil."+labZone, "40")
		if got != "NXDOMAIN all=40" || ms > 40*fastRefusal/4 {
			t.Fatalf("tunnel: %q in %d ms", got, ms)
		}
		if leaked := lab.asked("exfil." + labZone); len(leaked) > 0 {
			t.Fatalf("EGRESS: %d names of a denied zone reached the DNS server: %v", len(leaked), leaked[0])
		}
		for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(50 * time.Millisecond) {
			n := events.count(func(e lockbox.NetworkEvent) bool { return e.Kind == lockbox.EventDNS }) - before
			if n >= 40 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%d dns events for 40 denied queries", n)
			}
		}
	})
	t.Run("IPv6", func(t *testing.T) {
		got, _ := netProbe(t, sb, "addrs")
		t.Logf("sandbox addresses: %s", got)
		if !lab.V6.IsValid() {
			t.Skip("this host has no IPv6 to try")
		}
		v6 := "[" + lab.V6.String() + "]"
		// checkLab reached the same server over IPv6 from the host.
		mustRefuse(t, sb, append(tcpRefused, "UNREACHABLE"), "http", v6+":80", "v6")
		mustRefuse(t, sb, append(udpRefused, "UNREACHABLE"), "udp6raw", v6+":7")
	})
	t.Run("NoProxyPrograms", func(t *testing.T) {
		// busybox's wget with its proxy support off, and nc: plain
		// programs on plain sockets take the same path.
		res, err := sb.Exec(ctx, "sh", "-c", "wget -Y off -q -O- http://"+api+"/; echo; printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc "+B+" 80")
		if err != nil || !strings.Contains(string(res.Stdout), "hello-from-"+A+":80") || !strings.Contains(string(res.Stdout), "hello-from-"+B+":80") {
			t.Fatalf("control: wget/nc through allowed rules: %v %q %q", err, res.Stdout, res.Stderr)
		}
		res, err = sb.Exec(ctx, "sh", "-c", "printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 3 "+B+" 8080; echo rc=$?")
		if err != nil || strings.Contains(string(res.Stdout), "hello-from") {
			t.Fatalf("EGRESS: nc to a denied port: %v %q", err, res.Stdout)
		}
	})
	t.Run("PythonSocket", func(t *testing.T) {
		if _, err := os.Stat(filepath.Join(os.Getenv("LOCKBOX_IMAGES"), "python")); err != nil {
			t.Skip("no python image in LOCKBOX_IMAGES")
		}
		py := lab.sandbox(t, lockbox.WithImage("python"), lockbox.WithNetworkPolicy(policy))
		script := `import socket, sys
def get(port):
    try:
        s = socket.create_connection((sys.argv[1], port), timeout=3)
        s.sendall(b"GET / HTTP/1.0\r\n\r\n")
        data = b"".join(iter(lambda: s.recv(4096), b""))
        return data.decode(errors="replace").split("\r\n\r\n")[-1]
    except OSError as e:
        return type(e).__name__
print(get(80), get(8080))`
		res, err := py.Exec(ctx, "python3", "-c", script, B)
		if err != nil {
			t.Fatal(err)
		}
		out := strings.Fields(string(res.Stdout))
		t.Logf("python: %q %s", res.Stdout, res.Stderr)
		if len(out) != 2 || out[0] != "hello-from-"+B+":80" {
			t.Fatalf("control: python socket to an allowed address: %q %s", res.Stdout, res.Stderr)
		}
		if strings.HasPrefix(out[1], "hello") || (out[1] != "ConnectionResetError" && out[1] != "ConnectionRefusedError") {
			t.Fatalf("EGRESS: python socket to a denied port: %q", out[1])
		}
	})
	t.Run("LiveChange", func(t *testing.T) {
		wider := lockbox.NewNetworkPolicy(slices.Concat(policy.Rules, []lockbox.NetworkRule{
			lockbox.Allow(B).Port(8080),
			lockbox.Allow(B).Port(80).UDP(),
			lockbox.Allow(A).Port(9).UDP(),
		})...)
		if err := sb.SetNetworkPolicy(ctx, wider); err != nil {
			t.Fatal(err)
		}
		// Each refused path above, now allowed, goes through at once.
		mustReach(t, sb, "hello-from-"+B+":8080", "http", B+":8080", "b")
		mustReach(t, sb, "echo:ping", "udp", B+":80", "ping")
		mustReach(t, sb, "echo:ping", "udp", A+":9", "ping")
		// And taking the API away refuses its name at once.
		narrower := lockbox.NewNetworkPolicy(lockbox.Allow(B).Port(80).TCP())
		if err := sb.SetNetworkPolicy(ctx, narrower); err != nil {
			t.Fatal(err)
		}
		mustRefuse(t, sb, []string{"NXDOMAIN"}, "dns", api)
		mustReach(t, sb, "hello-from-"+B+":80", "http", B+":80", "b")
		// An invalid policy is refused before it is sent; the old one stays.
		if err := sb.SetNetworkPolicy(ctx, lockbox.NewNetworkPolicy(lockbox.Allow("bad..name"))); !errors.Is(err, lockbox.ErrInvalidArgument) {
			t.Fatalf("invalid policy: %v", err)
		}
		mustReach(t, sb, "hello-from-"+B+":80", "http", B+":80", "b")
	})
	t.Run("Metrics", func(t *testing.T) {
		m, err := sb.Metrics(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if m.Network == nil {
			t.Fatal("Metrics().Network is nil for a sandbox with a policy")
		}
		n := m.Network
		b, _ := json.Marshal(n)
		t.Logf("network metrics: %s", b)
		if n.DNSDenied < 44 || n.DNSAnswered < 3 || n.ConnectionsDenied < 4 || n.ConnectionsAllowed < 6 {
			t.Fatalf("counters below what this test caused: %s", b)
		}
	})
}

// A sandbox without a policy: no events, no policy to change, no network
// counters; the same calls succeed on a sandbox with one (TestNetworkPolicy).
func TestNetworkPolicyNeedsPolicySandbox(t *testing.T) {
	needEngine(t)
	ctx := context.Background()
	sb := newSandbox(t)
	if _, err := sb.NetworkEvents(ctx); !errors.Is(err, lockbox.ErrInvalidArgument) {
		t.Errorf("NetworkEvents without a policy: %v", err)
	}
	if err := sb.SetNetworkPolicy(ctx, lockbox.NewNetworkPolicy()); !errors.Is(err, lockbox.ErrInvalidArgument) {
		t.Errorf("SetNetworkPolicy without a policy: %v", err)
	}
	if m, err := sb.Metrics(ctx); err == nil && m.Network != nil {
		t.Errorf("Metrics().Network without a policy: %+v", m.Network)
	}
	_, err := lockbox.CreateSandbox(ctx, lockbox.WithNetwork(lockbox.NetworkOutbound),
		lockbox.WithNetworkPolicy(lockbox.NewNetworkPolicy(lockbox.AllowPreset(lockbox.PublicInternet))))
	if !errors.Is(err, lockbox.ErrInvalidArgument) {
		t.Errorf("NetworkOutbound and a policy together: %v", err)
	}
}

// The events goroutine ends with its context and with the sandbox's
// Close, whichever comes first, even with nobody reading the channel.
func TestNetworkEventsEnd(t *testing.T) {
	lab := newNetLab(t)
	sb := lab.sandbox(t, lockbox.WithNetworkPolicy(lockbox.NewNetworkPolicy(lockbox.Allow("api."+labZone))))
	if _, err := sb.Info(context.Background()); err != nil {
		t.Fatal(err)
	}
	base := runtime.NumGoroutine()
	ctx, cancel := context.WithCancel(context.Background())
	byCtx, err := sb.NetworkEvents(ctx)
	if err != nil {
		t.Fatal(err)
	}
	byClose, err := sb.NetworkEvents(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	// Control: two goroutines per open channel (the poll and its watch on
	// the sandbox's handle), so a leak would show in the count.
	for deadline := time.Now().Add(20 * time.Second); runtime.NumGoroutine() < base+4; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("control: %d goroutines with two channels open, %d before", runtime.NumGoroutine(), base)
		}
	}
	// A denial nobody reads yet: the pump must not be stuck on it.
	netProbe(t, sb, "dns", "nope."+labZone)
	ended := func(ch <-chan lockbox.NetworkEvent, what string) {
		t.Helper()
		deadline := time.After(20 * time.Second)
		for {
			select {
			case _, ok := <-ch:
				if !ok {
					return
				}
			case <-deadline:
				t.Fatalf("the events channel did not close after %s", what)
			}
		}
	}
	for quiet := time.After(300 * time.Millisecond); quiet != nil; {
		select {
		case _, ok := <-byClose:
			if !ok {
				t.Fatal("control: a channel closed before its context or sandbox ended")
			}
		case <-quiet:
			quiet = nil
		}
	}
	cancel()
	ended(byCtx, "its context was canceled")
	if err := sb.Close(); err != nil {
		t.Fatal(err)
	}
	ended(byClose, "the sandbox was closed")
	// And every goroutine the two channels used is gone.
	for deadline := time.Now().Add(20 * time.Second); runtime.NumGoroutine() > base; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("goroutines: %d before the channels, %d after both ended", base, runtime.NumGoroutine())
		}
	}
}

// A reader that stops reading loses the oldest events, never the
// sandbox's time or the host's memory, and is told how many: every
// denial is either delivered or counted in a later event's Dropped, and
// the drops match Metrics().Network.EventsDropped. The control is the
// same count adding up with drops at zero for a burst that fits.
func TestNetworkEventsSlowReader(t *testing.T) {
	lab := newNetLab(t)
	sb := lab.sandbox(t, lockbox.WithNetworkPolicy(lockbox.NewNetworkPolicy(lockbox.Allow("api."+labZone))))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ch, err := sb.NetworkEvents(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// drain reads until want denials are accounted for (delivered or
	// dropped; a loaded machine may pause between them for a while), then
	// a quiet second more, so extra events would still show.
	drain := func(want uint64) (got, dropped uint64) {
		deadline := time.After(60 * time.Second)
		for got+dropped < want {
			select {
			case ev := <-ch:
				got++
				dropped += ev.Dropped
			case <-deadline:
				return got, dropped
			}
		}
		for {
			select {
			case ev := <-ch:
				got++
				dropped += ev.Dropped
			case <-time.After(time.Second):
				return got, dropped
			}
		}
	}
	burst := func(n int) {
		t.Helper()
		if got, _ := netProbe(t, sb, "tunnel", "exfil."+labZone, strconv.Itoa(n)); got != "NXDOMAIN all="+strconv.Itoa(n) {
			t.Fatalf("burst: %s", got)
		}
	}
	burst(100)
	if got, dropped := drain(100); got != 100 || dropped != 0 {
		t.Fatalf("control: 100 denials, %d delivered, %d dropped", got, dropped)
	}
	const n = 1500
	burst(n) // nobody reads meanwhile
	got, dropped := drain(n)
	m, err := sb.Metrics(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%d denials: %d delivered, %d dropped; metrics: %+v", n, got, dropped, *m.Network)
	if got+dropped != n || dropped == 0 || dropped != m.Network.EventsDropped {
		t.Fatalf("%d denials: %d delivered + %d dropped (engine counted %d dropped)", n, got, dropped, m.Network.EventsDropped)
	}
}
