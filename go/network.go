package lockbox

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"lockbox.dev/lockbox/internal/wire"
)

// NetworkPolicy is a sandbox's egress policy: a list of rules, with
// everything no rule allows denied, and a matching deny winning over every
// allow whatever the order (read a policy as two sets).
//
// Build one with NewNetworkPolicy and the rule constructors:
//
//	lockbox.NewNetworkPolicy(
//		lockbox.Allow("pypi.org").Port(443),
//		lockbox.Allow("*.pythonhosted.org").Port(443),
//		lockbox.Allow("10.9.0.0/24").PortRange(8000, 8100).TCP(),
//		lockbox.DenyPreset(lockbox.NonPublic),
//	)
//
// or as a struct literal of NetworkRule values. The zero NetworkPolicy
// denies everything.
//
// With a policy the sandbox's DNS resolver is Lockbox's: a name no rule
// allows gets NXDOMAIN without leaving the host, and an address is
// reachable only through a CIDR or preset rule or as the answer to an
// allowed name. For TLS the server name must be allowed too. A refused
// connection fails at once inside (reset, or ECONNREFUSED for UDP) and is
// a NetworkEvent. docs/network.md has the model and its limits.
type NetworkPolicy struct {
	Rules []NetworkRule
}

// NewNetworkPolicy is a policy of these rules.
func NewNetworkPolicy(rules ...NetworkRule) NetworkPolicy {
	return NetworkPolicy{Rules: append([]NetworkRule(nil), rules...)}
}

// NetworkAction is what a rule does with what it matches.
type NetworkAction string

const (
	ActionAllow NetworkAction = "allow"
	ActionDeny  NetworkAction = "deny"
)

// NetworkPreset names a set of addresses.
type NetworkPreset string

const (
	// PublicInternet is every address except the host's own and the
	// non-public ranges (private, loopback, link-local and so the cloud
	// metadata service, CGNAT, multicast, reserved; for IPv6 ULA,
	// link-local, NAT64, 6to4, Teredo). Plain NetworkOutbound means this.
	PublicInternet NetworkPreset = "public-internet"
	// NonPublic is exactly those excluded ranges plus the host's own
	// addresses; meant for deny rules.
	NonPublic NetworkPreset = "non-public"
)

// NetworkProtocol limits a rule to one transport.
type NetworkProtocol string

const (
	AnyProtocol NetworkProtocol = "" // TCP and UDP
	TCP         NetworkProtocol = "tcp"
	UDP         NetworkProtocol = "udp"
)

// PortRange is an inclusive range of ports; a single port is First ==
// Last.
type PortRange struct{ First, Last uint16 }

// NetworkRule allows or denies one destination, optionally only on some
// ports and one protocol. Exactly one of Domain, CIDR and Preset is set.
type NetworkRule struct {
	Action NetworkAction
	// Domain is a name ("api.example.com": that name only) or a wildcard
	// suffix ("*.example.com": every name strictly below example.com, not
	// example.com itself). Case and a trailing dot do not matter.
	Domain string
	// CIDR is an address range ("10.9.0.0/24", "2001:db8::/32") or one
	// address. An allow of 0.0.0.0/0 or ::/0 means the public addresses;
	// loopback, the host's own and private ranges are reachable only
	// through a rule that names their range.
	CIDR   string
	Preset NetworkPreset
	// Ports: empty means every port.
	Ports []PortRange
	// Protocol: AnyProtocol means both. A rule by name allows UDP only
	// when it says UDP (TLS's server name check, which makes a name safe
	// to trust for an address, exists only over TCP).
	Protocol NetworkProtocol
}

// Allow is a rule allowing dest: a domain, a "*.suffix" wildcard, a CIDR
// or a single IPv4/IPv6 address (told apart by their form).
func Allow(dest string) NetworkRule { return destRule(ActionAllow, dest) }

// Deny is a rule denying dest (as for Allow). It wins over every allow.
func Deny(dest string) NetworkRule { return destRule(ActionDeny, dest) }

// AllowPreset is a rule allowing a preset's addresses.
func AllowPreset(p NetworkPreset) NetworkRule { return NetworkRule{Action: ActionAllow, Preset: p} }

// DenyPreset is a rule denying a preset's addresses.
func DenyPreset(p NetworkPreset) NetworkRule { return NetworkRule{Action: ActionDeny, Preset: p} }

