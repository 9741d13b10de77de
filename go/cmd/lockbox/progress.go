package main

import (
	"fmt"
	"io"
	"os"
	"time"

	"github.com/schollz/progressbar/v3"
	"golang.org/x/term"

	"lockbox.dev/lockbox"
)

// isTerminal reports whether w is a terminal: bars and spinners then,
// plain lines otherwise (CI logs, pipes).
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

// installProgress shows EnsureInstalled's events: one bar over every
// artifact's bytes on a terminal, one line per step elsewhere. The SDK
// never calls it twice at once.
type installProgress struct {
	w      io.Writer
	bar    *progressbar.ProgressBar
	tty    bool
	bytes  map[string]int64
	totals map[string]int64
	said   map[string]bool
}

func newInstallProgress(w io.Writer) *installProgress {
	return &installProgress{w: w, tty: isTerminal(w), bytes: map[string]int64{}, totals: map[string]int64{}, said: map[string]bool{}}
}

func (p *installProgress) event(ev lockbox.InstallEvent) {
	switch ev.Kind {
	case lockbox.InstallAlreadyInstalled:
		fmt.Fprintf(p.w, "lockbox %s is already installed\n", ev.Version)
	case lockbox.InstallManifestVerified:
		fmt.Fprintf(p.w, "lockbox %s: signed manifest verified\n", ev.Version)
	case lockbox.InstallDownloading:
		p.bytes[ev.Artifact], p.totals[ev.Artifact] = ev.Bytes, ev.Total
		if !p.tty {
			if !p.said[ev.Artifact] {
				p.said[ev.Artifact] = true
				fmt.Fprintf(p.w, "downloading %s (%d bytes)\n", ev.Artifact, ev.Total)
			}
			return
		}
		var got, total int64
		for a, n := range p.bytes {
			got, total = got+n, total+p.totals[a]
		}
		if p.bar == nil {
			p.bar = progressbar.NewOptions64(total,
				progressbar.OptionSetWriter(p.w),
				progressbar.OptionSetDescription("downloading lockbox "+ev.Version),
				progressbar.OptionShowBytes(true),
				progressbar.OptionSetWidth(30),
				progressbar.OptionThrottle(100*time.Millisecond),
				progressbar.OptionOnCompletion(func() { fmt.Fprintln(p.w) }))
		}
		p.bar.ChangeMax64(total)
		_ = p.bar.Set64(got)
	case lockbox.InstallRetrying:
		p.clearBar()
		fmt.Fprintf(p.w, "retrying %s (attempt %d): %v\n", ev.Artifact, ev.Attempt, ev.Err)
	case lockbox.InstallArtifactVerified:
		if !p.tty {
			fmt.Fprintf(p.w, "verified %s (sha256 and size)\n", ev.Artifact)
		}
	case lockbox.InstallComplete:
		if p.bar != nil {
			_ = p.bar.Finish()
		}
	}
}

func (p *installProgress) clearBar() {
	if p.bar != nil {
		_ = p.bar.Clear()
	}
}

// spinner runs while work with no progress reports of its own (an image
// pull) goes on: a spinner on a terminal, one line elsewhere. stop ends
// it and clears the line.
func spinner(w io.Writer, what string) (stop func()) {
	if !isTerminal(w) {
		fmt.Fprintln(w, what)
		return func() {}
	}
	bar := progressbar.NewOptions(-1,
		progressbar.OptionSetWriter(w),
		progressbar.OptionSetDescription(what),
		progressbar.OptionSpinnerType(14),
		progressbar.OptionClearOnFinish())
	done := make(chan struct{})
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		t := time.NewTicker(100 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-done:
				_ = bar.Finish()
				return
			case <-t.C:
				_ = bar.Add(1)
			}
		}
	}()
	return func() { close(done); <-finished }
}
