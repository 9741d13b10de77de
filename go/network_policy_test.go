package lockbox

import (
	"context"
	"encoding/json"
	"errors"
	"slices"
	"strings"
	"testing"
)

// The rule constructors tell a domain from an address by its form, and the
// policy reaches the engine in lockbox-net's JSON form (docs/network.md).
func TestNetworkPolicyWireForm(t *testing.T) {
	p := NewNetworkPolicy(
		Allow("*.PythonHosted.org.").Port(443).TCP(),
		Allow("pypi.org").Port(443, 8443).PortRange(8000, 8100),
		Allow("10.9.0.7/24"),
		Allow("2001:db8::1"),
		Allow("192.0.2.1").UDP(),
		Deny("evil.example"),
		DenyPreset(NonPublic),
		AllowPreset(PublicInternet),
	)
	w, err := p.wire()
	if err != nil {
		t.Fatal(err)
	}
	got, _ := json.Marshal(w)
	want := `{"rules":[` +
		`{"action":"allow","domain":"*.pythonhosted.org","ports":["443"],"protocol":"tcp"},` +
		`{"action":"allow","domain":"pypi.org","ports":["443","8443","8000-8100"]},` +
		`{"action":"allow","cidr":"10.9.0.0/24"},` +
		`{"action":"allow","cidr":"2001:db8::1/128"},` +
		`{"action":"allow","cidr":"192.0.2.1/32","protocol":"udp"},` +
		`{"action":"deny","domain":"evil.example"},` +
		`{"action":"deny","preset":"non-public"},` +
		`{"action":"allow","preset":"public-internet"}]}`
	if string(got) != want {
		t.Fatalf("wire form\n got %s\nwant %s", got, want)
	}
	if s := p.Rules[1].String(); s != "allow domain pypi.org ports 443,8443,8000-8100" {
		t.Errorf("String: %q", s)
	}
}

// Rules derived from one base do not share its ports.
func TestNetworkRuleDerivedRulesDoNotAlias(t *testing.T) {
	base := Allow("example.com").Port(80)
	a := base.Port(443)
	b := base.Port(8443)
	if !slices.Equal(a.Ports, []PortRange{{80, 80}, {443, 443}}) || !slices.Equal(b.Ports, []PortRange{{80, 80}, {8443, 8443}}) || len(base.Ports) != 1 {
		t.Fatalf("base %v a %v b %v", base.Ports, a.Ports, b.Ports)
	}
}

// Every rule the engine would refuse is refused here first, with the
// rule's index and the reason, as ErrInvalidArgument; the control is a
// valid rule of the same shape.
func TestNetworkPolicyValidate(t *testing.T) {
	for _, c := range []struct {
		bad, good NetworkRule
		says      string
	}{
		{Allow("a..example"), Allow("a.example"), "empty label"},
		{Allow("*."), Allow("*.example"), "domain"},
		{Allow("foo*.example"), Allow("foo.example"), "not allowed in a name"},
		{Allow("x.*.example"), Allow("*.x.example"), "not allowed in a name"},
		{Allow("ex ample.com"), Allow("example.com"), "not allowed in a name"},
		{Allow(strings.Repeat("a", 64) + ".com"), Allow(strings.Repeat("a", 63) + ".com"), "longer than 63"},
		{Allow("10.0.0.0/33"), Allow("10.0.0.0/32"), "cidr"},
		{Allow("fe80::1%eth0"), Allow("fe80::1"), "cidr"},
		{Allow("api.example.com:443"), Allow("api.example.com").Port(443), "ports go in Port"},
		{Allow("10.0.0.0/8").Port(0), Allow("10.0.0.0/8").Port(1), "ports are 1-65535"},
		{Allow("10.0.0.0/8").PortRange(90, 80), Allow("10.0.0.0/8").PortRange(80, 90), "first <= last"},
		{NetworkRule{Action: "permit", Domain: "a.example"}, NetworkRule{Action: ActionAllow, Domain: "a.example"}, "action"},
		{NetworkRule{Action: ActionAllow}, NetworkRule{Action: ActionAllow, CIDR: "::/0"}, "exactly one of"},
		{NetworkRule{Action: ActionDeny, Domain: "a.example", CIDR: "10.0.0.0/8"}, NetworkRule{Action: ActionDeny, Domain: "a.example"}, "exactly one of"},
		{AllowPreset("everything"), AllowPreset(PublicInternet), "preset"},
		{NetworkRule{Action: ActionAllow, Domain: "a.example", Protocol: "icmp"}, NetworkRule{Action: ActionAllow, Domain: "a.example", Protocol: UDP}, "protocol"},
	} {
		if err := NewNetworkPolicy(Allow("ok.example"), c.good).Validate(); err != nil {
			t.Errorf("control %+v: %v", c.good, err)
		}
		err := NewNetworkPolicy(Allow("ok.example"), c.bad).Validate()
		if !errors.Is(err, ErrInvalidArgument) || !strings.Contains(err.Error(), "rule 1:") || !strings.Contains(err.Error(), c.says) {
			t.Errorf("%+v: got %v, want ErrInvalidArgument naming rule 1 and %q", c.bad, err, c.says)
		}
	}
	many := make([]NetworkRule, maxNetworkRules+1)
	for i := range many {
		many[i] = Allow("a.example")
	}
	if err := NewNetworkPolicy(many...).Validate(); !errors.Is(err, ErrInvalidArgument) {
		t.Errorf("%d rules: %v", len(many), err)
	}
	if err := NewNetworkPolicy(many[1:]...).Validate(); err != nil {
		t.Errorf("control, %d rules: %v", len(many)-1, err)
	}
	ports := Allow("a.example")
	for i := 0; i <= maxPortRanges; i++ {
		ports = ports.Port(uint16(i + 1))
	}
	if err := NewNetworkPolicy(ports).Validate(); !errors.Is(err, ErrInvalidArgument) {
		t.Errorf("%d port ranges: %v", len(ports.Ports), err)
	}
}

