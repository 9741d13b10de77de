package lockbox

import (
	"bytes"
	"errors"
	"testing"
)

func TestCapBufferKeepsTheLimitAndKillsOnce(t *testing.T) {
	kills := 0
	b := &capBuffer{limit: 10, over: func() { kills++ }}
	for _, p := range []string{"01234", "56789", "abc", "def"} {
		// Every write is accepted (the rest is discarded, not refused),
		// so the stream feeding it drains to its end.
		if n, err := b.Write([]byte(p)); n != len(p) || err != nil {
			t.Fatalf("Write(%q) = %d, %v", p, n, err)
		}
	}
	if got := string(b.Bytes()); got != "0123456789" || !b.exceeded() || kills != 1 {
		t.Fatalf("kept %q, exceeded %v, kills %d", got, b.exceeded(), kills)
	}
	// Exactly at the limit is not past it.
	b = &capBuffer{limit: 3}
	b.Write([]byte("abc"))
	if b.exceeded() {
		t.Fatal("3 bytes under a 3-byte cap exceeded it")
	}
	// NoLimit keeps everything.
	b = &capBuffer{limit: NoLimit}
	big := bytes.Repeat([]byte("x"), 1<<20)
	b.Write(big)
	if len(b.Bytes()) != 1<<20 || b.exceeded() {
		t.Fatal("NoLimit capped")
	}
}

func TestLimitErrorsMatchTheirSentinels(t *testing.T) {
	err := error(outputLimitError("exec", "stdout", 5))
	if !errors.Is(err, ErrOutputLimit) || !errors.Is(err, ErrResourceExhausted) || errors.Is(err, ErrSizeLimit) {
		t.Fatalf("%v matches the wrong sentinels", err)
	}
	err = limitError("fs.read_file", "too big", ErrSizeLimit)
	if !errors.Is(err, ErrSizeLimit) || !errors.Is(err, ErrResourceExhausted) || errors.Is(err, ErrOutputLimit) {
		t.Fatalf("%v matches the wrong sentinels", err)
	}
}
