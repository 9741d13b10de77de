package lockbox_test

import (
	"context"
	"errors"
	"fmt"
	"log"

	"lockbox.dev/lockbox"
)

// A sandbox with its own kernel. Where this host cannot run microVMs
// (no qemu, no VM assets, or a KVM that does not boot the guest and no
// LOCKBOX_VM_ACCEL=tcg), CreateSandbox says why with ErrUnsupported.
func ExampleWithIsolation() {
	ctx := context.Background()
	sb, err := lockbox.CreateSandbox(ctx,
		lockbox.WithIsolation(lockbox.IsolationMicroVM),
		lockbox.WithMemory(256),
		lockbox.WithCPUs(1),
	)
	if errors.Is(err, lockbox.ErrUnsupported) {
		fmt.Println("no microVMs here:", err)
		return
	}
	if err != nil {
		log.Fatal(err)
	}
	defer sb.Remove(ctx)

	info, err := sb.Info(ctx)
	if err != nil {
		log.Fatal(err)
	}
	res, err := sb.Exec(ctx, "uname", "-r")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("backend %s, guest kernel %s", info.Backend.Kind, res.Stdout)
}
