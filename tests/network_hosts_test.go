package tests

// The network policy tests' own little internet: a network namespace
// "lbx-net-<random>" joined to the host's by a veth pair, holding test
// hosts on addresses of TEST-NET-2 (198.51.100.0/24, public as far as the
// policy is concerned, so names may resolve to them) routed from the host
// through that veth only: an HTTP server, an HTTPS server with a CA made
// by the test, a DNS server for the test names that logs every question,
// and UDP echoes. Every packet the tests cause goes to loopback or into
// that namespace. The engine is pointed at the DNS server and the CA with
// LOCKBOX_NET_DNS and LOCKBOX_NET_ROOTS.

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/binary"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"io"
	"log"
	"math/big"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// The test zone. Names below it the lab's DNS server answers; any other
// gets NXDOMAIN from it (and is logged all the same).
const labZone = "lbx.test"

type netLab struct {
	ns     string
	A, B   netip.Addr // test hosts: A serves the named sites, B is reached by address
	DNS    netip.Addr // the lab's DNS server (port 53)
	V6     netip.Addr // an IPv6 address of A's namespace; invalid if IPv6 is off here
	CAFile string     // the test CA's certificate (PEM)
	Dir    string     // holds CAFile; sandboxes mount it at /lab

	mu        sync.Mutex
	questions []string            // every name the DNS server was asked
	auth      map[string][]string // Authorization headers seen, by Host
}

// names is the lab zone: what the DNS server answers with A records.
func (l *netLab) names() map[string]netip.Addr {
	return map[string]netip.Addr{
		"api." + labZone:       l.A,
		"www." + labZone:       l.A,
		"evil." + labZone:      l.A,
		"other." + labZone:     l.A,
		"files.cdn." + labZone: l.A,
		"deny.cdn." + labZone:  l.A,
		"cdn." + labZone:       l.A,
		"blocked." + labZone:   l.B,
	}
}

func needNetLab(t *testing.T) {
	t.Helper()
	needEngine(t)
	if os.Geteuid() != 0 {
		t.Skip("the network policy tests make network namespaces: run as root (make test-net-go)")
	}
}

func ipCmd(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
	}
}

func ipOut(args ...string) string {
	out, _ := exec.Command("ip", args...).CombinedOutput()
	return strings.TrimSpace(string(out))
}

func randHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

func randByte() int {
	b := make([]byte, 1)
	rand.Read(b)
	return int(b[0])
}

// newNetLab builds the namespace, its addresses and routes, and starts
// every server; t.Cleanup takes all of it down again.
func newNetLab(t *testing.T) *netLab {
	t.Helper()
	needNetLab(t)
	sweepNetLabs()
	suffix := randHex(3)
	// The creator's pid in the name lets a later run remove what a killed
	// one left (sweepNetLabs).
	l := &netLab{ns: fmt.Sprintf("lbx-net-%s-%d", suffix, os.Getpid()), auth: map[string][]string{}}
	hostIf, peerIf := "lbxh"+suffix, "lbxp"+suffix
	// A free link /30 and a free /28 of TEST-NET-2, so that two runs on
	// one machine do not step on each other.
	var link, block int
	for i := 0; ; i++ {
		link, block = randByte(), 16*(1+randByte()%14)
		if ipOut("-4", "addr", "show", "to", fmt.Sprintf("10.213.%d.0/30", link)) == "" &&
			ipOut("-4", "route", "show", fmt.Sprintf("198.51.100.%d/28", block)) == "" {
			break
		}
		if i > 20 {
			t.Fatal("no free test addresses")
		}
	}
	base := netip.AddrFrom4([4]byte{198, 51, 100, byte(block)})
	l.A, l.B, l.DNS = base.Next(), base.Next().Next(), base.Next().Next().Next()
	hostAddr, peerAddr := fmt.Sprintf("10.213.%d.1", link), fmt.Sprintf("10.213.%d.2", link)

	ipCmd(t, "netns", "add", l.ns)
	t.Cleanup(func() {
		exec.Command("ip", "link", "del", hostIf).Run()
		exec.Command("ip", "netns", "del", l.ns).Run()
	})
	ipCmd(t, "link", "add", hostIf, "type", "veth", "peer", "name", peerIf)
	ipCmd(t, "link", "set", peerIf, "netns", l.ns)
	ipCmd(t, "addr", "add", hostAddr+"/30", "dev", hostIf)
	ipCmd(t, "link", "set", hostIf, "up")
	in := func(args ...string) { ipCmd(t, append([]string{"-n", l.ns}, args...)...) }
	in("link", "set", "lo", "up")
	in("addr", "add", peerAddr+"/30", "dev", peerIf)
	for _, a := range []netip.Addr{l.A, l.B, l.DNS} {
		in("addr", "add", a.String()+"/32", "dev", peerIf)
	}
	in("link", "set", peerIf, "up")
	in("route", "add", "default", "via", hostAddr)
	ipCmd(t, "route", "add", fmt.Sprintf("198.51.100.%d/28", block), "via", peerAddr, "dev", hostIf)
	// IPv6 on the same link, if this host has it: the sandbox must not
	// reach it unless a rule allows it (and with IPv6 off, not at all).
	v6net := fmt.Sprintf("2001:db8:213:%x", link)
	if exec.Command("ip", "-6", "addr", "add", v6net+"::1/64", "dev", hostIf, "nodad").Run() == nil &&
		exec.Command("ip", "-n", l.ns, "-6", "addr", "add", v6net+"::2/64", "dev", peerIf, "nodad").Run() == nil {
		l.V6 = netip.MustParseAddr(v6net + "::2")
	} else {
		t.Logf("no IPv6 on this host: the IPv6 cases check only that it stays off")
	}

	l.Dir = t.TempDir()
	os.Chmod(l.Dir, 0o755)
	cert := l.makeCA(t)
	l.serve(t, cert)
	t.Setenv("LOCKBOX_NET_DNS", l.DNS.String()+":53")
	t.Setenv("LOCKBOX_NET_ROOTS", l.CAFile)
	return l
}

