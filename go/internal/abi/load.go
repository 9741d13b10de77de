package abi

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/ebitengine/purego"
)

// ABIVersion is the C ABI version this SDK speaks (docs/abi.md).
const ABIVersion = 1

// Host is what the loader needs from the SDK above it.
type Host struct {
	// SDKVersion names the SDK in an ABI mismatch message.
	SDKVersion string
	// Installed returns the installed library to load when neither
	// Load's path nor LOCKBOX_LIB names one: ("", nil) when nothing is
	// installed, an error when an install is there that must not be
	// loaded.
	Installed func() (string, error)
}

var host atomic.Pointer[Host]

// Configure sets the host; package lockbox calls it once, at init.
func Configure(h Host) { host.Store(&h) }

func currentHost() Host {
	if h := host.Load(); h != nil {
		return *h
	}
	return Host{SDKVersion: "unknown"}
}

// library is a loaded liblockbox.so: its exports as function pointers.
type library struct {
	path                                            string
	dl                                              uintptr
	fnAbiVersion, fnCall, fnFree                    uintptr
	fnCancel, fnCancelRelease, fnClose              uintptr
	fnStreamRead, fnStreamWrite, fnStreamCloseWrite uintptr
}

var (
	loaded atomic.Pointer[library]
	loadMu sync.Mutex
)

// Load loads the library at path (or, when path is "", from LOCKBOX_LIB
// or the host's installed copy) once per process and checks its ABI
// version. A second Load is a no-op, or an invalid_argument error if it
// names a different file.
func Load(path string) error {
	_, err := load(path)
	return err
}

// LoadedPath is the file the library was loaded from, or "".
func LoadedPath() string {
	if l := loaded.Load(); l != nil {
		return l.path
	}
	return ""
}

// lib returns the loaded library, loading it on first use.
func lib() (*library, error) {
	if l := loaded.Load(); l != nil {
		return l, nil
	}
	return load("")
}

func load(want string) (*library, error) {
	loadMu.Lock()
	defer loadMu.Unlock()
	path, err := resolveLibraryPath(want)
	if err != nil {
		return nil, err
	}
	if l := loaded.Load(); l != nil {
		if want != "" && !sameFile(want, l.path) {
			return nil, &Error{Op: "load", Code: CodeInvalidArgument,
				Message: fmt.Sprintf("library already loaded from %s; cannot load %s as well", l.path, want)}
		}
		return l, nil
	}
	l, err := openLibrary(path)
	if err != nil {
		return nil, err
	}
	loaded.Store(l)
	return l, nil
}

func resolveLibraryPath(want string) (string, error) {
	for _, p := range []string{want, os.Getenv("LOCKBOX_LIB")} {
		if p != "" {
			return p, nil
		}
	}
	if l := loaded.Load(); l != nil {
		return l.path, nil
	}
	// The installed copy is loaded only after its tree and bytes pass the
	// installer's checks (internal/install/library.go): a planted or
	// swapped library must never reach dlopen, where its constructors
	// would run.
	var p string
	var err error
	if find := currentHost().Installed; find != nil {
		p, err = find()
	}
	if err != nil {
		return "", loadError("installed engine library", "refusing to load it: "+err.Error(), err)
	}
	if p != "" {
		return p, nil
	}
	return "", &Error{Op: "load", Code: CodeNotInstalled,
		Message: "no engine library: call EnsureInstalled, set LOCKBOX_LIB, or pass WithLibraryPath"}
}

func sameFile(a, b string) bool {
	sa, errA := os.Stat(a)
	sb, errB := os.Stat(b)
	return errA == nil && errB == nil && os.SameFile(sa, sb)
}

// loadError is a failure to load the library at path.
func loadError(path, what string, cause error) *Error {
	return &Error{Op: "load", Code: CodeLibraryNotLoaded, Message: path + ": " + what, Cause: cause}
}

