// netattack runs inside a sandbox for tests/attack_net_*_test.go: it
// sends bytes a hostile program would over TLS and prints one line, "OK
// <first line of the reply>" or RESET/REFUSED/ERR, like netprobe.
//
//	netattack raw ADDR:PORT SNI REQUEST
//
// REQUEST is sent as is after `\r`, `\n` are unescaped and $VARS are
// expanded from the environment (the secret's placeholder), so the
// request may lack a Host, name another one, pipeline several or smuggle
// one inside a body.
package main

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"syscall"
	"time"
)

func main() {
	if len(os.Args) != 5 || os.Args[1] != "raw" {
		fmt.Println("ERR usage: netattack raw ADDR:PORT SNI REQUEST")
		return
	}
	fmt.Println(raw(os.Args[2], os.Args[3], os.Args[4]))
}

func raw(addr, sni, request string) string {
	c, err := net.DialTimeout("tcp", addr, 3*time.Second)
	if err != nil {
		return classify(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	pool, err := x509.SystemCertPool()
	if err != nil {
		return "ERR " + err.Error()
	}
	if f := os.Getenv("NETPROBE_CA"); f != "" {
		if b, err := os.ReadFile(f); err == nil {
			pool.AppendCertsFromPEM(b)
		}
	}
	tc := tls.Client(c, &tls.Config{ServerName: sni, RootCAs: pool, NextProtos: []string{"http/1.1"}})
	if err := tc.Handshake(); err != nil {
		return classify(err)
	}
	req := strings.NewReplacer(`\r`, "\r", `\n`, "\n").Replace(os.ExpandEnv(request))
	if _, err := io.WriteString(tc, req); err != nil {
		return classify(err)
	}
	b, err := io.ReadAll(io.LimitReader(tc, 1<<16))
	if len(b) == 0 {
		if err == nil {
			err = io.EOF
		}
		return classify(err)
	}
	status, _, _ := strings.Cut(string(b), "\r\n")
	// The whole reply, escaped on one line: the test checks that no real
	// value came back in it.
	return "OK " + status + " " + strings.ReplaceAll(fmt.Sprintf("%q", b), " ", "_")
}

func classify(err error) string {
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		return "REFUSED"
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, io.EOF), errors.Is(err, syscall.EPIPE):
		return "RESET"
	}
	return "ERR " + strings.ReplaceAll(err.Error(), "\n", " ")
}
