// netprobe runs inside a sandbox for the network policy tests
// (tests/network_*_test.go). Each subcommand tries one thing and prints
// one line: "OK <detail>" when it got through, "REFUSED"/"RESET"/
// "NXDOMAIN"/"TIMEOUT"/"UNREACHABLE"/"ERR <why>" when it did not, then
// " ms=<elapsed>" so the tests can see a refusal is fast. It uses plain
// sockets (no proxy variables, no libc resolver): what any program could.
package main

import (
	"bufio"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

const timeout = 3 * time.Second

func main() {
	if len(os.Args) < 2 {
		fmt.Println("ERR usage")
		return
	}
	start := time.Now()
	out := run(os.Args[1], os.Args[2:])
	fmt.Printf("%s ms=%d\n", out, time.Since(start).Milliseconds())
}

func run(cmd string, a []string) string {
	switch cmd {
	// HEADER is one header line with $VARS expanded from the environment;
	// "BASIC user:$VAR" sends that, expanded, as Basic auth.
	case "http": // http ADDR:PORT HOST [HEADER]
		return httpGet(a[0], a[1], "", optional(a, 2))
	case "tls": // tls ADDR:PORT SNI CAFILE [HEADER]
		return httpGet(a[0], a[1], a[2], optional(a, 3))
	case "udp": // udp ADDR:PORT MSG
		return udp(a[0], a[1])
	case "dns": // dns NAME
		return dnsA(a[0])
	case "tunnel": // tunnel ZONE N: N long random names below ZONE
		n, _ := strconv.Atoi(a[1])
		return tunnel(a[0], n)
	case "udp6raw": // udp6raw [ADDR]:PORT: one datagram from a bare socket
		return udp6raw(a[0])
	case "addrs":
		return addrs()
	case "scan": // scan HEX: where the bytes hex-decoded and reversed appear
		return scan(a[0])
	}
	return "ERR unknown command " + cmd
}

func optional(a []string, i int) string {
	if len(a) > i {
		return a[i]
	}
	return ""
}

// classify names a failure the way the tests assert on it.
func classify(err error) string {
	var ne net.Error
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		return "REFUSED"
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, io.EOF), errors.Is(err, syscall.EPIPE):
		return "RESET"
	case errors.Is(err, syscall.ENETUNREACH), errors.Is(err, syscall.EHOSTUNREACH), errors.Is(err, syscall.EADDRNOTAVAIL), errors.Is(err, syscall.EAFNOSUPPORT):
		return "UNREACHABLE"
	case errors.As(err, &ne) && ne.Timeout():
		return "TIMEOUT"
	}
	return "ERR " + strings.ReplaceAll(err.Error(), "\n", " ")
}

