package tests

// The microVM backend's network (docs/microvm.md, "Network"): the same
// forwarder and policy as a native sandbox's, fed by the guest's
// virtio-net device. One VM boot serves every check below.

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"lockbox.dev/lockbox"
)

// hostIPv4 is an address of one of the host's own interfaces (not
// loopback, not the lab's test hosts): the forwarder must keep a VM off
// it unless a rule names it.
func hostIPv4(t *testing.T, lab *netLab) string {
	t.Helper()
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range addrs {
		ipn, ok := a.(*net.IPNet)
		if !ok || ipn.IP.To4() == nil || ipn.IP.IsLoopback() {
			continue
		}
		if ip := ipn.IP.String(); ip != lab.A.String() && ip != lab.B.String() && ip != lab.DNS.String() {
			return ip
		}
	}
	t.Skip("this host has no IPv4 address besides loopback")
	return ""
}

// hostService listens on every host address: a service a VM reaches only
// through a rule that names the host.
func hostService(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp4", "0.0.0.0:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{ReadHeaderTimeout: 5 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "host-service")
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().(*net.TCPAddr).Port
}

func vmNetSandbox(t *testing.T, lab *netLab, opts ...lockbox.Option) *lockbox.Sandbox {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	opts = append([]lockbox.Option{
		lockbox.WithIsolation(lockbox.IsolationMicroVM),
		lockbox.WithMemory(128),
		lockbox.WithVolume(staticProbe(t, "netprobe"), "/probe", true),
		lockbox.WithVolume(lab.Dir, "/lab", true),
		lockbox.WithEnv("NETPROBE_CA", "/lab/ca.pem"),
	}, opts...)
	sb, err := lockbox.CreateSandbox(ctx, opts...)
	if err != nil {
		t.Fatalf("CreateSandbox (microvm): %v", err)
	}
	t.Cleanup(func() { _ = sb.Remove(context.Background()) })
	return sb
}

