package lockbox_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"time"

	"lockbox.dev/lockbox"
)

// The first call downloads, verifies and installs the pinned engine; later
// calls (also in other processes) find it with one small file read.
func ExampleEnsureInstalled() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	inst, err := lockbox.EnsureInstalled(ctx,
		lockbox.WithReleaseURL("http://127.0.0.1:8080"), // or LOCKBOX_RELEASE_URL; a directory works too
		lockbox.WithProgress(func(ev lockbox.InstallEvent) {
			if ev.Kind == lockbox.InstallArtifactVerified {
				fmt.Println("verified", ev.Artifact)
			}
		}))
	switch {
	case errors.Is(err, lockbox.ErrVerification):
		log.Fatalf("refusing a release that does not match its signature or pin: %v", err)
	case err != nil:
		log.Fatal(err)
	}
	fmt.Println("engine in", inst.Dir)
}

// CI installs ahead of time (`lockbox install --version ...`, the same
// installer as EnsureInstalled);
// the program then only checks, and never downloads.
func ExampleIsInstalled() {
	if !lockbox.IsInstalled() {
		log.Fatal("run `lockbox install` first")
	}
	if _, err := lockbox.EnsureInstalled(context.Background(), lockbox.WithOffline(true)); err != nil {
		log.Fatal(err) // lists what is missing
	}
}
