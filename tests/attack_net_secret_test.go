package tests

import (
	"context"
	"strings"
	"testing"
	"time"

	"lockbox.dev/lockbox"
)

// Attack review s4 (ATTACK-2): a sandbox holding a secret's placeholder
// tries to have the forwarder put the real value into a request that a
// shared server routes to a name other than the one TLS verified. The
// lab's HTTPS server is such a server: it serves every name at one
// address and records Authorization by the Host it routed by (Go's
// server takes an absolute target's authority, and "" when an HTTP/1.0
// request names none).
func TestNetAttackSecretMisdirected(t *testing.T) {
	lab := newNetLab(t)
	A := lab.A.String()
	api, www := "api."+labZone, "www."+labZone
	real := "sk-attack-" + randHex(16)
	policy := lockbox.NewNetworkPolicy(lockbox.Allow(api).Port(443), lockbox.Allow(www).Port(443))
	sb := lab.sandbox(t, lockbox.WithNetworkPolicy(policy), lockbox.WithSecret("API_KEY", real, api),
		lockbox.WithVolume(staticProbe(t, "netattack"), "/attack", true))
	mustReach(t, sb, A, "dns", api)
	mustReach(t, sb, A, "dns", www)

	send := func(req string) string {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		res, err := sb.ExecArgs(ctx, []string{"/attack/netattack", "raw", A + ":443", api, req})
		if err != nil {
			t.Fatal(err)
		}
		out := strings.TrimSpace(string(res.Stdout))
		if strings.Contains(out, real) {
			t.Errorf("LEAK: the reply brought the real value back into the sandbox: %q", out)
		}
		return out
	}
	// elsewhere is every Authorization holding the real value that the
	// server routed to a name other than api.
	elsewhere := func() []string {
		lab.mu.Lock()
		defer lab.mu.Unlock()
		var leaks []string
		for host, seen := range lab.auth {
			for _, a := range seen {
				if host != api && strings.Contains(a, real) {
					leaks = append(leaks, "Host "+host+": "+a)
				}
			}
		}
		return leaks
	}
	const auth = `Authorization: Bearer $API_KEY\r\n`
	attacks := map[string]string{
		"no Host (HTTP/1.0)":       `GET / HTTP/1.0\r\n` + auth + `\r\n`,
		"another Host":             `GET / HTTP/1.1\r\nHost: ` + www + `\r\n` + auth + `Connection: close\r\n\r\n`,
		"absolute target":          `GET https://` + www + `/ HTTP/1.1\r\nHost: ` + api + `\r\n` + auth + `Connection: close\r\n\r\n`,
		"second request, no Host":  `GET / HTTP/1.1\r\nHost: ` + api + `\r\n\r\nGET / HTTP/1.0\r\n` + auth + `\r\n`,
		"second request elsewhere": `GET / HTTP/1.1\r\nHost: ` + api + `\r\n\r\nGET / HTTP/1.1\r\nHost: ` + www + `\r\n` + auth + `Connection: close\r\n\r\n`,
		"CL.TE smuggling":          `POST / HTTP/1.1\r\nHost: ` + api + `\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET / HTTP/1.1\r\nHost: ` + www + `\r\n` + auth + `\r\n`,
		"upgrade then elsewhere":   `GET / HTTP/1.1\r\nHost: ` + api + `\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\nGET / HTTP/1.1\r\nHost: ` + www + `\r\n` + auth + `Connection: close\r\n\r\n`,
		"CONNECT elsewhere":        `CONNECT ` + www + `:443 HTTP/1.1\r\nHost: ` + api + `\r\n` + auth + `\r\n`,
	}
	for name, req := range attacks {
		got := send(req)
		t.Logf("%s -> %.120s", name, got)
		if leaks := elsewhere(); len(leaks) > 0 {
			t.Fatalf("LEAK (%s): the real value went to another name: %v", name, leaks)
		}
	}
	// Control: the same server records the value when the request names
	// the verified host, and the check above would see it under another.
	send(`GET / HTTP/1.1\r\nHost: ` + api + `\r\n` + auth + `Connection: close\r\n\r\n`)
	if a := lastAuth(lab, api); a != "Bearer "+real {
		t.Fatalf("control: %s saw %q, want the real value", api, a)
	}
	lab.mu.Lock()
	lab.auth[""] = append(lab.auth[""], "Bearer "+real)
	lab.mu.Unlock()
	if len(elsewhere()) != 1 {
		t.Fatal("control: a value recorded under another Host is not found")
	}
}
