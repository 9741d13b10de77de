// Package checkmode holds one switch: whether lockbox.Check may ask the
// loaded engine for its microVM verdict (lockbox doctor turns it on).
// A program or test that merely has the library loaded keeps Check
// engine-free: asking opens the engine with whatever LOCKBOX_HOME is set
// at that moment, for the rest of the process, and may boot a probe VM.
package checkmode

import "sync/atomic"

var engine atomic.Bool

// UseEngine lets Check ask the loaded engine from now on.
func UseEngine() { engine.Store(true) }

// Engine reports whether Check may ask the loaded engine.
func Engine() bool { return engine.Load() }
