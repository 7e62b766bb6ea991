package tests

import (
	"bytes"
	"context"
	"net/http"
	"net/http/httptest"
	"runtime"
	"slices"
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
// function name followed by its opening parenthesis), and each of also,
// on their stack.
func goroutinesIn(frame string, also ...string) int {
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
		if bytes.Contains(g, []byte(frame)) && !slices.ContainsFunc(also, func(f string) bool { return !bytes.Contains(g, []byte(f)) }) {
			count++
		}
	}
	return count
}

// waitGoroutinesIn waits, within the watchdog, until n goroutines have
// frame, and each of also, on their stack (goroutinesIn); else it returns
// how many had.
func waitGoroutinesIn(t *testing.T, frame string, n int, also ...string) (in int, ok bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), watchdog)
	defer cancel()
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for {
		if in = goroutinesIn(frame, also...); in >= n {
			return in, true
		}
		select {
		case <-ctx.Done():
			return in, false
		case <-tick.C:
		}
	}
}

// holdingFront serves as up does, but holds each request held picks (or
// until its client goes away) until open is called; register open as a
// cleanup after the mirror's start, so that it runs before the mirror
// stops.
func holdingFront(t *testing.T, up http.Handler, held func(*http.Request) bool) (url string, open func()) {
	t.Helper()
	release := make(chan struct{})
	open = sync.OnceFunc(func() { close(release) })
	front := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if held(r) {
			select {
			case <-release:
			case <-r.Context().Done():
				return
			}
		}
		up.ServeHTTP(w, r)
	}))
	t.Cleanup(front.Close)
	return front.URL, open
}

// A herd of clients pulling a tag past its TTL causes one upstream HEAD:
// the revalidation is shared. The upstream holds every manifest HEAD until
// all the clients are inside the mirror's revalidation (seen on their
// goroutines' stacks), so they overlap for certain.
func TestStaleTagRevalidatedOnceForAHerd(t *testing.T) {
	const herd = 8
	up := fixture.StartUpstream(t)
	img := up.SeedImage(t, "library/herd", "1", 1, 1<<10)
	var heads atomic.Int32
	front, open := holdingFront(t, up, func(r *http.Request) bool {
		if r.Method != http.MethodHead || !strings.Contains(r.URL.Path, "/manifests/") {
			return false
		}
		heads.Add(1)
		return true
	})
	// Without referrers: the fill's HEADs of signature tags would wait
	// at the front too.
	m := servertest.Start(t, front, proxy.WithTagTTL(time.Minute), proxy.WithReferrers(false))
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
	if in, ok := waitGoroutinesIn(t, "proxy.(*Proxy).revalidate(", herd); !ok {
		t.Fatalf("%d of %d clients in the revalidation, %d upstream HEADs", in, herd, heads.Load())
	}
	open()
	ctx, cancel := context.WithTimeout(t.Context(), watchdog)
	defer cancel()
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
