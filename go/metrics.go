package lockbox

import (
	"context"
	"time"
)

// Metrics is a sandbox's resource use, from its cgroup.
type Metrics struct {
	CPUTime         time.Duration // CPU time of all its processes
	MemoryBytes     uint64        // memory in use now
	MemoryPeakBytes uint64        // highest memory use (0 if untracked)
	Pids            uint64        // processes and threads now
}

// Metrics reads the sandbox's current resource use. Without a cgroup (see
// Info().NotEnforced) it fails with ErrUnsupported.
func (s *Sandbox) Metrics(ctx context.Context) (*Metrics, error) {
	var r struct {
		CPUUsec    uint64 `json:"cpu_usec"`
		Memory     uint64 `json:"memory_bytes"`
		MemoryPeak uint64 `json:"memory_peak_bytes"`
		Pids       uint64 `json:"pids"`
	}
	if err := s.handleCall(ctx, "sandbox.metrics", nil, &r); err != nil {
		return nil, err
	}
	return &Metrics{
		CPUTime:         time.Duration(r.CPUUsec) * time.Microsecond,
		MemoryBytes:     r.Memory,
		MemoryPeakBytes: r.MemoryPeak,
		Pids:            r.Pids,
	}, nil
}