// sweepNetLabs deletes the lab namespaces of test processes that are gone
// (killed before their cleanup ran); their veth pair, and with it the
// host's route to their addresses, goes with the namespace.
func sweepNetLabs() {
	for _, line := range strings.Split(ipOut("netns", "list"), "\n") {
		fields := strings.Fields(line)
		if len(fields) == 0 || !strings.HasPrefix(fields[0], "lbx-net-") {
			continue
		}
		parts := strings.Split(fields[0], "-")
		pid, err := strconv.Atoi(parts[len(parts)-1])
		if err != nil || pid <= 0 {
			continue
		}
		if _, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); os.IsNotExist(err) {
			exec.Command("ip", "netns", "del", fields[0]).Run()
		}
	}
}

// makeCA writes a fresh test CA to CAFile and returns a server
// certificate it signed for every lab name.
func (l *netLab) makeCA(t *testing.T) tls.Certificate {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	ca := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "lockbox network test CA " + l.ns},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, ca, ca, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ = x509.ParseCertificate(caDER)
	l.CAFile = filepath.Join(l.Dir, "ca.pem")
	if err := os.WriteFile(l.CAFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}), 0o644); err != nil {
		t.Fatal(err)
	}
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	leaf := &x509.Certificate{
		SerialNumber: big.NewInt(2),
		Subject:      pkix.Name{CommonName: "api." + labZone},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	for n := range l.names() {
		leaf.DNSNames = append(leaf.DNSNames, n)
	}
	der, err := x509.CreateCertificate(rand.Reader, leaf, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// inNetns runs fn on a thread that has joined the lab's namespace:
// sockets made there stay in it whichever thread uses them later.
func (l *netLab) inNetns(t *testing.T, fn func() error) {
	t.Helper()
	errc := make(chan error, 1)
	go func() {
		// The thread is given back only if it returned to the host's
		// namespace; otherwise it ends with this goroutine.
		runtime.LockOSThread()
		orig, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			errc <- err
			return
		}
		defer orig.Close()
		target, err := os.Open("/run/netns/" + l.ns)
		if err != nil {
			errc <- err
			return
		}
		defer target.Close()
		if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
			errc <- err
			return
		}
		ferr := fn()
		if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("back to the host namespace: %v", err)
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
}

func (l *netLab) serve(t *testing.T, cert tls.Certificate) {
	t.Helper()
	var closers []func()
	t.Cleanup(func() {
		for _, c := range closers {
			c()
		}
	})
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		local := r.Context().Value(http.LocalAddrContextKey).(net.Addr).String()
		l.mu.Lock()
		l.auth[r.Host] = append(l.auth[r.Host], r.Header.Get("Authorization"))
		l.mu.Unlock()
		fmt.Fprintf(w, "hello-from-%s", local)
	})
	listen := func(network, addr string) {
		var ln net.Listener
		l.inNetns(t, func() (err error) { ln, err = net.Listen(network, addr); return })
		srv := &http.Server{Handler: handler, ReadHeaderTimeout: 5 * time.Second}
		go srv.Serve(ln)
		closers = append(closers, func() { srv.Close() })
	}
	for _, a := range []netip.Addr{l.A, l.B} {
		listen("tcp", a.String()+":80")
		listen("tcp", a.String()+":8080")
	}
	var tlsLn net.Listener
	l.inNetns(t, func() (err error) { tlsLn, err = net.Listen("tcp", l.A.String()+":443"); return })
	// The refused handshakes of the SNI cases are expected: not logged.
	tlsSrv := &http.Server{Handler: handler, ReadHeaderTimeout: 5 * time.Second, ErrorLog: log.New(io.Discard, "", 0),
		TLSConfig: &tls.Config{Certificates: []tls.Certificate{cert}}}
	go tlsSrv.ServeTLS(tlsLn, "", "")
	closers = append(closers, func() { tlsSrv.Close() })

	echo := func(addr string) {
		var pc net.PacketConn
		l.inNetns(t, func() (err error) { pc, err = net.ListenPacket("udp", addr); return })
		go func() {
			buf := make([]byte, 2048)
			for {
				n, from, err := pc.ReadFrom(buf)
				if err != nil {
					return
				}
				pc.WriteTo(append([]byte("echo:"), buf[:n]...), from)
			}
		}()
		closers = append(closers, func() { pc.Close() })
	}
	echo(l.A.String() + ":7")
	echo(l.A.String() + ":9")
	echo(l.B.String() + ":80")
	if l.V6.IsValid() {
		listen("tcp", "["+l.V6.String()+"]:80")
		echo("[" + l.V6.String() + "]:7")
	}

	var dns net.PacketConn
	l.inNetns(t, func() (err error) { dns, err = net.ListenPacket("udp", l.DNS.String()+":53"); return })
	go l.serveDNS(dns)
	closers = append(closers, func() { dns.Close() })
}

