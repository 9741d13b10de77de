package lockbox

import "lockbox.dev/lockbox/internal/wire"

// NetworkMetrics counts what a sandbox's network policy decided, since
// the sandbox started.
type NetworkMetrics struct {
	ConnectionsAllowed uint64 // TCP connections and UDP flows let through
	ConnectionsDenied  uint64
	DNSAnswered        uint64 // queries for allowed names, asked upstream
	DNSDenied          uint64 // queries answered NXDOMAIN locally
	DNSAnswersRefused  uint64 // answer addresses dropped (rebinding)
	EventsDropped      uint64 // NetworkEvents lost to a slow reader
	SecretsSubstituted uint64 // WithSecret placeholders replaced on the way out
}

func networkMetrics(w *wire.NetworkCounters) *NetworkMetrics {
	if w == nil {
		return nil
	}
	return &NetworkMetrics{
		ConnectionsAllowed: w.ConnectionsAllowed,
		ConnectionsDenied:  w.ConnectionsDenied,
		DNSAnswered:        w.DNSAnswered,
		DNSDenied:          w.DNSDenied,
		DNSAnswersRefused:  w.DNSAnswersRefused,
		EventsDropped:      w.EventsDropped,
		SecretsSubstituted: w.SecretsSubstituted,
	}
}
