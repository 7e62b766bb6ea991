package main

import (
	"fmt"
	"io"
	"os"
	"sync"

	"github.com/vbauerster/mpb/v8"
	"github.com/vbauerster/mpb/v8/decor"
	"golang.org/x/term"

	"github.com/docker-mirror/docker-mirror/proxy"
)

// display shows the progress of image copies: a bar per image (bytes and
// rate) on a terminal, plain progress lines otherwise.
type display interface {
	update(image string, p proxy.Progress)
	done(image string, p proxy.Progress, err error)
	wait()
}

// newDisplay picks bars when w is a terminal.
func newDisplay(w io.Writer) display {
	if f, ok := w.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		return &bars{p: mpb.New(mpb.WithOutput(w), mpb.WithWidth(40)), bars: map[string]*mpb.Bar{}}
	}
	return &lines{w: w, platforms: map[string]int{}}
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
			mpb.AppendDecorators(decor.AverageSpeed(decor.SizeB1024(0), "% .1f", decor.WCSyncSpace), decor.OnComplete(decor.Name(""), " done")),
		)
		b.bars[image] = bar
	}
	return bar
}

func (b *bars) update(image string, p proxy.Progress) {
	bar := b.bar(image)
	bar.SetTotal(p.BytesTotal, false)
	bar.SetCurrent(p.BytesDone)
}

func (b *bars) done(image string, p proxy.Progress, err error) {
	bar := b.bar(image)
	if err != nil {
		bar.Abort(false)
		return
	}
	bar.SetTotal(p.BytesTotal, false)
	bar.SetCurrent(p.BytesDone)
	bar.SetTotal(-1, true)
}

func (b *bars) wait() { b.p.Wait() }

// lines prints a line when an image's platform completes, and when it ends.
type lines struct {
	mu        sync.Mutex
	w         io.Writer
	platforms map[string]int
}

func (l *lines) update(image string, p proxy.Progress) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(p.PlatformsDone) > l.platforms[image] {
		l.platforms[image] = len(p.PlatformsDone)
		fmt.Fprintf(l.w, "%s: %d/%d platforms, %s of %s\n", image, len(p.PlatformsDone), p.PlatformsTotal, size(p.BytesDone), size(p.BytesTotal))
	}
}

func (l *lines) done(image string, p proxy.Progress, err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if err != nil {
		fmt.Fprintf(l.w, "%s: failed: %v\n", image, err)
		return
	}
	fmt.Fprintf(l.w, "%s: done %s (%d platforms, %s)\n", image, p.Digest, max(p.PlatformsTotal, 1), size(p.BytesTotal))
}

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