// An invalid policy or secret fails CreateSandbox before the library is
// called (the calls below would otherwise need a library and root).
func TestCreateSandboxRefusesInvalidPolicyAndSecretFirst(t *testing.T) {
	ctx := context.Background()
	_, err := CreateSandbox(ctx, WithNetworkPolicy(NewNetworkPolicy(Allow("bad..name"))))
	if !errors.Is(err, ErrInvalidArgument) || !strings.Contains(err.Error(), "bad..name") {
		t.Fatalf("bad policy: %v", err)
	}
	const value = "sk-the-real-value"
	_, err = CreateSandbox(ctx, WithNetworkPolicy(NewNetworkPolicy(Allow("api.example"))),
		WithSecret("KEY", value+"\r\nX-Injected: 1", "api.example"))
	if !errors.Is(err, ErrInvalidArgument) || !strings.Contains(err.Error(), "control character") {
		t.Fatalf("CRLF in a secret value: %v", err)
	}
	if strings.Contains(err.Error(), value) {
		t.Fatalf("the error shows the secret's value: %v", err)
	}
}

func TestWithSecretValidate(t *testing.T) {
	const value = "sk-never-in-an-error"
	for _, c := range []struct {
		name, value string
		hosts       []string
		says        string
	}{
		{"1KEY", value, []string{"api.example"}, "environment variable name"},
		{"KEY=X", value, []string{"api.example"}, "environment variable name"},
		{"KEY", "", []string{"api.example"}, "empty value"},
		{"KEY", value + "\n", []string{"api.example"}, "control character"},
		{"KEY", value, nil, "no hosts"},
		{"KEY", value, []string{"10.0.0.1"}, "not an address"},
		{"KEY", value, []string{"a..example"}, "empty label"},
		{"KEY", value, []string{"*.azurewebsites.net"}, "not a wildcard"},
	} {
		var cfg sandboxConfig
		WithSecret(c.name, c.value, c.hosts...)(&cfg)
		err := cfg.invalid
		if !errors.Is(err, ErrInvalidArgument) || !strings.Contains(err.Error(), c.says) {
			t.Errorf("%q %v: got %v, want %q", c.name, c.hosts, err, c.says)
		} else if strings.Contains(err.Error(), value) {
			t.Errorf("%q: the error shows the value: %v", c.name, err)
		}
	}
	var cfg sandboxConfig
	WithSecret("API_KEY", value, "API.Example.")(&cfg)
	if cfg.invalid != nil || len(cfg.Secrets) != 1 || cfg.Secrets[0].Hosts[0] != "api.example" {
		t.Fatalf("control: %v %+v", cfg.invalid, cfg.Secrets)
	}
	WithSecret("API_KEY", "other", "api.example")(&cfg)
	if !errors.Is(cfg.invalid, ErrInvalidArgument) || !strings.Contains(cfg.invalid.Error(), "twice") {
		t.Fatalf("a name given twice: %v", cfg.invalid)
	}
}

func TestWithSecretHeaders(t *testing.T) {
	for _, c := range []struct {
		opts []Option
		says string
	}{
		{[]Option{WithSecretHeaders("KEY", "X-Key")}, "no WithSecret of that name"},
		{[]Option{WithSecret("KEY", "v", "api.example"), WithSecretHeaders("KEY")}, "no headers"},
		{[]Option{WithSecret("KEY", "v", "api.example"), WithSecretHeaders("KEY", "X Key")}, "not a header name"},
		{[]Option{WithSecret("KEY", "v", "api.example"), WithSecretHeaders("KEY", "X-Key:")}, "not a header name"},
	} {
		var cfg sandboxConfig
		for _, o := range c.opts {
			o(&cfg)
		}
		if !errors.Is(cfg.invalid, ErrInvalidArgument) || !strings.Contains(cfg.invalid.Error(), c.says) {
			t.Errorf("got %v, want %q", cfg.invalid, c.says)
		}
	}
	var cfg sandboxConfig
	WithSecret("KEY", "v", "api.example")(&cfg)
	WithSecretHeaders("KEY", "X-Key", "X-Other")(&cfg)
	if cfg.invalid != nil || !slices.Equal(cfg.Secrets[0].Headers, []string{"X-Key", "X-Other"}) {
		t.Fatalf("control: %v %+v", cfg.invalid, cfg.Secrets)
	}
}
