// Command hostprobe runs inside a sandbox for tests/escape_host_test.go:
// attacks on the host's ids, quotas and process strings, each a direct
// system call with a precise errno. Static, so any image can run it.
package main

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"unsafe"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Println("usage: hostprobe modes DIR | inotify | strings | x32")
		os.Exit(2)
	}
	os.Exit(hostProbe(os.Args[1], os.Args[2:]))
}

// hostProbe runs inside the sandbox. It prints "name result" lines.
func hostProbe(what string, args []string) int {
	switch what {
	case "modes":
		return probeModes(args[0])
	case "inotify":
		// Take instances until the kernel refuses, report, and hold them
		// until stdin closes so the host can try while they are taken.
		var fds []int
		var err error
		for len(fds) < 1<<20 {
			var fd int
			fd, err = syscall.InotifyInit1(syscall.IN_CLOEXEC)
			if err != nil {
				break
			}
			fds = append(fds, fd)
		}
		limit, _ := os.ReadFile("/proc/sys/user/max_inotify_instances")
		errno, _ := err.(syscall.Errno)
		fmt.Printf("inotify %d errno %d limit %s\n", len(fds), int(errno), strings.TrimSpace(string(limit)))
		io.Copy(io.Discard, os.Stdin)
		return 0
	case "strings":
		for _, f := range []string{"/proc/1/cmdline", "/proc/1/environ", "/proc/self/mountinfo", "/proc/1/mountinfo"} {
			b, err := os.ReadFile(f)
			fmt.Printf("file %s %q %v\n", f, b, err)
		}
		exe, err := os.Readlink("/proc/1/exe")
		fmt.Printf("exe %q %v\n", exe, err)
		return 0
	case "x32":
		// getpid as an x32 call: the filter must kill us before it returns.
		r, _, e := syscall.RawSyscall(0x40000000|syscall.SYS_GETPID, 0, 0, 0)
		fmt.Printf("ALIVE x32 getpid returned %d %v\n", int(r), e)
		return 0
	}
	fmt.Println("unknown probe", what)
	return 2
}

const (
	oTmpfile   = 0o20200000 // O_TMPFILE (with O_DIRECTORY)
	sysOpenat2 = 437
)

// probeModes tries every call that takes a mode with the setuid and
// setgid bits, in dir, and the same calls with plain modes as a control.
func probeModes(dir string) int {
	try := func(name string, f func(path string, mode uint32) error) {
		for _, m := range []uint32{0o4755, 0o2755, 0o755} {
			p := filepath.Join(dir, fmt.Sprintf("%s-%o", name, m))
			err := f(p, m)
			fmt.Printf("%s %o %v\n", name, m, errnoName(err))
		}
	}
	try("open", func(p string, m uint32) error {
		fd, err := syscall.Open(p, syscall.O_CREAT|syscall.O_WRONLY|syscall.O_EXCL, m)
		if err == nil {
			syscall.Close(fd)
		}
		return err
	})
	try("creat", func(p string, m uint32) error {
		fd, err := syscall.Creat(p, m)
		if err == nil {
			syscall.Close(fd)
		}
		return err
	})
	try("mknod", func(p string, m uint32) error {
		return syscall.Mknod(p, syscall.S_IFREG|m, 0)
	})
	try("mknodat", func(p string, m uint32) error {
		return mknodat(p, syscall.S_IFREG|m)
	})
	try("chmod", func(p string, m uint32) error {
		if err := os.WriteFile(p, nil, 0o644); err != nil {
			return err
		}
		return syscall.Chmod(p, m)
	})
	try("tmpfile", func(p string, m uint32) error {
		fd, err := syscall.Open(filepath.Dir(p), oTmpfile|syscall.O_WRONLY, m)
		if err != nil {
			return err
		}
		defer syscall.Close(fd)
		// Name it, so a success shows up on the host.
		return linkFd(fd, p)
	})
	try("openat2", func(p string, m uint32) error {
		return openat2(p, syscall.O_CREAT|syscall.O_WRONLY, m)
	})
	return 0
}

func errnoName(err error) string {
	if err == nil {
		return "ok"
	}
	if e, ok := err.(syscall.Errno); ok {
		switch e {
		case syscall.EPERM:
			return "EPERM"
		case syscall.ENOSYS:
			return "ENOSYS"
		}
	}
	return err.Error()
}

func mknodat(p string, mode uint32) error {
	b, err := syscall.BytePtrFromString(p)
	if err != nil {
		return err
	}
	atFdcwd := -100
	_, _, e := syscall.Syscall6(syscall.SYS_MKNODAT, uintptr(atFdcwd), uintptr(unsafe.Pointer(b)), uintptr(mode), 0, 0, 0)
	if e != 0 {
		return e
	}
	return nil
}

func linkFd(fd int, p string) error {
	from, err := syscall.BytePtrFromString(fmt.Sprintf("/proc/self/fd/%d", fd))
	if err != nil {
		return err
	}
	to, err := syscall.BytePtrFromString(p)
	if err != nil {
		return err
	}
	atFdcwd := -100
	const atSymlinkFollow = 0x400
	_, _, e := syscall.Syscall6(syscall.SYS_LINKAT, uintptr(atFdcwd), uintptr(unsafe.Pointer(from)),
		uintptr(atFdcwd), uintptr(unsafe.Pointer(to)), atSymlinkFollow, 0)
	if e != 0 {
		return e
	}
	return nil
}

func openat2(p string, flags int, mode uint32) error {
	b, err := syscall.BytePtrFromString(p)
	if err != nil {
		return err
	}
	how := struct{ flags, mode, resolve uint64 }{uint64(flags), uint64(mode), 0}
	atFdcwd := -100
	fd, _, e := syscall.Syscall6(sysOpenat2, uintptr(atFdcwd), uintptr(unsafe.Pointer(b)), uintptr(unsafe.Pointer(&how)), unsafe.Sizeof(how), 0, 0)
	if e != 0 {
		return e
	}
	syscall.Close(int(fd))
	return nil
}
