// Command hostfileracer runs inside a sandbox for the host-file escape
// tests: it swaps two names in a writable volume with
// renameat2(RENAME_EXCHANGE) as fast as it can, so that a host-side copy
// that looks at a name and then opens it sees a file one moment and a
// symlink to a host secret the next.
//
//	hostfileracer A B DURATION
package main

import (
	"fmt"
	"os"
	"runtime"
	"syscall"
	"time"
	"unsafe"
)

const renameExchange = 1 << 1

func sysRenameat2() uintptr {
	switch runtime.GOARCH {
	case "arm64":
		return 276
	default: // amd64
		return 316
	}
}

func main() {
	if len(os.Args) != 4 {
		fmt.Fprintln(os.Stderr, "usage: hostfileracer A B DURATION")
		os.Exit(2)
	}
	d, err := time.ParseDuration(os.Args[3])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	a, _ := syscall.BytePtrFromString(os.Args[1])
	b, _ := syscall.BytePtrFromString(os.Args[2])
	atFDCWD := ^uintptr(99) // AT_FDCWD (-100) as a 64-bit word
	end := time.Now().Add(d)
	n := 0
	for time.Now().Before(end) {
		for i := 0; i < 1000; i++ {
			_, _, e := syscall.Syscall6(sysRenameat2(), atFDCWD, uintptr(unsafe.Pointer(a)),
				atFDCWD, uintptr(unsafe.Pointer(b)), renameExchange, 0)
			if e != 0 {
				fmt.Fprintln(os.Stderr, "renameat2:", e)
				os.Exit(1)
			}
			n++
		}
	}
	fmt.Println("swaps", n)
}
