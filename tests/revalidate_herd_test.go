package tests

import (
	"bytes"
	"context"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/docker-mirror/docker-mirror/proxy"
	"github.com/docker-mirror/docker-mirror/tests/fixture"
	"github.com/docker-mirror/docker-mirror/tests/servertest"
)

// goroutinesIn counts the goroutines of this process with frame (a
// function name followed by its opening parenthesis) on their stack.
func goroutinesIn(frame string) int {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	count := 0
	for g := range bytes.SplitSeq(buf, []byte("\n\n")) {
		if bytes.Contains(g, []byte(frame)) {
			count++
		}
	}
	return count
}

// A herd of clients pulling a tag past its TTL causes one upstream HEAD:
// the revalidation is shared. The upstream holds every manifest HEAD until
// all the clients are inside the mirror's revalidation (seen on their
// goroutines' stacks), so they overlap for certain.
func TestStaleTagRevalidatedOnceForAHerd(t *testing.T) {
	const herd = 8
	up := fixture.StartUpstream(t)
	img := up.SeedImage(t, "library/herd", "1", 1, 1<<10)
	release := make(chan struct{})
	var releaseOnce sync.Once
	open := func() { releaseOnce.Do(func() { close(release) }) }
	var heads atomic.Int32
	front := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodHead && strings.Contains(r.URL.Path, "/manifests/") {
			heads.Add(1)
			select {
			case <-release:
			case <-r.Context().Done():
				return
			}
		}
		up.ServeHTTP(w, r)
	}))
	t.Cleanup(front.Close)
	// Without referrers: the fill's HEADs of signature tags would wait
	// at the front too.
	m := servertest.Start(t, front.URL, proxy.WithTagTTL(time.Minute), proxy.WithReferrers(false))
	t.Cleanup(open) // before the mirror stops
	url := m.URL() + "/v2/herd/manifests/1"

	wantManifest(t, get(t, url), img.Manifest, img.MediaType)
	m.WaitIdle()
	if n := heads.Load(); n != 0 {
		t.Fatalf("%d manifest HEADs for a fresh pull, want 0", n)
	}
	up.ResetCounts()
	m.Clock.Advance(2 * time.Minute)

	results := make(chan response, herd)
	for range herd {
		go func() { results <- get(t, url) }()
	}
	ctx, cancel := context.WithTimeout(t.Context(), watchdog)
	defer cancel()
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	const frame = "proxy.(*Proxy).revalidate("
	for goroutinesIn(frame) < herd {
		select {
		case <-ctx.Done():
			t.Fatalf("%d of %d clients in the revalidation, %d upstream HEADs", goroutinesIn(frame), herd, heads.Load())
		case <-tick.C:
		}
	}
	open()
	for range herd {
		select {
		case r := <-results:
			wantManifest(t, r, img.Manifest, img.MediaType)
			if c := r.header.Get("X-Cache"); c != "revalidated" {
				t.Errorf("X-Cache %q, want revalidated", c)
			}
		case <-ctx.Done():
			t.Fatal("a client of the herd got no answer")
		}
	}
	if h, g := up.Count(http.MethodHead, fixture.KindManifest), up.Count(http.MethodGet, fixture.KindManifest); h != 1 || g != 0 {
		t.Fatalf("a herd of %d at a stale tag: %d HEADs and %d GETs upstream, want 1 and 0", herd, h, g)
	}
}
