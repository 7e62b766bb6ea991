package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	"github.com/vbauerster/mpb/v8"
	"github.com/vbauerster/mpb/v8/decor"
	"golang.org/x/term"

	"github.com/docker-mirror/docker-mirror/proxy"
)

// display shows the progress of image copies: a bar per image (bytes and
// rate) on a terminal, plain progress lines otherwise. Its methods may be
// called from several goroutines.
type display interface {
	update(image string, p proxy.Progress)
	// done ends an image; a failure is shown with its reason, an
	// interruption (context.Canceled) as such.
	done(image string, p proxy.Progress, err error)
	// logTo returns where log lines meant for w go while the display runs:
	// above the bars when w is the terminal they are drawn on, so that a
	// line never lands inside them; w itself otherwise.
	logTo(w io.Writer) io.Writer
	wait()
}

// newDisplay picks bars when w is a terminal.
func newDisplay(w io.Writer) display {
	if isTerminal(w) {
		return &bars{p: mpb.New(mpb.WithOutput(w), mpb.WithWidth(40)), bars: map[string]*mpb.Bar{}}
	}
	return newLines(w, time.Now)
}

func newLines(w io.Writer, now func() time.Time) *lines {
	return &lines{w: w, now: now, platforms: map[string]int{}, shown: map[string]int64{}, at: map[string]time.Time{}}
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

type bars struct {
	p    *mpb.Progress
	mu   sync.Mutex
	bars map[string]*mpb.Bar
}

func (b *bars) bar(image string) *mpb.Bar {
	b.mu.Lock()
	defer b.mu.Unlock()
	bar, ok := b.bars[image]
	if !ok {
		bar = b.p.AddBar(0,
			mpb.PrependDecorators(decor.Name(image, decor.WCSyncSpaceR), decor.CountersKibiByte("% .1f / % .1f", decor.WCSyncSpace)),
			mpb.AppendDecorators(decor.AverageSpeed(decor.SizeB1024(0), "% .1f", decor.WCSyncSpace),
				decor.OnAbort(decor.OnComplete(decor.Name(""), " done"), " failed")),
		)
		b.bars[image] = bar
	}
	return bar
}

// logTo sends lines for a terminal above the bars (mpb prints what is
// written to the Progress there), and once the bars are finished,
// straight to w.
func (b *bars) logTo(w io.Writer) io.Writer {
	if !isTerminal(w) {
		return w
	}
	return writerFunc(func(line []byte) (int, error) {
		if n, err := b.p.Write(line); err == nil {
			return n, nil
		}
		return w.Write(line) // the bars are done (mpb.ErrDone)
	})
}

// writerFunc is a function as an io.Writer.
type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }

func (b *bars) update(image string, p proxy.Progress) {
	bar := b.bar(image)
	bar.SetTotal(p.BytesTotal, false)
	bar.SetCurrent(p.BytesDone)
}

func (b *bars) done(image string, p proxy.Progress, err error) {
	bar := b.bar(image)
	if errors.Is(err, context.Canceled) {
		bar.Abort(false)
		return
	}
	if err != nil {
		// The reason goes above the bars: a bar has no room for it.
		fmt.Fprintf(b.p, "%s: failed: %v\n", image, err)
		bar.Abort(false)
		return
	}
	bar.SetTotal(p.BytesTotal, false)
	bar.SetCurrent(p.BytesDone)
	bar.SetTotal(-1, true)
}

func (b *bars) wait() { b.p.Wait() }

// lines prints a line when an image's platform completes, as its bytes
// come (linesStep, or linesEvery once some came), and when it ends.
type lines struct {
	mu        sync.Mutex
	w         io.Writer
	now       func() time.Time
	platforms map[string]int
	shown     map[string]int64     // the bytes done of each image's last line
	at        map[string]time.Time // when each image's last line was printed, or it was first seen
}

// linesEvery is how long an image whose bytes keep coming goes without a
// line at most: on a slow link (under ~100 KiB/s) linesStep's 64 MiB take
// longer than the ten minutes a CI system waits for a job's output.
const linesEvery = time.Minute

// linesStep is how many bytes more than its last line shows an image's
// next line waits for: a tenth of its bytes, at least 64 MiB (a small
// image prints no more than its platforms) and at most 256 MiB, so that a
// layer of gigabytes coming slowly does not leave a CI job's log silent
// for long (CI systems stop a job that prints nothing for ten minutes).
func linesStep(total int64) int64 { return min(max(total/10, 64<<20), 256<<20) }

func (l *lines) update(image string, p proxy.Progress) {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.now()
	at, seen := l.at[image]
	if !seen {
		l.at[image] = now
	}
	platform := len(p.PlatformsDone) > l.platforms[image]
	moved := p.BytesDone - l.shown[image]
	if !platform && moved < linesStep(p.BytesTotal) && (!seen || moved <= 0 || now.Sub(at) < linesEvery) {
		return
	}
	l.platforms[image], l.shown[image], l.at[image] = len(p.PlatformsDone), p.BytesDone, now
	fmt.Fprintf(l.w, "%s: %d/%d platforms, %s of %s\n", image, len(p.PlatformsDone), p.PlatformsTotal, size(p.BytesDone), size(p.BytesTotal))
}

func (l *lines) done(image string, p proxy.Progress, err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if errors.Is(err, context.Canceled) {
		fmt.Fprintf(l.w, "%s: interrupted\n", image)
		return
	}
	if err != nil {
		fmt.Fprintf(l.w, "%s: failed: %v\n", image, err)
		return
	}
	fmt.Fprintf(l.w, "%s: done %s (%d platforms, %s)\n", image, p.Digest, max(p.PlatformsTotal, 1), size(p.BytesTotal))
}

func (l *lines) logTo(w io.Writer) io.Writer { return w }

func (l *lines) wait() {}

// size formats a byte count for people.
func size(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
