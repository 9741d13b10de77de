package tests

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"io"
	"log"
	"math/big"
	"net"
	"net/http"
	"net/http/httputil"
	"os"
	"strings"
	"testing"
	"time"

	"lockbox.dev/lockbox"
)

// Attack review s5, S5-NET-1: every refused TLS server name is an event
// holding that name, and a ClientHello may carry a name of ~16 KiB (one
// TLS record) where DNS allows 253 bytes. A queue of 1024 such events is
// a control reply over the 16 MiB the helper relays; the helper then
// took the forwarder for gone, and from that moment the host could
// neither read events nor change the sandbox's policy (SetNetworkPolicy
// failed for the rest of the sandbox's life). The sandbox needs only an
// allowed address to connect to.
func TestNetAttackS5LongServerNames(t *testing.T) {
	lab := newNetLab(t)
	A := lab.A.String()
	api := "api." + labZone
	policy := lockbox.NewNetworkPolicy(lockbox.Allow(api).Port(443))
	sb := lab.sandbox(t, lockbox.WithNetworkPolicy(policy),
		lockbox.WithVolume(staticProbe(t, "s5attack"), "/attack", true))
	mustReach(t, sb, A, "dns", api)

	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	// Control: the host controls the policy before the attack.
	if err := sb.SetNetworkPolicy(ctx, policy); err != nil {
		t.Fatalf("control: SetNetworkPolicy before the attack: %v", err)
	}
	// 1024 connections (the event queue's size), each naming 16328 bytes
	// (the most one TLS record holds).
	res, err := sb.ExecArgs(ctx, []string{"/attack/s5attack", "longsni", A + ":443", "1024", "16328"})
	if err != nil {
		t.Fatal(err)
	}
	if out := strings.TrimSpace(string(res.Stdout)); !strings.HasPrefix(out, "DONE 1024") {
		t.Fatalf("the attack did not run: %q", out)
	}
	m, err := sb.Metrics(ctx)
	if err != nil {
		t.Errorf("ATTACK: Metrics after the long names: %v", err)
	} else if m.Network == nil || m.Network.ConnectionsDenied+m.Network.EventsDropped == 0 {
		t.Errorf("the refusals were not counted: %+v", m.Network)
	}
	if err := sb.SetNetworkPolicy(ctx, lockbox.NewNetworkPolicy(lockbox.Allow(api).Port(8443))); err != nil {
		t.Fatalf("ATTACK: the host lost control of the sandbox's policy: %v", err)
	}
	// The narrower policy is in force: 443 is refused now.
	mustRefuse(t, sb, []string{"RESET", "REFUSED"}, "http", A+":443", api)
}

// Attack review s5, S5-NET-2: TRACE asks the server to send the request
// back as it received it, and Apache answers it unless TraceEnable is
// off. On a connection the forwarder intercepts, that request carries
// the real value in place of the placeholder, so the reply brought the
// secret into the sandbox. The lab server here answers TRACE the way
// Apache does; the control shows it echoing a placeholder on a
// connection that is not intercepted (a name without a secret).
func TestNetAttackS5Trace(t *testing.T) {
	lab := newNetLab(t)
	A := lab.A.String()
	api, www := "api."+labZone, "www."+labZone
	lab.serveTraceEcho(t, A+":8443", api, www)
	real := "sk-trace-" + randHex(16)
	policy := lockbox.NewNetworkPolicy(lockbox.Allow(api).Port(8443), lockbox.Allow(www).Port(8443))
	sb := lab.sandbox(t, lockbox.WithNetworkPolicy(policy), lockbox.WithSecret("API_KEY", real, api),
		lockbox.WithVolume(staticProbe(t, "netattack"), "/attack", true))
	mustReach(t, sb, A, "dns", api)
	mustReach(t, sb, A, "dns", www)
	send := func(sni, req string) string {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		res, err := sb.ExecArgs(ctx, []string{"/attack/netattack", "raw", A + ":8443", sni, req})
		if err != nil {
			t.Fatal(err)
		}
		return strings.TrimSpace(string(res.Stdout))
	}
	trace := func(host string) string {
		return `TRACE / HTTP/1.1\r\nHost: ` + host + `\r\nAuthorization: Bearer $API_KEY\r\nConnection: close\r\n\r\n`
	}
	// Control: the server echoes TRACE, placeholder and all, where the
	// forwarder does not intercept.
	if got := send(www, trace(www)); !strings.Contains(got, "Bearer_lockbox-secret-") {
		t.Fatalf("control: the lab server did not echo TRACE: %q", got)
	}
	got := send(api, trace(api))
	t.Logf("TRACE at the secret host -> %.160s", got)
	if strings.Contains(got, real) {
		t.Fatalf("ATTACK: TRACE brought the real value into the sandbox: %q", got)
	}
}

