package lockbox

import (
	"context"
	"net/netip"
	"time"

	"lockbox.dev/lockbox/internal/wire"
)

// NetworkEventKind says what was refused.
type NetworkEventKind string

const (
	// EventConnect: a TCP connection or UDP datagram to a destination no
	// rule allows (or a deny rule refuses).
	EventConnect NetworkEventKind = "connect"
	// EventDNS: a query for a name no rule allows, answered NXDOMAIN
	// without leaving the host.
	EventDNS NetworkEventKind = "dns"
	// EventDNSAnswer: an allowed name's answer pointed at a non-public or
	// host address no CIDR rule allows (DNS rebinding); that address was
	// dropped from the answer.
	EventDNSAnswer NetworkEventKind = "dns_answer"
	// EventSNI: a TLS server name not allowed for the address it was sent
	// to (domain fronting through an allowed address).
	EventSNI NetworkEventKind = "sni"
	// EventLimit: a per-sandbox bound (open connections, pending DNS
	// queries) was reached.
	EventLimit NetworkEventKind = "limit"
	// EventSecret: a WithSecret placeholder was sent to a host it is not
	// bound to; it went out unchanged.
	EventSecret NetworkEventKind = "secret"
)

// NetworkEvent is one thing the sandbox's network policy refused.
type NetworkEvent struct {
	Kind NetworkEventKind
	Time time.Time
	// Protocol is TCP or UDP (a DNS query's own: UDP), AnyProtocol when
	// the engine gave none.
	Protocol NetworkProtocol
	// IP and Port are the destination. For a DNS event IP is the zero
	// Addr (IsValid false): the query never left; Port is 0 when unknown.
	IP   netip.Addr
	Port uint16
	// Name is the name asked for, the TLS server name, or the names the
	// address was resolved from.
	Name string
	// Rule is the rule that refused, as the engine's JSON form
	// ({"action":"deny","domain":"x.example"}), or "default deny", or the
	// bound that was reached.
	Rule string
	// Dropped is how many events were lost just before this one: the
	// engine keeps at most 1024 unread events per sandbox and drops the
	// oldest when a reader falls behind.
	Dropped uint64
}

// networkEventsWait is how long one poll waits in the engine for a first
// event. The poll is canceled at once when ctx ends or the sandbox is
// closed, so this only bounds how long an idle reader holds one call.
const networkEventsWait = 10_000

// networkEventsBuffer is the channel's capacity: events read from the
// engine but not yet received by the caller.
const networkEventsBuffer = 64

// NetworkEvents returns the sandbox's network denials as they happen
// (for a sandbox made with WithNetworkPolicy; any other gets
// ErrInvalidArgument here). One goroutine reads them from the engine; it
// and the channel end when ctx ends, when the sandbox is closed or
// removed, or when reading fails.
//
// A slow reader never slows the sandbox down and never makes the host
// hold more: while the channel is full nothing more is read, the engine's
// bounded queue drops the oldest events, and the next event delivered
// says how many were lost (NetworkEvent.Dropped; also counted in
// Metrics().Network.EventsDropped). Events go to one reader: two
// NetworkEvents channels on one sandbox share them out between them.
func (s *Sandbox) NetworkEvents(ctx context.Context) (<-chan NetworkEvent, error) {
	// A first poll that does not wait: a sandbox without a policy (or a
	// closed one) is an error for the caller, not a closed channel.
	first, err := s.pollNetworkEvents(ctx, 0)
	if err != nil {
		return nil, err
	}
	out := make(chan NetworkEvent, networkEventsBuffer)
	go s.pumpNetworkEvents(ctx, first, out)
	return out, nil
}

func (s *Sandbox) pollNetworkEvents(ctx context.Context, waitMs uint64) (*wire.NetworkEventsResult, error) {
	max := uint32(256)
	p := wire.NetworkEventsParams{WaitMs: &waitMs, Max: &max}
	var r wire.NetworkEventsResult
	if err := onSandbox(ctx, s, wire.SandboxNetworkEvents, &p, &p.Sandbox, &r); err != nil {
		return nil, err
	}
	return &r, nil
}

func (s *Sandbox) pumpNetworkEvents(ctx context.Context, batch *wire.NetworkEventsResult, out chan<- NetworkEvent) {
	defer close(out)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// Closing the sandbox ends a poll waiting in the engine now, not
	// after networkEventsWait.
	go func() {
		select {
		case <-s.ref.done:
			cancel()
		case <-ctx.Done():
		}
	}()
	var dropped uint64
	for {
		dropped += batch.Dropped
		for i := range batch.Events {
			ev := networkEvent(&batch.Events[i])
			ev.Dropped, dropped = dropped, 0
			select {
			case out <- ev:
			case <-ctx.Done():
				return
			}
		}
		var err error
		if batch, err = s.pollNetworkEvents(ctx, networkEventsWait); err != nil {
			return
		}
	}
}

func networkEvent(w *wire.NetworkEvent) NetworkEvent {
	ev := NetworkEvent{
		Kind: NetworkEventKind(w.Kind),
		Time: time.Unix(0, int64(w.TimeUnixNs)),
		Rule: w.Rule,
	}
	if w.Protocol != nil {
		ev.Protocol = NetworkProtocol(*w.Protocol)
	}
	if w.IP != nil {
		ev.IP, _ = netip.ParseAddr(*w.IP)
	}
	if w.Port != nil {
		ev.Port = *w.Port
	}
	if w.Name != nil {
		ev.Name = *w.Name
	}
	return ev
}
