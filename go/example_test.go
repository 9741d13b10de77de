package lockbox_test

import (
	"context"
	"errors"
	"fmt"
	"log"

	"lockbox.dev/lockbox"
)

// Loading is automatic on first use; Load makes the choice of library (and
// any problem with it) explicit and early.
func ExampleLoad() {
	if err := lockbox.Load(lockbox.WithLibraryPath("/opt/lockbox/lib/liblockbox.so")); err != nil {
		if errors.Is(err, lockbox.ErrLibraryNotLoaded) {
			log.Fatalf("cannot use the engine: %v", err)
		}
	}
}

func ExampleLibraryVersion() {
	v, err := lockbox.LibraryVersion(context.Background())
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("engine %s (ABI %d, commit %s)\n", v.Version, v.ABI, v.GitCommit)
}

func ExampleError() {
	_, err := lockbox.LibraryVersion(context.Background())
	var e *lockbox.Error
	switch {
	case err == nil:
	case errors.Is(err, lockbox.ErrNotInstalled):
		fmt.Println("run lockbox.EnsureInstalled first")
	case errors.As(err, &e):
		fmt.Println("failed:", e.Op, e.Code, e.Message)
	}
}