func TestMicroVMNetwork(t *testing.T) {
	if r := vmSkipReason(); r != "" {
		t.Skip(r)
	}
	lab := newNetLab(t)
	checkLab(t, lab)
	A, B := lab.A.String(), lab.B.String()
	api := "api." + labZone
	hostIP := hostIPv4(t, lab)
	port := hostService(t)
	// Control for the host check: the service answers at that address.
	if r, err := (&http.Client{Timeout: 3 * time.Second}).Get(fmt.Sprintf("http://%s:%d/", hostIP, port)); err != nil {
		t.Fatalf("control: the host service at %s:%d: %v", hostIP, port, err)
	} else {
		r.Body.Close()
	}
	real := "sk-real-" + randHex(16)
	policy := lockbox.NewNetworkPolicy(
		lockbox.Allow(api).Port(80, 443),
		lockbox.Allow(B).Port(80).TCP(),
	)
	// Every public address on the host service's port: the host's own
	// addresses are not public, so this must not open them. (Set after the
	// name checks: with a /0 rule every name may resolve.)
	public := lockbox.NewNetworkPolicy(slices.Concat(policy.Rules, []lockbox.NetworkRule{
		lockbox.Allow("0.0.0.0/0").Port(uint16(port)),
	})...)
	published := freePort(t)
	t0 := time.Now()
	sb := vmNetSandbox(t, lab, lockbox.WithNetworkPolicy(policy), lockbox.WithSecret("API_KEY", real, api),
		lockbox.WithPort(published, 8000))
	t.Logf("VM with network up in %v", time.Since(t0))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	events := collectEvents(t, ctx, sb)

	t.Run("Info", func(t *testing.T) {
		info, err := sb.Info(ctx)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := json.Marshal(info)
		if info.Backend.Kind != "microvm" || !slices.Contains(info.Enforced, "network_forwarder_limits") ||
			!slices.Contains(info.Enforced, "ports") {
			t.Fatalf("Info: %s", b)
		}
	})
	t.Run("AllowedHost", func(t *testing.T) {
		mustReach(t, sb, A, "dns", api)
		mustReach(t, sb, "hello-from-"+A+":80", "http", A+":80", api)
		mustReach(t, sb, "hello-from-"+B+":80", "http", B+":80", "b")
		// A plain program (busybox wget) through the guest's resolv.conf.
		res, err := sb.Exec(ctx, "sh", "-c", "cat /etc/resolv.conf; wget -Y off -q -O- http://"+api+"/")
		if err != nil || !strings.Contains(string(res.Stdout), "nameserver 10.0.2.2") ||
			!strings.Contains(string(res.Stdout), "hello-from-"+A+":80") {
			t.Fatalf("wget by name inside the VM: %v %q %q", err, res.Stdout, res.Stderr)
		}
	})
	t.Run("InterfaceLocked", func(t *testing.T) {
		// Guest root without CAP_NET_ADMIN: the address, route and link
		// stay as init set them (the reach afterwards is the check that
		// nothing changed; "ip route" reading the route is the control
		// that the tool works here).
		res, err := sb.Exec(ctx, "sh", "-c", "ip route del default; ip addr add 10.0.2.50/24 dev eth0; ip link set eth0 down; ip route; cat /proc/sys/net/ipv6/conf/eth0/disable_ipv6")
		if err != nil {
			t.Fatal(err)
		}
		out := string(res.Stdout) + string(res.Stderr)
		if strings.Count(out, "ermitted") < 3 || !strings.Contains(out, "default via 10.0.2.2") || !strings.HasSuffix(strings.TrimSpace(string(res.Stdout)), "1") {
			t.Fatalf("the guest's interface from a workload: %q", out)
		}
		mustReach(t, sb, "hello-from-"+B+":80", "http", B+":80", "b")
	})
	t.Run("PublishedPort", func(t *testing.T) {
		// busybox httpd in the guest serving /lab; the host reaches it on
		// 127.0.0.1 only.
		if _, err := sb.Exec(ctx, "httpd", "-p", "8000", "-h", "/lab"); err != nil {
			t.Fatal(err)
		}
		want, _ := os.ReadFile(lab.CAFile)
		c := &http.Client{Timeout: 5 * time.Second}
		url := fmt.Sprintf("http://127.0.0.1:%d/ca.pem", published)
		for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(200 * time.Millisecond) {
			r, err := c.Get(url)
			if err == nil {
				got, _ := io.ReadAll(r.Body)
				r.Body.Close()
				if string(got) == string(want) {
					break
				}
				err = fmt.Errorf("status %d, %d bytes", r.StatusCode, len(got))
			}
			if time.Now().After(deadline) {
				t.Fatalf("the guest's server through 127.0.0.1:%d: %v", published, err)
			}
		}
		if cn, err := net.DialTimeout("tcp", fmt.Sprintf("%s:%d", hostIP, published), 3*time.Second); err == nil {
			cn.Close()
			t.Fatalf("the published port answers on %s, not only on loopback", hostIP)
		}
	})
	t.Run("DeniedPort", func(t *testing.T) {
		mustRefuse(t, sb, tcpRefused, "http", B+":8080", "b")
		events.wait(t, "connect B:8080", func(e lockbox.NetworkEvent) bool {
			return e.Kind == lockbox.EventConnect && e.IP == lab.B && e.Port == 8080 && e.Protocol == lockbox.TCP
		})
	})
	t.Run("DeniedName", func(t *testing.T) {
		mustRefuse(t, sb, []string{"NXDOMAIN"}, "dns", "other."+labZone)
		events.wait(t, "dns other", func(e lockbox.NetworkEvent) bool {
			return e.Kind == lockbox.EventDNS && e.Name == "other."+labZone
		})
		if q := lab.asked("other." + labZone); len(q) > 0 {
			t.Fatalf("EGRESS: a denied name reached the DNS server: %v", q)
		}
	})
	hostURL := fmt.Sprintf("%s:%d", hostIP, port)
	t.Run("HostAddresses", func(t *testing.T) {
		if err := sb.SetNetworkPolicy(ctx, public); err != nil {
			t.Fatal(err)
		}
		// The host's address on an allowed port, and the gateway itself.
		mustRefuse(t, sb, tcpRefused, "http", hostURL, "host")
		mustRefuse(t, sb, tcpRefused, "http", "10.0.2.2:"+strconv.Itoa(port), "gw")
		events.wait(t, "connect host", func(e lockbox.NetworkEvent) bool {
			return e.Kind == lockbox.EventConnect && e.IP.String() == hostIP && int(e.Port) == port
		})
	})
	t.Run("Secret", func(t *testing.T) {
		// TLS needs the guest's clock (no RTC: set from the host at boot).
		res, err := sb.Exec(ctx, "date", "+%s")
		if err != nil {
			t.Fatal(err)
		}
		if g, _ := strconv.ParseInt(strings.TrimSpace(string(res.Stdout)), 10, 64); g < time.Now().Add(-10*time.Minute).Unix() || g > time.Now().Add(10*time.Minute).Unix() {
			t.Fatalf("the guest's clock says %q, the host's %d", res.Stdout, time.Now().Unix())
		}
		res, err = sb.Exec(ctx, "sh", "-c", `printf %s "$API_KEY"`)
		if err != nil {
			t.Fatal(err)
		}
		placeholder := string(res.Stdout)
		if !placeholderRE.MatchString(placeholder) {
			t.Fatalf("$API_KEY inside the VM is %q, want a placeholder", placeholder)
		}
		got, _ := netProbe(t, sb, "tls", A+":443", api, api, "Authorization: Bearer $API_KEY")
		if !strings.HasPrefix(got, "OK") || strings.Contains(got, "lockbox_network_test_CA") {
			t.Fatalf("TLS to the secret's host through the per-sandbox CA: %q", got)
		}
		if a := lastAuth(lab, api); a != "Bearer "+real {
			t.Fatalf("%s saw Authorization %q, want the real value", api, a)
		}
		if got, _ := netProbe(t, sb, "scan", hexReversed(real)); !strings.HasPrefix(got, "CLEAN") {
			t.Fatalf("LEAK: the real value is inside the VM: %s", got)
		}
	})
	t.Run("LiveChange", func(t *testing.T) {
		wider := lockbox.NewNetworkPolicy(slices.Concat(public.Rules, []lockbox.NetworkRule{
			lockbox.Allow(B).Port(8080),
			// A CIDR rule that names the host opens it: the control that
			// the refusal above was the policy's, and that the probe sees
			// a success at that address.
			lockbox.Allow(hostIP + "/32").Port(uint16(port)),
		})...)
		if err := sb.SetNetworkPolicy(ctx, wider); err != nil {
			t.Fatal(err)
		}
		mustReach(t, sb, "hello-from-"+B+":8080", "http", B+":8080", "b")
		mustReach(t, sb, "host-service", "http", hostURL, "host")
		narrower := lockbox.NewNetworkPolicy(lockbox.Allow(B).Port(80).TCP())
		if err := sb.SetNetworkPolicy(ctx, narrower); err != nil {
			t.Fatal(err)
		}
		mustRefuse(t, sb, []string{"NXDOMAIN"}, "dns", "www."+labZone)
		mustRefuse(t, sb, tcpRefused, "http", B+":8080", "b")
	})
	t.Run("Metrics", func(t *testing.T) {
		m, err := sb.Metrics(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if m.Network == nil {
			t.Fatal("Metrics().Network is nil for a VM with a policy")
		}
		b, _ := json.Marshal(m.Network)
		t.Logf("network metrics: %s", b)
		n := m.Network
		// Denied: other, www; B:8080 twice, the host. Allowed: A:80 twice,
		// B:80 twice, A:443, B:8080, the host.
		if n.DNSDenied < 2 || n.ConnectionsDenied < 3 || n.ConnectionsAllowed < 6 || n.SecretsSubstituted < 1 {
			t.Fatalf("counters below what this test caused: %s", b)
		}
	})
	t.Run("Forwarder", func(t *testing.T) {
		// The forwarder runs as for a native sandbox: a child of the vmm
		// helper, its own uid, no capabilities, seccomp; qemu's network
		// namespace stays its own (empty) one.
		info, err := sb.Info(ctx)
		if err != nil {
			t.Fatal(err)
		}
		fwd := forwarderOf(info.HelperPID)
		if fwd == 0 {
			t.Fatalf("no net-forwarder under helper %d", info.HelperPID)
		}
		if u := strings.Fields(statusField(fwd, "Uid")); len(u) == 0 || u[0] != "99997" ||
			statusField(fwd, "CapEff") != "0000000000000000" || statusField(fwd, "Seccomp") != "2" {
			t.Fatalf("forwarder %d: Uid %q CapEff %q Seccomp %q", fwd, statusField(fwd, "Uid"),
				statusField(fwd, "CapEff"), statusField(fwd, "Seccomp"))
		}
	})
	t.Run("NoCheckpoint", func(t *testing.T) {
		err := sb.Checkpoint(ctx, "vmnet-"+randHex(4))
		if err == nil || !strings.Contains(err.Error(), "network") {
			t.Fatalf("Checkpoint of a VM with a network: %v, want ErrUnsupported naming the network", err)
		}
	})
	t.Run("RemoveLeavesNoForwarder", func(t *testing.T) {
		info, err := sb.Info(ctx)
		if err != nil {
			t.Fatal(err)
		}
		fwd := forwarderOf(info.HelperPID)
		if fwd == 0 || !alive(fwd) {
			t.Fatalf("control: no live forwarder under helper %d", info.HelperPID)
		}
		if err := sb.Remove(ctx); err != nil {
			t.Fatal(err)
		}
		for deadline := time.Now().Add(30 * time.Second); alive(fwd); time.Sleep(50 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("forwarder %d survived Remove", fwd)
			}
		}
	})
}