// openLibrary loads the library at path and checks it, without making it
// the process's library.
func openLibrary(path string) (*library, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, loadError(path, "bad path", err)
	}
	if err := checkELF(abs); err != nil {
		return nil, err
	}
	// dlerror() is per thread: keep dlopen and purego's dlerror on one.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	dl, err := purego.Dlopen(abs, purego.RTLD_NOW|purego.RTLD_LOCAL)
	if err != nil {
		return nil, loadError(abs, describeDlopenError(err.Error()), err)
	}
	l := &library{path: abs, dl: dl}
	syms := []struct {
		name string
		dst  *uintptr
	}{
		{"lockbox_abi_version", &l.fnAbiVersion},
		{"lockbox_call", &l.fnCall},
		{"lockbox_free", &l.fnFree},
		{"lockbox_cancel", &l.fnCancel},
		{"lockbox_cancel_release", &l.fnCancelRelease},
		{"lockbox_close", &l.fnClose},
		{"lockbox_stream_read", &l.fnStreamRead},
		{"lockbox_stream_write", &l.fnStreamWrite},
		{"lockbox_stream_close_write", &l.fnStreamCloseWrite},
	}
	for _, s := range syms {
		p, err := purego.Dlsym(dl, s.name)
		if err != nil || p == 0 {
			_ = purego.Dlclose(dl)
			return nil, loadError(abs, "missing symbol "+s.name+" (not a lockbox engine library, or a too old one)", err)
		}
		*s.dst = p
	}
	got, _, _ := purego.SyscallN(l.fnAbiVersion)
	if uint32(got) != ABIVersion {
		_ = purego.Dlclose(dl)
		return nil, loadError(abs, fmt.Sprintf("ABI mismatch: the library speaks ABI %d, this SDK (lockbox %s) needs ABI %d; install the matching engine version",
			uint32(got), currentHost().SDKVersion, ABIVersion), nil)
	}
	return l, nil
}

// describeDlopenError turns dlerror() text into a diagnosis.
func describeDlopenError(msg string) string {
	switch {
	case strings.Contains(msg, "GLIBC_") && strings.Contains(msg, "not found"):
		return "needs a newer glibc than this system has: " + msg
	case strings.Contains(msg, "wrong ELF class"), strings.Contains(msg, "ELF file's phentsize"):
		return "built for a different architecture: " + msg
	case strings.Contains(msg, "invalid ELF header"), strings.Contains(msg, "file too short"):
		return "not a shared library: " + msg
	default:
		return "dlopen failed: " + msg
	}
}

// ELF identification we need: what this process can load.
var elfMachines = map[string]struct {
	class   byte
	machine uint16
}{
	"amd64":   {2, 62},
	"arm64":   {2, 183},
	"386":     {1, 3},
	"arm":     {1, 40},
	"riscv64": {2, 243},
	"loong64": {2, 258},
	"ppc64le": {2, 21},
	"s390x":   {2, 22},
}

var elfMachineNames = map[uint16]string{3: "386", 40: "arm", 62: "amd64", 183: "arm64", 243: "riscv64", 258: "loong64", 21: "ppc64", 22: "s390x"}

// checkELF names the common reasons dlopen would fail, before dlopen.
func checkELF(path string) error {
	f, err := os.Open(path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return loadError(path, "file does not exist", err)
		}
		return loadError(path, "cannot open: "+err.Error(), err)
	}
	defer f.Close()
	var hdr [20]byte
	if _, err := io.ReadFull(f, hdr[:]); err != nil || string(hdr[:4]) != "\x7fELF" {
		return loadError(path, "not a shared library (no ELF header)", nil)
	}
	class, data := hdr[4], hdr[5]
	var bo binary.ByteOrder = binary.LittleEndian
	if data == 2 {
		bo = binary.BigEndian
	}
	etype, machine := bo.Uint16(hdr[16:18]), bo.Uint16(hdr[18:20])
	if want, ok := elfMachines[runtime.GOARCH]; ok && (class != want.class || machine != want.machine) {
		name := elfMachineNames[machine]
		if name == "" {
			name = fmt.Sprintf("machine %d", machine)
		}
		bits := map[byte]string{1: "32-bit", 2: "64-bit"}[class]
		return loadError(path, fmt.Sprintf("wrong architecture: the library is %s %s, this process is %s", bits, name, runtime.GOARCH), nil)
	}
	if etype != 3 { // ET_DYN
		return loadError(path, fmt.Sprintf("not a shared library (ELF type %d)", etype), nil)
	}
	return nil
}
