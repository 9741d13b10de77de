// Package wire holds the JSON shape of every lockbox_call method: one
// params and one result type per method, named together by a Method
// value. Package lockbox builds requests and reads replies only through
// these types, so a key is spelled in exactly one place on the Go side,
// and the golden test (golden_test.go) holds them to the files the Rust
// side is tested against (ffi/tests/golden).
//
// Conventions (shared with the Rust structs): a field the engine may do
// without is `omitempty`, as a pointer when its zero value is a meaningful
// request (a file mode of 0); every handle is a uint64 named for what it
// is a handle to ("sandbox", "exec", "stream").
package wire

// Method is one ABI method: its name and, in its type, the types of its
// params (P) and result (R). Callers pass a Method instead of a string, so
// a request cannot be sent with another method's params or read into
// another method's result.
type Method[P, R any] struct{ Name string }

// Empty is the params of a method that takes none, and the result of one
// that returns nothing ({}).
type Empty struct{}

// spec is a Method with its types erased, for the golden test.
type spec interface {
	methodName() string
	newParams() any
	newResult() any
}

func (m Method[P, R]) methodName() string { return m.Name }
func (Method[P, R]) newParams() any       { return new(P) }
func (Method[P, R]) newResult() any       { return new(R) }

// all lists every method, group by group (each group's file keeps its
// list next to its types).
func all() []spec {
	var out []spec
	for _, g := range [][]spec{coreMethods, sandboxMethods, snapshotMethods, execMethods, fsMethods, imageMethods, volumeMethods, networkMethods, hostMethods} {
		out = append(out, g...)
	}
	return out
}
