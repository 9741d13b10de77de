package wire

// exec.* methods: a process's stdio are stream handles, the process an
// exec handle.
var (
	ExecStart  = Method[ExecStartParams, ExecStarted]{"exec.start"}
	ExecWait   = Method[ExecParams, ExecExit]{"exec.wait"}
	ExecSignal = Method[ExecSignalParams, Empty]{"exec.signal"}
	ExecResize = Method[ExecResizeParams, Empty]{"exec.resize"}
)

var execMethods = []spec{ExecStart, ExecWait, ExecSignal, ExecResize}

type ExecStartParams struct {
	Sandbox   uint64   `json:"sandbox"`
	Argv      []string `json:"argv"`
	Env       []string `json:"env,omitempty"`
	Cwd       string   `json:"cwd,omitempty"`
	User      string   `json:"user,omitempty"`
	TimeoutMs uint64   `json:"timeout_ms,omitempty"`
	Stdin     bool     `json:"stdin,omitempty"`
	TTY       bool     `json:"tty,omitempty"`
	Rows      uint16   `json:"rows,omitempty"`
	Cols      uint16   `json:"cols,omitempty"`
}

// ExecStarted holds the exec handle and its stream handles: stdin only
// when asked for, stderr not with a tty.
type ExecStarted struct {
	Exec   uint64  `json:"exec"`
	Pid    int     `json:"pid"`
	Stdin  *uint64 `json:"stdin,omitempty"`
	Stdout *uint64 `json:"stdout,omitempty"`
	Stderr *uint64 `json:"stderr,omitempty"`
}

type ExecParams struct {
	Exec uint64 `json:"exec"`
}

// ExecExit is how a process ended: ExitCode is Code, or 128 + Signal.
type ExecExit struct {
	ExitCode int  `json:"exit_code"`
	Code     *int `json:"code,omitempty"`
	Signal   *int `json:"signal,omitempty"`
	TimedOut bool `json:"timed_out"`
}

type ExecSignalParams struct {
	Exec   uint64 `json:"exec"`
	Signal int    `json:"signal"`
}

type ExecResizeParams struct {
	Exec uint64 `json:"exec"`
	Rows uint16 `json:"rows"`
	Cols uint16 `json:"cols"`
}
