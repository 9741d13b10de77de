package tests

import (
	"context"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"regexp"
	"slices"
	"strings"
	"testing"

	"lockbox.dev/lockbox"
)

var placeholderRE = regexp.MustCompile(`^lockbox-secret-[0-9a-f]{32}$`)

// hexReversed is how netprobe's scan takes the value it looks for, so
// that its own command line does not hold it.
func hexReversed(s string) string {
	b := []byte(s)
	slices.Reverse(b)
	return hex.EncodeToString(b)
}

// lastAuth is the last Authorization header host saw, "" if none.
func lastAuth(lab *netLab, host string) string {
	seen := lab.authSeen(host)
	if len(seen) == 0 {
		return ""
	}
	return seen[len(seen)-1]
}

// TestNetworkSecret: WithSecret's real value reaches the bound HTTPS host
// (which sees it in Authorization, Bearer and Basic) while everything
// inside the sandbox (env, /proc/*/environ, every file) holds only the
// placeholder; the placeholder sent to a host it is not bound to arrives
// as the placeholder, and over plain HTTP is an event. TLS to other hosts
// is not intercepted (the sandbox sees the real server's certificate).
func TestNetworkSecret(t *testing.T) {
	lab := newNetLab(t)
	A := lab.A.String()
	api, www := "api."+labZone, "www."+labZone
	real := "sk-real-" + randHex(16)
	policy := lockbox.NewNetworkPolicy(
		lockbox.Allow(api).Port(443),
		lockbox.Allow(www).Port(80, 443),
	)
	sb := lab.sandbox(t, lockbox.WithNetworkPolicy(policy), lockbox.WithSecret("API_KEY", real, api))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	events := collectEvents(t, ctx, sb)

	res, err := sb.Exec(ctx, "sh", "-c", `printf %s "$API_KEY"`)
	if err != nil {
		t.Fatal(err)
	}
	placeholder := string(res.Stdout)
	if !placeholderRE.MatchString(placeholder) {
		t.Fatalf("$API_KEY inside is %q, want a placeholder", placeholder)
	}
	// Resolve the names first: the address is reachable through them.
	mustReach(t, sb, A, "dns", api)
	mustReach(t, sb, A, "dns", www)

	t.Run("SubstitutedAtBoundHost", func(t *testing.T) {
		got, _ := netProbe(t, sb, "tls", A+":443", api, api, "Authorization: Bearer $API_KEY")
		if !strings.HasPrefix(got, "OK") {
			t.Fatalf("request to the secret's host: %q", got)
		}
		if strings.Contains(got, "lockbox_network_test_CA") {
			t.Fatalf("the connection to %s was not intercepted: %q", api, got)
		}
		if a := lastAuth(lab, api); a != "Bearer "+real {
			t.Fatalf("%s saw Authorization %q, want the real value", api, a)
		}
		mustReach(t, sb, "hello-from", "tls", A+":443", api, api, "BASIC user:$API_KEY")
		if a := lastAuth(lab, api); a != "Basic "+base64.StdEncoding.EncodeToString([]byte("user:"+real)) {
			t.Fatalf("%s saw Basic auth %q, want the real value inside", api, a)
		}
	})
	t.Run("NeverInside", func(t *testing.T) {
		res, err := sb.Exec(ctx, "sh", "-c", "env; cat /proc/*/environ | tr '\\0' '\\n'")
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(string(res.Stdout), real) || !strings.Contains(string(res.Stdout), "API_KEY="+placeholder) {
			t.Fatalf("LEAK or no placeholder: env and environ inside:\n%s", res.Stdout)
		}
		got, _ := netProbe(t, sb, "scan", hexReversed(real))
		if !strings.HasPrefix(got, "CLEAN") {
			t.Fatalf("LEAK: the real value is inside the sandbox: %s", got)
		}
		// Control: the same scan finds the value when it is inside, in an
		// environment and in a file.
		ctl := lab.sandbox(t, lockbox.WithEnv("API_KEY", real))
		if _, err := ctl.Exec(ctx, "sh", "-c", `printf 'x=%s\n' "$API_KEY" > /tmp/leak`); err != nil {
			t.Fatal(err)
		}
		if got, _ := netProbe(t, ctl, "scan", hexReversed(real)); !strings.HasPrefix(got, "FOUND") ||
			!strings.Contains(got, "/environ") || !strings.Contains(got, "/tmp/leak") {
			t.Fatalf("control: the scan misses the value in an environment or a file: %s", got)
		}
	})
	t.Run("PlaceholderElsewhere", func(t *testing.T) {
		// TLS to an allowed host without secrets: end to end (the lab's
		// own certificate), and the placeholder arrives as it is.
		got, _ := netProbe(t, sb, "tls", A+":443", www, www, "Authorization: Bearer $API_KEY")
		if !strings.HasPrefix(got, "OK issuer=lockbox_network_test_CA") {
			t.Fatalf("TLS to %s: %q, want the lab's certificate (not intercepted)", www, got)
		}
		if a := lastAuth(lab, www); a != "Bearer "+placeholder {
			t.Fatalf("%s saw %q, want the placeholder unsubstituted", www, a)
		}
		// Plain HTTP: Lockbox sees the request, leaves it, reports it.
		mustReach(t, sb, "hello-from-"+A+":80", "http", A+":80", www, "Authorization: Bearer $API_KEY")
		if a := lastAuth(lab, www); a != "Bearer "+placeholder {
			t.Fatalf("%s saw %q over HTTP, want the placeholder unsubstituted", www, a)
		}
		ev := events.wait(t, "secret", func(e lockbox.NetworkEvent) bool { return e.Kind == lockbox.EventSecret })
		if strings.Contains(ev.Rule+ev.Name, real) {
			t.Fatalf("LEAK: the event holds the real value: %+v", ev)
		}
	})
	t.Run("Metrics", func(t *testing.T) {
		m, err := sb.Metrics(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if m.Network == nil || m.Network.SecretsSubstituted < 2 {
			t.Fatalf("SecretsSubstituted: %+v", m.Network)
		}
	})
	t.Run("InfoHasNoValue", func(t *testing.T) {
		info, err := sb.Info(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(info.Error, real) {
			t.Fatal("LEAK: the value is in Info")
		}
	})
}

// Secrets are refused without a policy, and for a host the policy does
// not allow; the control is the same secret with the host allowed.
func TestNetworkSecretNeedsAllowedHost(t *testing.T) {
	lab := newNetLab(t)
	ctx := context.Background()
	const real = "sk-refused-value"
	for name, opts := range map[string][]lockbox.Option{
		"no policy":        {lockbox.WithSecret("K", real, "api."+labZone)},
		"host not allowed": {lockbox.WithNetworkPolicy(lockbox.NewNetworkPolicy(lockbox.Allow("www." + labZone))), lockbox.WithSecret("K", real, "api."+labZone)},
	} {
		sb, err := lockbox.CreateSandbox(ctx, opts...)
		if err == nil {
			sb.Remove(ctx)
		}
		if !errors.Is(err, lockbox.ErrInvalidArgument) || strings.Contains(err.Error(), real) {
			t.Errorf("%s: %v", name, err)
		}
	}
	lab.sandbox(t, lockbox.WithNetworkPolicy(lockbox.NewNetworkPolicy(lockbox.Allow("api."+labZone))), lockbox.WithSecret("K", real, "api."+labZone))
}
