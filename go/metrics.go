package lockbox

import (
	"context"
	"time"

	"lockbox.dev/lockbox/internal/wire"
)

// Metrics is a sandbox's resource use, from its cgroup.
type Metrics struct {
	CPUTime         time.Duration // CPU time of all its processes
	MemoryBytes     uint64        // memory in use now
	MemoryPeakBytes uint64        // highest memory use (0 if untracked)
	Pids            uint64        // processes and threads now
	// Network is what the network policy decided; nil for a sandbox
	// made without WithNetworkPolicy.
	Network *NetworkMetrics
}

// Metrics reads the sandbox's current resource use. Without a cgroup (see
// Info().NotEnforced) it fails with ErrUnsupported.
func (s *Sandbox) Metrics(ctx context.Context) (*Metrics, error) {
	var p wire.SandboxParams
	var r wire.Metrics
	if err := onSandbox(ctx, s, wire.SandboxMetrics, &p, &p.Sandbox, &r); err != nil {
		return nil, err
	}
	return &Metrics{
		CPUTime:         time.Duration(r.CPUUsec) * time.Microsecond,
		MemoryBytes:     r.MemoryBytes,
		MemoryPeakBytes: r.MemoryPeakBytes,
		Pids:            r.Pids,
		Network:         networkMetrics(r.Network),
	}, nil
}