func destRule(a NetworkAction, dest string) NetworkRule {
	if looksLikeAddress(dest) {
		return NetworkRule{Action: a, CIDR: dest}
	}
	return NetworkRule{Action: a, Domain: dest}
}

// looksLikeAddress: a prefix or an address; anything else is taken as a
// domain and validated as one.
func looksLikeAddress(s string) bool {
	if strings.Contains(s, "/") || strings.Contains(s, ":") {
		return true
	}
	_, err := netip.ParseAddr(s)
	return err == nil
}

// Port returns the rule limited to these ports (added to any it has).
func (r NetworkRule) Port(ports ...uint16) NetworkRule {
	// A copy: rules built from one base must not share its array.
	r.Ports = slices.Clone(r.Ports)
	for _, p := range ports {
		r.Ports = append(r.Ports, PortRange{p, p})
	}
	return r
}

// PortRange returns the rule limited to first..last inclusive (added to
// any ports it has).
func (r NetworkRule) PortRange(first, last uint16) NetworkRule {
	r.Ports = append(slices.Clone(r.Ports), PortRange{first, last})
	return r
}

// TCP returns the rule limited to TCP.
func (r NetworkRule) TCP() NetworkRule { r.Protocol = TCP; return r }

// UDP returns the rule limited to UDP.
func (r NetworkRule) UDP() NetworkRule { r.Protocol = UDP; return r }

// String is the rule in short ("allow domain pypi.org ports 443 tcp"),
// for logs and messages. (NetworkEvent.Rule is the engine's JSON form.)
func (r NetworkRule) String() string {
	w, err := r.wire()
	if err != nil {
		return fmt.Sprintf("invalid rule (%v)", err)
	}
	return ruleString(w)
}

func ruleString(w wire.NetworkRule) string {
	var b strings.Builder
	b.WriteString(w.Action)
	switch {
	case w.Domain != "":
		b.WriteString(" domain " + w.Domain)
	case w.CIDR != "":
		b.WriteString(" cidr " + w.CIDR)
	default:
		b.WriteString(" preset " + w.Preset)
	}
	if len(w.Ports) > 0 {
		b.WriteString(" ports " + strings.Join(w.Ports, ","))
	}
	if w.Protocol != "" {
		b.WriteString(" " + w.Protocol)
	}
	return b.String()
}

// Validate reports the first rule the engine would refuse, with its
// index and why. CreateSandbox and SetNetworkPolicy call it before
// sending anything; the error matches ErrInvalidArgument.
func (p NetworkPolicy) Validate() error {
	_, err := p.wire()
	return err
}

// Bounds, the engine's (lockbox-net policy.rs): a policy crosses the C
// ABI and every rule is walked for every connection.
const (
	maxNetworkRules = 1024
	maxPortRanges   = 64
	maxDomainLen    = 253
	maxLabelLen     = 63
)

func (p NetworkPolicy) wire() (*wire.NetworkPolicy, error) {
	if len(p.Rules) > maxNetworkRules {
		return nil, policyError(fmt.Sprintf("%d rules: at most %d", len(p.Rules), maxNetworkRules))
	}
	w := &wire.NetworkPolicy{Rules: make([]wire.NetworkRule, 0, len(p.Rules))}
	for i, r := range p.Rules {
		wr, err := r.wire()
		if err != nil {
			return nil, policyError(fmt.Sprintf("rule %d: %v", i, err))
		}
		w.Rules = append(w.Rules, wr)
	}
	return w, nil
}

func policyError(msg string) *Error {
	return usageError("network policy", msg, nil)
}

