package lockbox_test

import (
	"context"
	"fmt"
	"log"

	"lockbox.dev/lockbox"
)

// Pull an image from a registry, run a sandbox from it, and clean up.
// Images pulled or imported are shared by every sandbox made from them.
func ExampleImages() {
	ctx := context.Background()
	img, err := lockbox.Images().Pull(ctx, "127.0.0.1:5000/tools:1.0",
		lockbox.WithPlainHTTP(), // a local test registry; HTTPS is the default
		lockbox.WithRegistryAuth("ci", "secret"),
	)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("pulled", img.Digest, img.Names)

	// WithImage takes the digest (or a plain name given at import).
	sb, err := lockbox.CreateSandbox(ctx, lockbox.WithImage(img.Digest))
	if err != nil {
		log.Fatal(err)
	}
	res, err := sb.Exec(ctx, "cat", "/etc/os-release")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("%s", res.Stdout)
	_ = sb.Remove(ctx)

	// The sandbox is gone, so the image may go too (while a sandbox uses
	// it, Remove fails with ErrUnavailable).
	if err := lockbox.Images().Remove(ctx, img.Digest); err != nil {
		log.Fatal(err)
	}
}
