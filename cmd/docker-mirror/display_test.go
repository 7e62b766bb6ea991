package main

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/docker-mirror/docker-mirror/proxy"
)

// On a non-terminal (a CI job's log) the progress of a large layer shows
// as it comes, a line now and then, not only once its platform is done:
// a CI system kills a job that prints nothing for ten minutes, and one
// layer of gigabytes on a slow link takes longer. Small images print no
// more lines than before.
func TestLinesShowALargeLayerOnItsWay(t *testing.T) {
	var out bytes.Buffer
	d := newDisplay(&out)
	const total = 2 << 30 // one layer of 2 GiB
	for done := int64(0); done < total; done += 1 << 20 {
		d.update("big:1", proxy.Progress{PlatformsTotal: 1, BytesTotal: total, BytesDone: done})
	}
	if n := strings.Count(out.String(), "big:1: "); n < 5 || n > 20 {
		t.Errorf("%d lines while 2 GiB came, want some (5..20):\n%s", n, out.String())
	}
	wantPlain(t, out.String())

	out.Reset()
	for done := int64(0); done < 30<<10; done += 1 << 10 {
		d.update("small:1", proxy.Progress{PlatformsTotal: 1, BytesTotal: 30 << 10, BytesDone: done})
	}
	if out.Len() != 0 {
		t.Errorf("lines while a small image came: %q, want none", out.String())
	}
}

// On a slow link (under ~100 KiB/s) 64 MiB take longer than the ten
// minutes a CI system waits for output: an image whose bytes keep coming
// prints a line at least every linesEvery. It printed none until 64 MiB
// had come (over an hour at 16 KiB/s).
func TestLinesShowASlowLayerEveryMinute(t *testing.T) {
	var out bytes.Buffer
	clock := time.Unix(1700000000, 0)
	d := newLines(&out, func() time.Time { return clock })
	const total = 100 << 20
	for done := int64(0); done <= 10<<20; done += 512 << 10 { // 512 KiB every 30 s: ~17 KiB/s
		d.update("slow:1", proxy.Progress{PlatformsTotal: 1, BytesTotal: total, BytesDone: done})
		clock = clock.Add(30 * time.Second)
	}
	// 21 updates over 10 minutes: a line a minute.
	if n := strings.Count(out.String(), "slow:1: "); n < 9 || n > 11 {
		t.Errorf("%d lines in 10 minutes of a slow layer, want one a minute:\n%s", n, out.String())
	}
	wantPlain(t, out.String())

	// Nothing came: no line however long (a stall shows as the fill's own
	// failure).
	out.Reset()
	for range 5 {
		clock = clock.Add(10 * time.Minute)
		d.update("slow:1", proxy.Progress{PlatformsTotal: 1, BytesTotal: total, BytesDone: 10 << 20})
	}
	if out.Len() != 0 {
		t.Errorf("lines while nothing came: %q, want none", out.String())
	}
}