// freePort is a host TCP port nothing listened on a moment ago.
func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// forwarderOf is the pid of the net-forwarder below helper, 0 if none.
func forwarderOf(helper int) int {
	for _, p := range descendants(helper) {
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", p))
		if strings.Contains(string(b), "net-forwarder") {
			return p
		}
	}
	return 0
}

// TestVMNetworkBench (make bench-vm-backend): create to first output of a
// VM with and without a network, and a download through the policy path
// inside a VM beside a native sandbox's. Medians of 3.
func TestVMNetworkBench(t *testing.T) {
	if os.Getenv("LOCKBOX_VM_BENCH") == "" {
		t.Skip("a benchmark: LOCKBOX_VM_BENCH=1 (make bench-vm-backend)")
	}
	if r := vmSkipReason(); r != "" {
		t.Skip(r)
	}
	lab := newNetLab(t)
	A := lab.A.String()
	const size = 64 << 20
	var ln net.Listener
	lab.inNetns(t, func() (err error) { ln, err = net.Listen("tcp", A+":8081"); return })
	zeros := make([]byte, 1<<20)
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", strconv.Itoa(size))
		for i := 0; i < size/len(zeros); i++ {
			if _, err := w.Write(zeros); err != nil {
				return
			}
		}
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	policy := lockbox.NewNetworkPolicy(lockbox.Allow(A).Port(8081))
	median := func(d []float64) float64 { sort.Float64s(d); return d[len(d)/2] }
	firstOutput := func(opts ...lockbox.Option) float64 {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		t0 := time.Now()
		sb, err := lockbox.CreateSandbox(ctx, append([]lockbox.Option{lockbox.WithIsolation(lockbox.IsolationMicroVM), lockbox.WithMemory(64)}, opts...)...)
		if err != nil {
			t.Fatal(err)
		}
		defer sb.Remove(context.Background())
		res, err := sb.Exec(ctx, "echo", "hi")
		if err != nil || strings.TrimSpace(string(res.Stdout)) != "hi" {
			t.Fatalf("echo: %v %q", err, res.Stdout)
		}
		return time.Since(t0).Seconds()
	}
	var plain, withNet []float64
	for i := 0; i < 3; i++ {
		plain = append(plain, firstOutput())
		withNet = append(withNet, firstOutput(lockbox.WithNetworkPolicy(policy)))
	}
	t.Logf("BENCH vm create->first output (TCG): no network median %.2f s %v; with a policy median %.2f s %v",
		median(plain), plain, median(withNet), withNet)
	download := func(sb *lockbox.Sandbox) float64 {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		res, err := sb.Exec(ctx, "sh", "-c", "wget -Y off -q -O /dev/null http://"+A+":8081/ && echo done")
		if err != nil || !strings.Contains(string(res.Stdout), "done") {
			t.Fatalf("download: %v %q %q", err, res.Stdout, res.Stderr)
		}
		return 0
	}
	rate := func(sb *lockbox.Sandbox) []float64 {
		var r []float64
		for i := 0; i < 3; i++ {
			t0 := time.Now()
			download(sb)
			r = append(r, float64(size>>20)/time.Since(t0).Seconds())
		}
		return r
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	vm, err := lockbox.CreateSandbox(ctx, lockbox.WithIsolation(lockbox.IsolationMicroVM), lockbox.WithMemory(128), lockbox.WithNetworkPolicy(policy))
	if err != nil {
		t.Fatal(err)
	}
	defer vm.Remove(context.Background())
	native, err := lockbox.CreateSandbox(ctx, lockbox.WithNetworkPolicy(policy))
	if err != nil {
		t.Fatal(err)
	}
	defer native.Remove(context.Background())
	v, n := rate(vm), rate(native)
	t.Logf("BENCH download 64 MiB through the policy path: microvm (TCG, user-mode stack) median %.1f MiB/s %v; native median %.1f MiB/s %v",
		median(v), v, median(n), n)
}

// TestMicroVMNetworkOutbound: a VM's plain NetworkOutbound is the
// forwarder with the public-internet preset (pasta is native-only). Its
// own boot, so not in make test (LOCKBOX_VM_EXTRA=1 runs it); the preset's
// decisions are network::plan's unit test.
func TestMicroVMNetworkOutbound(t *testing.T) {
	if os.Getenv("LOCKBOX_VM_EXTRA") == "" {
		t.Skip("one more VM boot: LOCKBOX_VM_EXTRA=1")
	}
	if r := vmSkipReason(); r != "" {
		t.Skip(r)
	}
	lab := newNetLab(t)
	A, B := lab.A.String(), lab.B.String()
	hostIP := hostIPv4(t, lab)
	port := hostService(t)
	sb := vmNetSandbox(t, lab, lockbox.WithNetwork(lockbox.NetworkOutbound))
	ctx := context.Background()
	mustReach(t, sb, A, "dns", "api."+labZone)
	mustReach(t, sb, "hello-from-"+A+":80", "http", A+":80", "api")
	mustReach(t, sb, "hello-from-"+B+":8080", "http", B+":8080", "b")
	mustReach(t, sb, "echo:ping", "udp", A+":7", "ping")
	mustRefuse(t, sb, tcpRefused, "http", fmt.Sprintf("%s:%d", hostIP, port), "host")
	mustRefuse(t, sb, tcpRefused, "http", "10.0.2.2:80", "gw")
	if err := sb.SetNetworkPolicy(ctx, lockbox.NewNetworkPolicy(lockbox.Allow(B))); err == nil {
		t.Fatal("SetNetworkPolicy on a VM created with plain outbound: accepted, want refused as on native")
	}
}
