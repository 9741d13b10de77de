// Files: put files into a sandbox and take results out.
//
//	go run ./files
//
// Every path given to FS() is a path inside the sandbox: symlinks, ".."
// and /proc tricks cannot reach the host's files, and CopyToHost never
// follows a link the sandbox made out of the destination directory.
package main

import (
	"context"
	"fmt"
	"log"
	"os"
	"path/filepath"
	"sort"
	"time"

	"lockbox.dev/lockbox"
)

func main() {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if _, err := lockbox.EnsureInstalled(ctx); err != nil {
		log.Fatalf("install the engine: %v", err)
	}
	sb, err := lockbox.CreateSandbox(ctx, lockbox.WithImage("base"))
	if err != nil {
		log.Fatalf("create sandbox: %v", err)
	}
	defer sb.Remove(ctx)
	fs := sb.FS()

	// Upload one file from memory, let the sandbox work on it, download
	// the result.
	if err := fs.MkdirAll(ctx, "/work", 0o755); err != nil {
		log.Fatalf("mkdir: %v", err)
	}
	if err := fs.WriteFile(ctx, "/work/names.txt", []byte("carol\nalice\nbob\n"), 0o644); err != nil {
		log.Fatalf("upload: %v", err)
	}
	if _, err := sb.Shell(ctx, "sort /work/names.txt > /work/sorted.txt"); err != nil {
		log.Fatalf("sort: %v", err)
	}
	sorted, err := fs.ReadFile(ctx, "/work/sorted.txt")
	if err != nil {
		log.Fatalf("download: %v", err)
	}
	fmt.Printf("sorted in the sandbox:\n%s", sorted)

	// Whole directories: copy a host folder in, build something from it
	// inside, copy the output folder back out.
	src, err := os.MkdirTemp("", "lockbox-files-in-")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(src)
	for name, body := range map[string]string{"a.txt": "first\n", "b.txt": "second\n"} {
		if err := os.WriteFile(filepath.Join(src, name), []byte(body), 0o644); err != nil {
			log.Fatal(err)
		}
	}
	if err := fs.CopyFromHost(ctx, src, "/work/in"); err != nil {
		log.Fatalf("copy in: %v", err)
	}
	script := `mkdir -p /work/out && for f in /work/in/*.txt; do wc -c < "$f" > /work/out/$(basename "$f" .txt).size; done`
	if res, err := sb.Shell(ctx, script); err != nil || res.ExitCode != 0 {
		log.Fatalf("build: %v %+v", err, res)
	}
	dst, err := os.MkdirTemp("", "lockbox-files-out-")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dst)
	if err := fs.CopyToHost(ctx, "/work/out", filepath.Join(dst, "out")); err != nil {
		log.Fatalf("copy out: %v", err)
	}
	entries, err := os.ReadDir(filepath.Join(dst, "out"))
	if err != nil {
		log.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	sort.Strings(names)
	for _, n := range names {
		b, err := os.ReadFile(filepath.Join(dst, "out", n))
		if err != nil {
			log.Fatal(err)
		}
		fmt.Printf("copied back %s: %s", n, b)
	}
}
