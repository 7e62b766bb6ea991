package main

import (
	"bytes"
	"strings"
	"testing"

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
