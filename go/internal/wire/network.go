package wire

// Network egress policy (contract C1; docs/network.md "The model"). The
// policy's JSON is lockbox-net's own form, so these types are its rules
// one for one.
var (
	SandboxSetNetworkPolicy = Method[SetNetworkPolicyParams, Empty]{"sandbox.set_network_policy"}
	SandboxNetworkEvents    = Method[NetworkEventsParams, NetworkEventsResult]{"sandbox.network_events"}
)

var networkMethods = []spec{SandboxSetNetworkPolicy, SandboxNetworkEvents}

// NetworkPolicy is a list of rules; what no rule allows is denied, and a
// matching deny wins over every allow.
type NetworkPolicy struct {
	Rules []NetworkRule `json:"rules"`
}

// NetworkRule names exactly one of Domain, CIDR, Preset.
type NetworkRule struct {
	Action   string   `json:"action"` // "allow" | "deny"
	Domain   string   `json:"domain,omitempty"`
	CIDR     string   `json:"cidr,omitempty"`
	Preset   string   `json:"preset,omitempty"` // "public-internet" | "non-public"
	Ports    []string `json:"ports,omitempty"`  // "443", "8000-8100"; none: every port
	Protocol string   `json:"protocol,omitempty"`
}

// Secret is one WithSecret. Value goes to the engine in sandbox.create
// only; the engine never echoes it (info.config has it empty).
type Secret struct {
	Name    string   `json:"name"`
	Value   string   `json:"value,omitempty"`
	Hosts   []string `json:"hosts"`
	Headers []string `json:"headers,omitempty"`
}

type SetNetworkPolicyParams struct {
	Sandbox uint64        `json:"sandbox"`
	Policy  NetworkPolicy `json:"policy"`
}

// NetworkEventsParams: wait up to WaitMs (0..=30000) for a first event;
// at most Max (default 256, at most 1024) events per reply.
type NetworkEventsParams struct {
	Sandbox uint64  `json:"sandbox"`
	WaitMs  *uint64 `json:"wait_ms,omitempty"`
	Max     *uint32 `json:"max,omitempty"`
}

// NetworkEventsResult: Dropped is how many events the engine's bounded
// queue lost since the previous call.
type NetworkEventsResult struct {
	Events  []NetworkEvent `json:"events"`
	Dropped uint64         `json:"dropped"`
}

// NetworkEvent is one refusal (or a secret's placeholder going to a host
// it is not bound to). The nullable fields are null, not absent, when
// they do not apply.
type NetworkEvent struct {
	Kind       string  `json:"kind"` // connect | dns | dns_answer | sni | limit | secret
	TimeUnixNs uint64  `json:"time_unix_ns"`
	Protocol   *string `json:"protocol"`
	IP         *string `json:"ip"`
	Port       *uint16 `json:"port"`
	Name       *string `json:"name"`
	Rule       string  `json:"rule"`
}

// NetworkCounters is sandbox.metrics' "network", present only for a
// sandbox with a policy.
type NetworkCounters struct {
	ConnectionsAllowed uint64 `json:"connections_allowed"`
	ConnectionsDenied  uint64 `json:"connections_denied"`
	DNSAnswered        uint64 `json:"dns_answered"`
	DNSDenied          uint64 `json:"dns_denied"`
	DNSAnswersRefused  uint64 `json:"dns_answers_refused"`
	EventsDropped      uint64 `json:"events_dropped"`
	SecretsSubstituted uint64 `json:"secrets_substituted"`
}