func (r NetworkRule) wire() (wire.NetworkRule, error) {
	w := wire.NetworkRule{Action: string(r.Action)}
	if r.Action != ActionAllow && r.Action != ActionDeny {
		return w, fmt.Errorf("action %q: must be ActionAllow or ActionDeny", r.Action)
	}
	set := 0
	for _, s := range []string{r.Domain, r.CIDR, string(r.Preset)} {
		if s != "" {
			set++
		}
	}
	if set != 1 {
		return w, fmt.Errorf("exactly one of Domain, CIDR, Preset must be set (%d are)", set)
	}
	switch {
	case r.Domain != "":
		d, err := normalDomain(r.Domain)
		if err != nil {
			return w, err
		}
		w.Domain = d
	case r.CIDR != "":
		c, err := normalCIDR(r.CIDR)
		if err != nil {
			return w, err
		}
		w.CIDR = c
	default:
		if r.Preset != PublicInternet && r.Preset != NonPublic {
			return w, fmt.Errorf("preset %q: must be PublicInternet or NonPublic", r.Preset)
		}
		w.Preset = string(r.Preset)
	}
	if len(r.Ports) > maxPortRanges {
		return w, fmt.Errorf("%d port ranges: at most %d", len(r.Ports), maxPortRanges)
	}
	for _, p := range r.Ports {
		if p.First == 0 || p.First > p.Last {
			return w, fmt.Errorf("port range %d-%d: ports are 1-65535, first <= last", p.First, p.Last)
		}
		if p.First == p.Last {
			w.Ports = append(w.Ports, strconv.Itoa(int(p.First)))
		} else {
			w.Ports = append(w.Ports, fmt.Sprintf("%d-%d", p.First, p.Last))
		}
	}
	switch r.Protocol {
	case AnyProtocol, TCP, UDP:
		w.Protocol = string(r.Protocol)
	default:
		return w, fmt.Errorf("protocol %q: must be TCP, UDP or AnyProtocol", r.Protocol)
	}
	return w, nil
}

// normalDomain lower-cases d, drops a trailing dot and checks it as the
// engine does: labels of a-z 0-9 - _ (at most 63 each, none empty), at
// most 253 characters, a wildcard only as a leading "*.".
func normalDomain(d string) (string, error) {
	n := strings.ToLower(strings.TrimSuffix(d, "."))
	name := strings.TrimPrefix(n, "*.")
	if name == "" || len(name) > maxDomainLen {
		return "", fmt.Errorf("domain %q: must be 1 to %d characters", d, maxDomainLen)
	}
	for _, label := range strings.Split(name, ".") {
		if label == "" || len(label) > maxLabelLen {
			return "", fmt.Errorf("domain %q: empty label or one longer than %d", d, maxLabelLen)
		}
		for _, c := range label {
			if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
				return "", fmt.Errorf("domain %q: %q is not allowed in a name (a-z 0-9 - _; a wildcard only as a leading \"*.\")", d, c)
			}
		}
	}
	return n, nil
}

// normalCIDR accepts a prefix or a single address and sends the prefix
// with its host bits cleared (what the engine matches).
func normalCIDR(s string) (string, error) {
	if p, err := netip.ParsePrefix(s); err == nil {
		return p.Masked().String(), nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil || a.Zone() != "" {
		return "", fmt.Errorf("cidr %q: want an address range (10.0.0.0/8, 2001:db8::/32) or an address; ports go in Port or PortRange", s)
	}
	return netip.PrefixFrom(a, a.BitLen()).String(), nil
}

// WithNetworkPolicy gives the sandbox network access under policy p:
// default deny, allow and deny rules by domain, address range, port and
// protocol, enforced outside the sandbox by a forwarder no process inside
// can reach or reconfigure. A policy is a network mode of its own: with
// WithNetwork(NetworkOutbound) it is ErrInvalidArgument (the
// PublicInternet preset is what outbound means). WithPort works as with
// NetworkOutbound: the host's 127.0.0.1:hostPort (loopback only) reaches
// the sandbox's guestPort; the policy rules egress, not these inbound
// connections. A host port already in use fails CreateSandbox with
// ErrAlreadyExists. IPv6 is off on the policy path. An invalid policy
// makes CreateSandbox fail with ErrInvalidArgument (see
// NetworkPolicy.Validate). Change it later with
// SetNetworkPolicy.
func WithNetworkPolicy(p NetworkPolicy) Option {
	return func(c *sandboxConfig) {
		w, err := p.wire()
		if err != nil {
			c.refuse(err)
			return
		}
		c.NetworkPolicy = w
	}
}

// SetNetworkPolicy replaces the rules of a running sandbox made with
// WithNetworkPolicy: every new connection, datagram and DNS query is
// decided by p at once; connections already open stay open. A sandbox
// made without a policy gets ErrInvalidArgument (its network mode cannot
// change while it runs).
func (s *Sandbox) SetNetworkPolicy(ctx context.Context, p NetworkPolicy) error {
	w, err := p.wire()
	if err != nil {
		return err
	}
	params := wire.SetNetworkPolicyParams{Policy: *w}
	return onSandbox(ctx, s, wire.SandboxSetNetworkPolicy, &params, &params.Sandbox, nil)
}
