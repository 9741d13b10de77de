//go:build linux

package lockbox_test

import (
	"context"
	"fmt"
	"log"

	"lockbox.dev/lockbox"
)

// Check needs no engine: run it first when CreateSandbox fails, or in CI
// before the tests that need sandboxes. Each item says what was found
// and, when it is not ok, what to do.
func ExampleCheck() {
	r, err := lockbox.Check(context.Background())
	if err != nil {
		log.Fatal(err)
	}
	for _, it := range r.Items {
		fmt.Println(it.Name)
		if it.Status != lockbox.CheckOK {
			log.Printf("%s: %s: %s (fix: %s)", it.Status, it.Name, it.Found, it.Fix)
		}
	}
	if r.Failed() {
		log.Print("sandboxes cannot be created on this host")
	}
	// Output:
	// userns
	// apparmor-userns
	// landlock
	// cgroup
	// seccomp
	// pasta
	// kvm
	// microvm
	// engine
}