// serveDNS answers A questions for the lab's names, NXDOMAIN for other
// names, and logs every question.
func (l *netLab) serveDNS(pc net.PacketConn) {
	buf := make([]byte, 1500)
	zone := l.names()
	for {
		n, from, err := pc.ReadFrom(buf)
		if err != nil {
			return
		}
		m := buf[:n]
		if n < 12 || binary.BigEndian.Uint16(m[4:]) != 1 {
			continue
		}
		name, end, ok := readName(m, 12)
		if !ok || end+4 > n {
			continue
		}
		qtype := binary.BigEndian.Uint16(m[end:])
		l.mu.Lock()
		l.questions = append(l.questions, name)
		l.mu.Unlock()
		reply := append([]byte{}, m[:end+4]...)
		reply[2] = 0x84 | m[2]&0x01 // response, authoritative, RD copied
		reply[3] = 0
		binary.BigEndian.PutUint16(reply[6:], 0)
		binary.BigEndian.PutUint16(reply[8:], 0)
		binary.BigEndian.PutUint16(reply[10:], 0)
		addr, known := zone[name]
		switch {
		case !known:
			reply[3] = 3 // NXDOMAIN
		case qtype == 1:
			binary.BigEndian.PutUint16(reply[6:], 1)
			a := addr.As4()
			reply = append(reply, 0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, a[0], a[1], a[2], a[3])
		}
		pc.WriteTo(reply, from)
	}
}

// readName reads an uncompressed question name, lower-cased.
func readName(m []byte, off int) (string, int, bool) {
	var labels []string
	for off < len(m) {
		n := int(m[off])
		if n == 0 {
			return strings.ToLower(strings.Join(labels, ".")), off + 1, true
		}
		if n&0xc0 != 0 || off+1+n > len(m) {
			return "", 0, false
		}
		labels = append(labels, string(m[off+1:off+1+n]))
		off += 1 + n
	}
	return "", 0, false
}

// asked is the names the lab's DNS server was asked that end in suffix.
func (l *netLab) asked(suffix string) []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []string
	for _, q := range l.questions {
		if strings.HasSuffix(q, suffix) {
			out = append(out, q)
		}
	}
	return out
}

// authSeen is the Authorization headers the servers got for host.
func (l *netLab) authSeen(host string) []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.auth[host]...)
}
