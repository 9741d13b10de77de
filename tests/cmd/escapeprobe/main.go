// Command escapeprobe runs inside a sandbox and tries one way out. It is a
// static Go binary so every attempt is a direct system call with a precise
// errno, not whatever a shell utility happens to print.
//
// Output is one line: "BLOCKED <detail>" when the attempt failed, or
// "ESCAPED <detail>" when it worked. The exit code is 0 for BLOCKED, 3 for
// ESCAPED, 2 for a usage error.
package main

import (
	"fmt"
	"net"
	"os"
	"strconv"
	"syscall"
	"time"
	"unsafe"
)

func blocked(format string, a ...any) {
	fmt.Printf("BLOCKED "+format+"\n", a...)
	os.Exit(0)
}

func escaped(format string, a ...any) {
	fmt.Printf("ESCAPED "+format+"\n", a...)
	os.Exit(3)
}

func main() {
	if len(os.Args) < 2 {
		fmt.Println("usage: escapeprobe <probe> [args]")
		os.Exit(2)
	}
	arg := func(i int) string {
		if len(os.Args) <= i+1 {
			fmt.Println("missing argument")
			os.Exit(2)
		}
		return os.Args[i+1]
	}
	switch os.Args[1] {
	case "read":
		b, err := os.ReadFile(arg(1))
		if err != nil {
			blocked("read %s: %v", arg(1), err)
		}
		escaped("read %s: %q", arg(1), b)
	case "write":
		err := os.WriteFile(arg(1), []byte("pwned"), 0o644)
		if err != nil {
			blocked("write %s: %v", arg(1), err)
		}
		// Written somewhere: the host side decides whether that was the
		// host's file (it checks the marker).
		fmt.Println("WROTE " + arg(1))
	case "tcp":
		c, err := net.DialTimeout("tcp", arg(1), 2*time.Second)
		if err != nil {
			blocked("dial %s: %v", arg(1), err)
		}
		c.Close()
		escaped("connected to %s", arg(1))
	case "kill":
		pid, _ := strconv.Atoi(arg(1))
		if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
			blocked("kill %d: %v", pid, err)
		}
		// A pid that exists inside the sandbox's own namespace is not the
		// host's process; the host side checks its process survived.
		fmt.Printf("SIGNALED %d\n", pid)
	case "mount":
		os.MkdirAll("/mnt/probe", 0o755)
		errs := []error{
			syscall.Mount("none", "/mnt/probe", "tmpfs", 0, ""),
			syscall.Mount("/", "/mnt/probe", "", syscall.MS_BIND|syscall.MS_REC, ""),
			syscall.Mount("proc", "/mnt/probe", "proc", 0, ""),
		}
		for i, e := range errs {
			if e == nil {
				escaped("mount attempt %d succeeded", i)
			}
		}
		blocked("mount: %v / %v / %v", errs[0], errs[1], errs[2])
	case "module":
		img := []byte("\x7fELF not really a module")
		_, _, e1 := syscall.Syscall(syscall.SYS_INIT_MODULE, uintptr(unsafe.Pointer(&img[0])), uintptr(len(img)), uintptr(unsafe.Pointer(&[]byte("\x00")[0])))
		f, _ := os.CreateTemp("", "mod")
		f.Write(img)
		_, _, e2 := syscall.Syscall(313 /* finit_module */, f.Fd(), uintptr(unsafe.Pointer(&[]byte("\x00")[0])), 0)
		_, _, e3 := syscall.Syscall(syscall.SYS_DELETE_MODULE, uintptr(unsafe.Pointer(&[]byte("loop\x00")[0])), 0, 0)
		if e1 == 0 || e2 == 0 || e3 == 0 {
			escaped("module syscall succeeded: %v %v %v", e1, e2, e3)
		}
		// ENOEXEC would mean the kernel parsed our image: the call got
		// through to the module loader, which is itself a failure of
		// confinement even though the bogus image was refused.
		if e1 == syscall.ENOEXEC || e2 == syscall.ENOEXEC {
			escaped("module loader reached: %v %v", e1, e2)
		}
		blocked("init_module: %v, finit_module: %v, delete_module: %v", e1, e2, e3)
	case "ptrace":
		// PID 1 is the sandbox's agent: attaching to it would hand the
		// process control of everything the agent can do.
		if err := syscall.PtraceAttach(1); err != nil {
			blocked("ptrace attach 1: %v", err)
		}
		syscall.PtraceDetach(1)
		escaped("ptrace attached to pid 1")
	case "open_by_handle":
		// struct file_handle { u32 handle_bytes; int handle_type; u8 f_handle[128]; }
		buf := make([]byte, 8+128)
		*(*uint32)(unsafe.Pointer(&buf[0])) = 128
		var mountID int32
		path := []byte("/\x00")
		_, _, e1 := syscall.Syscall6(303 /* name_to_handle_at */, uintptr(0xffffff9c), uintptr(unsafe.Pointer(&path[0])),
			uintptr(unsafe.Pointer(&buf[0])), uintptr(unsafe.Pointer(&mountID)), 0, 0)
		// The shocker exploit brute-forces a handle for the host's root
		// inode (2 on ext4): try it against our root fd.
		*(*uint32)(unsafe.Pointer(&buf[0])) = 8
		*(*int32)(unsafe.Pointer(&buf[4])) = 1
		*(*uint64)(unsafe.Pointer(&buf[8])) = 2
		root, _ := syscall.Open("/", syscall.O_RDONLY|syscall.O_DIRECTORY, 0)
		fd, _, e2 := syscall.Syscall(304 /* open_by_handle_at */, uintptr(root), uintptr(unsafe.Pointer(&buf[0])), syscall.O_RDONLY)
		if e2 == 0 {
			escaped("open_by_handle_at returned fd %d (name_to_handle_at: %v)", fd, e1)
		}
		blocked("name_to_handle_at: %v, open_by_handle_at: %v", e1, e2)
	case "hostname":
		err := syscall.Sethostname([]byte(arg(1)))
		if err != nil {
			blocked("sethostname: %v", err)
		}
		// Allowed in the sandbox's own UTS namespace; the host side checks
		// the host's name did not change.
		fmt.Println("SETHOSTNAME-OWN-NS")
	case "procroot":
		for _, p := range []string{"/proc/1/root" + arg(1), "/proc/self/root" + arg(1), "/proc/1/cwd" + arg(1)} {
			if b, err := os.ReadFile(p); err == nil {
				escaped("read %s: %q", p, b)
			}
		}
		blocked("no /proc/*/root path reached %s", arg(1))
	case "forkbomb":
		// Start children until the kernel refuses; report how many ran.
		n := 0
		var last error
		for i := 0; i < 2000; i++ {
			_, err := syscall.ForkExec("/bin/sleep", []string{"sleep", "30"}, &syscall.ProcAttr{})
			if err != nil {
				last = err
				break
			}
			n++
		}
		fmt.Printf("FORKED %d %v\n", n, last)
	case "alloc":
		mib, _ := strconv.Atoi(arg(1))
		var keep [][]byte
		for i := 0; i < mib; i++ {
			b := make([]byte, 1<<20)
			for j := 0; j < len(b); j += 4096 {
				b[j] = 1
			}
			keep = append(keep, b)
		}
		escaped("allocated %d MiB", len(keep))
	case "fill":
		mib, _ := strconv.Atoi(arg(2))
		f, err := os.Create(arg(1))
		if err != nil {
			blocked("create: %v", err)
		}
		chunk := make([]byte, 1<<20)
		for i := 0; i < mib; i++ {
			if _, err := f.Write(chunk); err != nil {
				blocked("wrote %d MiB, then: %v", i, err)
			}
		}
		if err := f.Sync(); err != nil {
			blocked("sync: %v", err)
		}
		if err := f.Close(); err != nil {
			blocked("close: %v", err)
		}
		escaped("wrote %d MiB", mib)
	case "unshare":
		if err := syscall.Unshare(syscall.CLONE_NEWUSER | syscall.CLONE_NEWNS); err == nil {
			escaped("unshare(user|mount) succeeded")
		} else {
			blocked("unshare: %v", err)
		}
	case "deeptree":
		// Not an escape by itself: a directory chain far deeper than any
		// recursive walk on the host can follow, for the host to remove.
		dir, depth := arg(1), arg(2)
		n, _ := strconv.Atoi(depth)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			blocked("mkdir %s: %v", dir, err)
		}
		if err := os.Chdir(dir); err != nil {
			blocked("chdir %s: %v", dir, err)
		}
		for i := 0; i < n; i++ {
			if err := syscall.Mkdir("d", 0o755); err != nil {
				blocked("mkdir at depth %d: %v", i, err)
			}
			if err := syscall.Chdir("d"); err != nil {
				blocked("chdir at depth %d: %v", i, err)
			}
		}
		fmt.Printf("MADE %d\n", n)
	default:
		fmt.Println("unknown probe", os.Args[1])
		os.Exit(2)
	}
}