// httpGet sends one HTTP/1.0 GET (over TLS with server name sni when sni
// is set) with an optional extra header line, and returns the reply's
// status line and body.
func httpGet(addr, host, sni, header string) string {
	c, err := net.DialTimeout("tcp", addr, timeout)
	if err != nil {
		return classify(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(timeout))
	issuer := ""
	if sni != "" {
		pool, err := roots()
		if err != nil {
			return "ERR " + err.Error()
		}
		tc := tls.Client(c, &tls.Config{ServerName: sni, RootCAs: pool})
		if err := tc.Handshake(); err != nil {
			if strings.Contains(err.Error(), "certificate") {
				return "ERR tls " + err.Error()
			}
			return classify(err)
		}
		c = tc
		issuer = "issuer=" + strings.ReplaceAll(tc.ConnectionState().PeerCertificates[0].Issuer.CommonName, " ", "_") + " "
	}
	req := "GET / HTTP/1.0\r\nHost: " + host + "\r\n"
	if basic, ok := strings.CutPrefix(header, "BASIC "); ok {
		header = "Authorization: Basic " + base64.StdEncoding.EncodeToString([]byte(os.ExpandEnv(basic)))
	}
	if header != "" {
		req += os.ExpandEnv(header) + "\r\n"
	}
	if _, err := io.WriteString(c, req+"\r\n"); err != nil {
		return classify(err)
	}
	b, err := io.ReadAll(io.LimitReader(c, 1<<16))
	if len(b) == 0 {
		if err == nil {
			err = io.EOF
		}
		return classify(err)
	}
	status, body, _ := strings.Cut(string(b), "\r\n")
	if _, after, ok := strings.Cut(body, "\r\n\r\n"); ok {
		body = after
	}
	return "OK " + issuer + status + " " + strings.TrimSpace(body)
}

// roots is the system pool (SSL_CERT_FILE: the sandbox's bundle, with
// Lockbox's CA when there are secrets) plus the test CA at
// $NETPROBE_CA when set.
func roots() (*x509.CertPool, error) {
	pool, err := x509.SystemCertPool()
	if err != nil || pool == nil {
		pool = x509.NewCertPool()
	}
	if f := os.Getenv("NETPROBE_CA"); f != "" {
		b, err := os.ReadFile(f)
		if err != nil {
			return nil, err
		}
		pool.AppendCertsFromPEM(b)
	}
	return pool, nil
}

func udp(addr, msg string) string {
	c, err := net.DialTimeout("udp", addr, timeout)
	if err != nil {
		return classify(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(timeout))
	if _, err := c.Write([]byte(msg)); err != nil {
		return classify(err)
	}
	buf := make([]byte, 512)
	n, err := c.Read(buf)
	if err != nil {
		return classify(err)
	}
	return "OK " + string(buf[:n])
}

// resolver is the first nameserver in /etc/resolv.conf.
func resolver() (string, error) {
	f, err := os.Open("/etc/resolv.conf")
	if err != nil {
		return "", err
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		fields := strings.Fields(s.Text())
		if len(fields) >= 2 && fields[0] == "nameserver" {
			return net.JoinHostPort(fields[1], "53"), nil
		}
	}
	return "", errors.New("no nameserver in /etc/resolv.conf")
}

// dnsA asks the sandbox's resolver for name's A records with one query.
func dnsA(name string) string {
	ns, err := resolver()
	if err != nil {
		return "ERR " + err.Error()
	}
	return query(ns, name)
}

func query(ns, name string) string {
	c, err := net.DialTimeout("udp", ns, timeout)
	if err != nil {
		return classify(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(timeout))
	var id [2]byte
	rand.Read(id[:])
	q := append([]byte{id[0], id[1], 1, 0, 0, 1, 0, 0, 0, 0, 0, 0}, encodeName(name)...)
	q = append(q, 0, 1, 0, 1) // A, IN
	if _, err := c.Write(q); err != nil {
		return classify(err)
	}
	buf := make([]byte, 1500)
	n, err := c.Read(buf)
	if err != nil {
		return classify(err)
	}
	return parseAnswer(buf[:n], id)
}

func encodeName(name string) []byte {
	var b []byte
	for _, l := range strings.Split(strings.TrimSuffix(name, "."), ".") {
		b = append(b, byte(len(l)))
		b = append(b, l...)
	}
	return append(b, 0)
}

// skipName steps over a (possibly compressed) name at off.
func skipName(m []byte, off int) (int, error) {
	for off < len(m) {
		l := int(m[off])
		switch {
		case l == 0:
			return off + 1, nil
		case l&0xc0 == 0xc0:
			return off + 2, nil
		default:
			off += 1 + l
		}
	}
	return 0, errors.New("truncated name")
}

func parseAnswer(m []byte, id [2]byte) string {
	if len(m) < 12 || m[0] != id[0] || m[1] != id[1] {
		return "ERR bad reply"
	}
	if rcode := m[3] & 0xf; rcode == 3 {
		return "NXDOMAIN"
	} else if rcode != 0 {
		return fmt.Sprintf("RCODE %d", rcode)
	}
	qd, an := binary.BigEndian.Uint16(m[4:]), binary.BigEndian.Uint16(m[6:])
	off := 12
	var err error
	for i := 0; i < int(qd); i++ {
		if off, err = skipName(m, off); err != nil {
			return "ERR " + err.Error()
		}
		off += 4
	}
	var ips []string
	for i := 0; i < int(an); i++ {
		if off, err = skipName(m, off); err != nil || off+10 > len(m) {
			return "ERR truncated answer"
		}
		typ, rdlen := binary.BigEndian.Uint16(m[off:]), int(binary.BigEndian.Uint16(m[off+8:]))
		off += 10
		if off+rdlen > len(m) {
			return "ERR truncated answer"
		}
		if typ == 1 && rdlen == 4 {
			ips = append(ips, net.IP(m[off:off+4]).String())
		}
		off += rdlen
	}
	if len(ips) == 0 {
		return "NOADDR"
	}
	return "OK " + strings.Join(ips, ",")
}

// tunnel asks for n names of 4 random 50-character labels below zone,
// the shape DNS exfiltration takes, and counts the answers by kind.
func tunnel(zone string, n int) string {
	ns, err := resolver()
	if err != nil {
		return "ERR " + err.Error()
	}
	counts := map[string]int{}
	for i := 0; i < n; i++ {
		var labels []string
		for j := 0; j < 4; j++ {
			b := make([]byte, 25)
			rand.Read(b)
			labels = append(labels, hex.EncodeToString(b))
		}
		r := query(ns, strings.Join(labels, ".")+"."+zone)
		counts[strings.Fields(r)[0]]++
	}
	if counts["NXDOMAIN"] == n {
		return fmt.Sprintf("NXDOMAIN all=%d", n)
	}
	return fmt.Sprintf("MIXED %v", counts)
}

// udp6raw sends one datagram to an IPv6 destination from a socket made
// by hand (no Go dialer logic in the way) and waits for an echo.
func udp6raw(addr string) string {
	ap, err := net.ResolveUDPAddr("udp6", addr)
	if err != nil {
		return "ERR " + err.Error()
	}
	fd, err := syscall.Socket(syscall.AF_INET6, syscall.SOCK_DGRAM, 0)
	if err != nil {
		return classify(err)
	}
	defer syscall.Close(fd)
	var sa syscall.SockaddrInet6
	copy(sa.Addr[:], ap.IP.To16())
	sa.Port = ap.Port
	tv := syscall.NsecToTimeval(int64(timeout))
	syscall.SetsockoptTimeval(fd, syscall.SOL_SOCKET, syscall.SO_RCVTIMEO, &tv)
	if err := syscall.Connect(fd, &sa); err != nil {
		return classify(err)
	}
	if _, err := syscall.Write(fd, []byte("v6")); err != nil {
		return classify(err)
	}
	buf := make([]byte, 64)
	n, err := syscall.Read(fd, buf)
	if err != nil {
		if errors.Is(err, syscall.EAGAIN) {
			return "TIMEOUT"
		}
		return classify(err)
	}
	return "OK " + string(buf[:n])
}

// addrs lists the sandbox's interface addresses (is there IPv6 at all).
func addrs() string {
	as, err := net.InterfaceAddrs()
	if err != nil {
		return "ERR " + err.Error()
	}
	var s []string
	for _, a := range as {
		s = append(s, a.String())
	}
	return "OK " + strings.Join(s, ",")
}

// scan looks for a value in every process's environment and command
// line and in every regular file (not /proc, /sys, /dev). The value comes
// hex-encoded and reversed, so that this command line does not hold it.
func scan(hexrev string) string {
	rev, err := hex.DecodeString(hexrev)
	if err != nil || len(rev) == 0 {
		return "ERR bad value"
	}
	want := make([]byte, len(rev))
	for i, b := range rev {
		want[len(rev)-1-i] = b
	}
	var hits []string
	// This process's own environment counts: it is an exec in the sandbox.
	procs, _ := filepath.Glob("/proc/[0-9]*")
	for _, p := range procs {
		for _, f := range []string{"environ", "cmdline"} {
			b, err := os.ReadFile(filepath.Join(p, f))
			if err == nil && strings.Contains(string(b), string(want)) {
				hits = append(hits, filepath.Join(p, f))
			}
		}
	}
	files := 0
	filepath.WalkDir("/", func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return nil
		}
		if d.IsDir() && (p == "/proc" || p == "/sys" || p == "/dev") {
			return filepath.SkipDir
		}
		if !d.Type().IsRegular() {
			return nil
		}
		files++
		if b, err := os.ReadFile(p); err == nil && strings.Contains(string(b), string(want)) {
			hits = append(hits, p)
		}
		return nil
	})
	if len(hits) > 0 {
		return "FOUND " + strings.Join(hits, ",")
	}
	return fmt.Sprintf("CLEAN files=%d procs=%d", files, len(procs))
}
