package wire

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
)

// goldenDir is where the ffi side keeps one file per method:
// {"method", "params", "result"}, every optional field filled. The Rust
// structs are tested against the same files, so both sides agree on every
// key through them. LOCKBOX_GOLDEN_DIR points elsewhere (for a draft).
func goldenDir() string {
	if d := os.Getenv("LOCKBOX_GOLDEN_DIR"); d != "" {
		return d
	}
	return filepath.Join("..", "..", "..", "ffi", "tests", "golden")
}

type golden struct {
	Method string          `json:"method"`
	Params json.RawMessage `json:"params"`
	Result json.RawMessage `json:"result"`
}

func readGolden(t *testing.T) map[string]golden {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(goldenDir(), "*.json"))
	if err != nil {
		t.Fatal(err)
	}
	if len(files) == 0 {
		t.Fatalf("no golden files in %s", goldenDir())
	}
	out := map[string]golden{}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		var g golden
		d := json.NewDecoder(bytes.NewReader(b))
		d.DisallowUnknownFields()
		if err := d.Decode(&g); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		if want := strings.TrimSuffix(filepath.Base(f), ".json"); g.Method != want {
			t.Fatalf("%s: method %q, want the file's name %q", f, g.Method, want)
		}
		out[g.Method] = g
	}
	return out
}

// roundTrip decodes doc into a fresh value of v's type with unknown fields
// refused, encodes it again and reports how the two differ ("" if they
// are the same JSON value). An absent or null doc is {}.
func roundTrip(doc json.RawMessage, fresh any) (string, error) {
	if len(bytes.TrimSpace(doc)) == 0 || string(bytes.TrimSpace(doc)) == "null" {
		doc = json.RawMessage("{}")
	}
	d := json.NewDecoder(bytes.NewReader(doc))
	d.DisallowUnknownFields()
	if err := d.Decode(fresh); err != nil {
		return "", err
	}
	again, err := json.Marshal(fresh)
	if err != nil {
		return "", err
	}
	want, got := value(doc), value(again)
	if !reflect.DeepEqual(want, got) {
		return "golden " + string(doc) + "\n  Go re-encodes " + string(again), nil
	}
	return "", nil
}

func value(b []byte) any {
	d := json.NewDecoder(bytes.NewReader(b))
	d.UseNumber()
	var v any
	if err := d.Decode(&v); err != nil {
		panic(err)
	}
	return v
}

func TestGoldenMethodSet(t *testing.T) {
	g := readGolden(t)
	var golden, ours []string
	for m := range g {
		golden = append(golden, m)
	}
	for _, s := range all() {
		ours = append(ours, s.methodName())
	}
	slices.Sort(golden)
	slices.Sort(ours)
	if dup := slices.Compact(slices.Clone(ours)); len(dup) != len(ours) {
		t.Fatalf("a method is listed twice: %v", ours)
	}
	if !slices.Equal(golden, ours) {
		t.Fatalf("method sets differ\n  golden: %v\n  wire:   %v", golden, ours)
	}
}

func TestGoldenRoundTrip(t *testing.T) {
	g := readGolden(t)
	for _, s := range all() {
		doc, ok := g[s.methodName()]
		if !ok {
			continue // TestGoldenMethodSet reports it
		}
		t.Run(s.methodName(), func(t *testing.T) {
			for _, part := range []struct {
				name  string
				doc   json.RawMessage
				fresh any
			}{{"params", doc.Params, s.newParams()}, {"result", doc.Result, s.newResult()}} {
				diff, err := roundTrip(part.doc, part.fresh)
				if err != nil {
					t.Errorf("%s: %v", part.name, err)
				} else if diff != "" {
					t.Errorf("%s differ:\n  %s", part.name, diff)
				}
			}
		})
	}
}

// The round trip catches each way the two sides can drift apart: a key
// the Go type lacks, a key it drops, a key spelled in another case, a
// value of another type.
func TestRoundTripDetectsDrift(t *testing.T) {
	ok := `{"exec":7,"signal":9}`
	if diff, err := roundTrip(json.RawMessage(ok), new(ExecSignalParams)); err != nil || diff != "" {
		t.Fatalf("control: a matching document must pass: %v %s", err, diff)
	}
	for name, doc := range map[string]string{
		"unknown key":  `{"exec":7,"signal":9,"handle":7}`,
		"renamed key":  `{"handle":7,"signal":9}`,
		"case of key":  `{"Exec":7,"signal":9}`,
		"type of vale": `{"exec":"7","signal":9}`,
	} {
		diff, err := roundTrip(json.RawMessage(doc), new(ExecSignalParams))
		if err == nil && diff == "" {
			t.Errorf("%s: %s passed", name, doc)
		}
	}
	// A field the Go side would leave out (omitempty on a value the
	// golden file fills with its zero) is a difference too.
	if diff, err := roundTrip(json.RawMessage(`{"sandbox":1,"argv":["x"],"stdin":false}`), new(ExecStartParams)); err != nil || diff == "" {
		t.Errorf("a dropped key passed: %v %q", err, diff)
	}
}
