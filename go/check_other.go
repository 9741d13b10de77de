//go:build !linux

package lockbox

import (
	"context"
	"runtime"
)

// hostChecks: the sandbox is made of Linux namespaces; elsewhere there is
// nothing to probe.
func hostChecks() []func(context.Context) CheckItem {
	return []func(context.Context) CheckItem{func(context.Context) CheckItem {
		return CheckItem{Name: "os", Status: CheckFail, Found: runtime.GOOS + ": sandboxes need Linux",
			Fix: "run on Linux (5.12 or later)"}
	}}
}
