package tests

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"lockbox.dev/lockbox"
)

// The session-reset magics of protocol/src/reset.rs.
var (
	resetMarker = []byte{0x09, 0x8e, 0x62, 0x6c, 0x4f, 0x10, 0x32, 0xb7, 0x5f, 0xf1, 0xb5, 0xb4, 0x3d, 0xe3, 0x9b, 0x90}
)

// agentFrame is one control frame of the agent protocol (protocol/src/frame.rs).
func agentFrame(id uint32, msg any) []byte {
	payload, _ := json.Marshal(msg)
	b := make([]byte, 10, 10+len(payload))
	binary.BigEndian.PutUint32(b[0:], uint32(6+len(payload)))
	b[4] = 1 // control
	b[5] = 0
	binary.BigEndian.PutUint32(b[6:], id)
	return append(b, payload...)
}

// markerPayload is data that, written by the host into a microVM, would
// start a new agent session inside its own bytes and speak for the host
// in it: a Hello, then an Exec of argv as root.
func markerPayload(argv []string) []byte {
	var p bytes.Buffer
	p.WriteString("an ordinary looking prefix\n")
	p.Write(resetMarker)
	p.WriteString("0123456789abcdef") // any token: the guest echoes what it got
	p.Write(agentFrame(0, map[string]any{"type": "hello", "version": 1}))
	p.Write(agentFrame(7, map[string]any{"type": "exec", "argv": argv, "env": []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin"},
		"cwd": "/", "user": "0", "tty": false, "timeout_ms": nil, "stdin": false, "rows": nil, "cols": nil}))
	// Valid frames after it keep the new session busy (and the guest's
	// port readable) while the host reacts.
	ping := agentFrame(9, map[string]any{"type": "ping"})
	for p.Len() < 2<<20 {
		p.Write(ping)
	}
	p.WriteString("\nan ordinary looking suffix\n")
	return p.Bytes()
}

// vmAttackMarker (TestVMAttackS6's subtest, on its VM, /data its volume):
// data the host writes into a microVM (a file, an exec's stdin: often
// content from elsewhere, e.g. another sandbox's output or an upload)
// crosses the same virtio-serial
// stream as the agent protocol. If the guest reads a session marker inside
// it, the bytes after it must not become requests of a new session: they
// would run as the host's own requests (any command, any user). Control:
// the same Exec, asked by the host itself, does write the proof file into
// the volume (the check sees a real success), and the data really arrives
// when it holds no marker.
func vmAttackMarker(ctx context.Context, t *testing.T, sb *lockbox.Sandbox, vol string) {
	// Control: the host's own Exec of the same argv writes the proof.
	proof := func(name string) []string {
		return []string{"sh", "-c", "id -u > /data/" + name}
	}
	if res, err := sb.ExecArgs(ctx, proof("control"), lockbox.WithExecUser("0")); err != nil || res.ExitCode != 0 {
		t.Fatalf("control exec: %v %+v", err, res)
	}
	if b, _ := os.ReadFile(filepath.Join(vol, "control")); strings.TrimSpace(string(b)) != "0" {
		t.Fatalf("control: the proof file holds %q", b)
	}
	// Control: plain data arrives.
	if err := sb.FS().WriteFile(ctx, "/tmp/plain", []byte("plain data\n"), 0o644); err != nil {
		t.Fatalf("control WriteFile: %v", err)
	}

	// The attack through a file the host writes for the sandbox.
	data := markerPayload(proof("via-file"))
	werr := sb.FS().WriteFile(ctx, "/tmp/upload.bin", data, 0o644)
	time.Sleep(3 * time.Second)
	if _, err := os.Stat(filepath.Join(vol, "via-file")); err == nil {
		t.Errorf("ATTACK: bytes of a file the host wrote became agent requests: an Exec ran in the guest")
	}
	if werr != nil {
		t.Fatalf("WriteFile of data holding a session marker: %v (the host lost the sandbox to its own data)", werr)
	}
	// The same connection still answers, and the data arrived unchanged.
	got, err := sb.FS().ReadFile(ctx, "/tmp/upload.bin")
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("the data read back: %d bytes, %v (want the %d bytes written)", len(got), err, len(data))
	}
	// And through an exec's stdin.
	stdin := markerPayload(proof("via-stdin"))
	res, err := sb.ExecArgs(ctx, []string{"sh", "-c", "cat > /tmp/stdin.bin; wc -c < /tmp/stdin.bin"},
		lockbox.WithStdin(bytes.NewReader(stdin)))
	time.Sleep(3 * time.Second)
	if _, err := os.Stat(filepath.Join(vol, "via-stdin")); err == nil {
		t.Errorf("ATTACK: bytes of an exec's stdin became agent requests")
	}
	if err != nil || strings.TrimSpace(string(res.Stdout)) != strconv.Itoa(len(stdin)) {
		t.Fatalf("stdin holding a marker: %v %+v", err, res)
	}
}