// Attack review s5, S5-NET-3: the forwarder put the real value in every
// header of a request to the secret's host, and servers send some headers
// back: CORS middleware answers Origin with Access-Control-Allow-Origin.
// The lab server reflects Origin like that; the controls show it does
// (with the placeholder, where nothing is intercepted) and that the same
// request's Authorization still reaches the secret's host with the value.
func TestNetAttackS5OriginReflected(t *testing.T) {
	lab := newNetLab(t)
	A := lab.A.String()
	api, www := "api."+labZone, "www."+labZone
	lab.serveTraceEcho(t, A+":8443", api, www)
	real := "sk-origin-" + randHex(16)
	policy := lockbox.NewNetworkPolicy(lockbox.Allow(api).Port(8443), lockbox.Allow(www).Port(8443))
	sb := lab.sandbox(t, lockbox.WithNetworkPolicy(policy), lockbox.WithSecret("API_KEY", real, api),
		lockbox.WithSecretHeaders("API_KEY", "X-Lab-Key"),
		lockbox.WithVolume(staticProbe(t, "netattack"), "/attack", true))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	events := collectEvents(t, ctx, sb)
	mustReach(t, sb, A, "dns", api)
	mustReach(t, sb, A, "dns", www)
	send := func(host string) string {
		t.Helper()
		ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
		defer cancel()
		req := `GET / HTTP/1.1\r\nHost: ` + host + `\r\nAuthorization: Bearer $API_KEY\r\nX-Lab-Key: $API_KEY\r\nOrigin: $API_KEY\r\nConnection: close\r\n\r\n`
		res, err := sb.ExecArgs(ctx, []string{"/attack/netattack", "raw", A + ":8443", host, req})
		if err != nil {
			t.Fatal(err)
		}
		return strings.TrimSpace(string(res.Stdout))
	}
	const reflected = "Access-Control-Allow-Origin:_lockbox-secret-"
	if got := send(www); !strings.Contains(got, reflected) {
		t.Fatalf("control: the lab server did not reflect Origin: %.300s", got)
	}
	got := send(api)
	t.Logf("Origin at the secret host -> %.300s", got)
	if strings.Contains(got, real) {
		t.Fatalf("ATTACK: the reflected Origin brought the real value into the sandbox: %q", got)
	}
	if !strings.Contains(got, reflected) {
		t.Fatalf("the secret host did not answer with the placeholder reflected: %.300s", got)
	}
	if a := lastAuth(lab, api); a != "Bearer "+real {
		t.Fatalf("control: %s saw Authorization %q, want the real value", api, a)
	}
	// The header WithSecretHeaders named gets the value too.
	if k := lastAuth(lab, api+"#x-lab-key"); k != real {
		t.Fatalf("%s saw X-Lab-Key %q, want the real value", api, k)
	}
	ev := events.wait(t, "placeholder outside the credential headers", func(e lockbox.NetworkEvent) bool {
		return e.Kind == lockbox.EventSecret && strings.Contains(e.Rule, "outside the credential headers")
	})
	if strings.Contains(ev.Rule+ev.Name, real) {
		t.Fatalf("LEAK: the event holds the real value: %+v", ev)
	}
}

// serveTraceEcho serves HTTPS on addr in the lab's namespace for names,
// with a CA of its own added to the roots the forwarder trusts (the
// lab's file), answering TRACE with the request as received (Apache's
// default) and anything else with 405, reflecting Origin as CORS
// middleware does. Authorization is recorded as the lab's servers do,
// X-Lab-Key under "<host>#x-lab-key".
func (l *netLab) serveTraceEcho(t *testing.T, addr string, names ...string) {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	ca := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "s5 trace CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, ca, ca, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ = x509.ParseCertificate(caDER)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	leaf := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: names[0]}, DNSNames: names,
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, leaf, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(l.CAFile, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	pem.Encode(f, &pem.Block{Type: "CERTIFICATE", Bytes: caDER})
	f.Close()
	var ln net.Listener
	l.inNetns(t, func() (err error) { ln, err = net.Listen("tcp", addr); return })
	srv := &http.Server{ReadHeaderTimeout: 5 * time.Second, ErrorLog: log.New(io.Discard, "", 0),
		TLSConfig: &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}},
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			l.mu.Lock()
			l.auth[r.Host] = append(l.auth[r.Host], r.Header.Get("Authorization"))
			if k := r.Header.Get("X-Lab-Key"); k != "" {
				l.auth[r.Host+"#x-lab-key"] = append(l.auth[r.Host+"#x-lab-key"], k)
			}
			l.mu.Unlock()
			if r.Method != "TRACE" {
				// CORS middleware commonly reflects the Origin it was sent.
				if o := r.Header.Get("Origin"); o != "" {
					w.Header().Set("Access-Control-Allow-Origin", o)
				}
				w.WriteHeader(http.StatusMethodNotAllowed)
				return
			}
			head, _ := httputil.DumpRequest(r, false)
			w.Header().Set("Content-Type", "message/http")
			w.Write(head)
		})}
	go srv.ServeTLS(ln, "", "")
	t.Cleanup(func() { srv.Close() })
}
