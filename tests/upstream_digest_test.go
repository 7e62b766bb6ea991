package tests

import (
	"context"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/docker-mirror/docker-mirror/proxy"
	"github.com/docker-mirror/docker-mirror/proxy/upstream"
	"github.com/docker-mirror/docker-mirror/storage"
	"github.com/docker-mirror/docker-mirror/tests/fixture"
	"github.com/docker-mirror/docker-mirror/tests/servertest"
)

// wantNothingCached checks that the mirror holds no manifest, link or tag
// for any of the digests and tags given.
func wantNothingCached(t *testing.T, m *servertest.Server, repo string, digests []string, tags []string) {
	t.Helper()
	m.WaitIdle()
	if n := m.Index.StoredBytes(); n != 0 {
		t.Errorf("%d bytes stored", n)
	}
	for _, d := range digests {
		if _, ok, err := m.Index.Manifest(digestOf(t, d)); err != nil || ok {
			t.Errorf("manifest %s recorded (err %v)", d, err)
		}
		if ok, err := m.Index.Linked(proxy.DefaultHost, repo, digestOf(t, d)); err != nil || ok {
			t.Errorf("manifest %s linked to %s (err %v)", d, repo, err)
		}
	}
	for _, tag := range tags {
		if _, ok, err := m.Index.Tag(proxy.DefaultHost, repo, tag); err != nil || ok {
			t.Errorf("tag %s recorded (err %v)", tag, err)
		}
	}
}

// An upstream answering a manifest digest with another, well-formed
// manifest (and that manifest's own, true Docker-Content-Digest): only the
// check of the body against the digest asked for can tell. Clients get a
// 502, nothing is kept, and once the upstream answers right the right
// manifest is served.
func TestUpstreamManifestOtherBodyForDigest(t *testing.T) {
	up := fixture.StartUpstream(t)
	a := up.SeedImage(t, "library/dg", "a", 1, 1<<10)
	b := up.SeedImage(t, "library/dg", "b", 1, 1<<10)
	m := servertest.Start(t, up.URL())
	url := m.URL() + "/v2/dg/manifests/" + a.Digest

	up.SetFault(fixture.Fault{Kind: fixture.KindManifest, PathContains: a.Digest, Status: http.StatusOK, Body: b.Manifest,
		Header: http.Header{"Content-Type": {b.MediaType}, "Docker-Content-Digest": {b.Digest}}})
	for range 2 { // refused each time: nothing was cached by the first
		wantError(t, get(t, url), http.StatusBadGateway, "UNAVAILABLE")
	}
	h := do(t, http.MethodHead, url, map[string]string{"Accept": manifestAccept})
	if h.err != nil || h.status != http.StatusBadGateway || h.header.Get("Docker-Content-Digest") != "" {
		t.Errorf("HEAD: status %d, Docker-Content-Digest %q, err %v; want a 502 without digest", h.status, h.header.Get("Docker-Content-Digest"), h.err)
	}
	if n := up.Count(http.MethodGet, fixture.KindManifest); n != 3 {
		t.Errorf("%d manifest GETs upstream, want 3 (none answered from a cache)", n)
	}
	wantNothingCached(t, m, "library/dg", []string{a.Digest, b.Digest}, nil)

	up.ClearFault()
	wantManifest(t, get(t, url), a.Manifest, a.MediaType)
	wantManifest(t, get(t, m.URL()+"/v2/dg/manifests/"+b.Digest), b.Manifest, b.MediaType)
}

// An upstream answering a tag with the right body but a Docker-Content-
// Digest naming another manifest: only the check of the header against the
// body can tell. Clients get a 502 for the tag; nothing is kept; the
// digest the header named never serves this body; once the upstream
// answers right the tag is served.
func TestUpstreamManifestLyingDigestHeader(t *testing.T) {
	up := fixture.StartUpstream(t)
	a := up.SeedImage(t, "library/dh", "1", 1, 1<<10)
	b := up.SeedImage(t, "library/dh", "2", 1, 1<<10)
	m := servertest.Start(t, up.URL())
	tagURL := m.URL() + "/v2/dh/manifests/1"

	// Every manifest request gets a's bytes with b's digest.
	up.SetFault(fixture.Fault{Kind: fixture.KindManifest, Status: http.StatusOK, Body: a.Manifest,
		Header: http.Header{"Content-Type": {a.MediaType}, "Docker-Content-Digest": {b.Digest}}})
	for range 2 {
		wantError(t, get(t, tagURL), http.StatusBadGateway, "UNAVAILABLE")
	}
	h := do(t, http.MethodHead, tagURL, map[string]string{"Accept": manifestAccept})
	if h.err != nil || h.status != http.StatusBadGateway || h.header.Get("Docker-Content-Digest") != "" {
		t.Errorf("HEAD: status %d, Docker-Content-Digest %q, err %v; want a 502 without digest", h.status, h.header.Get("Docker-Content-Digest"), h.err)
	}
	// Asked by the digest the header named, the mirror does not serve a's
	// bytes under it.
	wantError(t, get(t, m.URL()+"/v2/dh/manifests/"+b.Digest), http.StatusBadGateway, "UNAVAILABLE")
	wantNothingCached(t, m, "library/dh", []string{a.Digest, b.Digest}, []string{"1"})

	up.ClearFault()
	wantManifest(t, get(t, tagURL), a.Manifest, a.MediaType)
	wantManifest(t, get(t, m.URL()+"/v2/dh/manifests/"+b.Digest), b.Manifest, b.MediaType)
}

// startClockedMirror runs a mirror of upstreamURL whose upstream client
// and proxy both read clock: the mirrortest harness does not give the
// upstream client a clock.
func startClockedMirror(t *testing.T, upstreamURL string, clock *servertest.Clock) string {
	t.Helper()
	dir := t.TempDir()
	index, err := storage.OpenIndex(filepath.Join(dir, "index.db"))
	if err != nil {
		t.Fatal(err)
	}
	store, err := storage.OpenDriverStore(context.Background(), "filesystem", map[string]any{"rootdirectory": filepath.Join(dir, "store")})
	if err != nil {
		t.Fatal(err)
	}
	tr := upstream.DefaultTransport()
	c, err := upstream.New(proxy.DefaultHost, upstreamURL, upstream.WithTransport(tr), upstream.WithClock(clock.Now))
	if err != nil {
		t.Fatal(err)
	}
	p, err := proxy.New(store, index, []*upstream.Client{c},
		proxy.WithClock(clock.Now), proxy.WithLogger(servertest.Logger()), proxy.WithSpoolDir(dir))
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(p.Handler())
	t.Cleanup(func() {
		srv.CloseClientConnections()
		srv.Close()
		p.Close()
		tr.CloseIdleConnections()
		if err := index.Close(); err != nil {
			t.Error(err)
		}
	})
	return srv.URL
}

// An upstream's 429 reaches the mirror's clients with the upstream's
// Retry-After as it was sent; while it runs, the upstream is not asked and
// clients are told the exact seconds left (rounded up, at most an hour);
// when it is over the upstream is asked again. On a fake clock.
func TestUpstreamRetryAfterThroughMirror(t *testing.T) {
	cases := []struct {
		name       string
		retryAfter func(now time.Time) string
		left       string // Retry-After while backing off, at once
	}{
		{"seconds", func(time.Time) string { return "120" }, "120"},
		{"HTTP date", func(now time.Time) string { return now.Add(300 * time.Second).Format(http.TimeFormat) }, "300"},
		{"seconds over the cap", func(time.Time) string { return "86400" }, "3600"},
		{"HTTP date over the cap", func(now time.Time) string { return now.Add(30 * time.Hour).Format(http.TimeFormat) }, "3600"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			up := fixture.StartUpstream(t)
			img := up.SeedImage(t, "library/ra", "1", 1, 1<<10)
			clock := servertest.NewClock()
			mirror := startClockedMirror(t, up.URL(), clock)
			manifestURL, blobURL := mirror+"/v2/ra/manifests/1", mirror+"/v2/ra/blobs/"+img.Layers[0]

			ra := tc.retryAfter(clock.Now())
			// How long the back-off runs (an HTTP date has whole seconds,
			// the clock fractions).
			var backoff time.Duration
			if n, err := strconv.Atoi(ra); err == nil {
				backoff = time.Duration(n) * time.Second
			} else if at, err := http.ParseTime(ra); err == nil {
				backoff = at.Sub(clock.Now())
			} else {
				t.Fatal(err)
			}
			backoff = min(backoff, time.Hour)
			wantRetryAfter := func(r response, want string) {
				t.Helper()
				wantError(t, r, http.StatusTooManyRequests, "TOOMANYREQUESTS")
				if got := r.header.Values("Retry-After"); len(got) != 1 || got[0] != want {
					t.Fatalf("Retry-After %q, want %q", got, want)
				}
			}

			up.SetFault(fixture.Fault{Kind: fixture.KindManifest, Status: http.StatusTooManyRequests, Header: http.Header{"Retry-After": {ra}}})
			wantRetryAfter(get(t, manifestURL), ra)
			up.ClearFault()
			asked := up.Count("", "")

			wantRetryAfter(get(t, manifestURL), tc.left)
			wantRetryAfter(get(t, blobURL), tc.left)
			clock.Advance(backoff - time.Second - time.Nanosecond)
			wantRetryAfter(get(t, manifestURL), "2")
			clock.Advance(time.Second)
			wantRetryAfter(get(t, blobURL), "1")
			if n := up.Count("", ""); n != asked {
				t.Fatalf("the upstream was asked %d times while backing off", n-asked)
			}
			clock.Advance(time.Nanosecond) // over
			wantManifest(t, get(t, manifestURL), img.Manifest, img.MediaType)
			if r := get(t, blobURL); r.status != http.StatusOK || sha(r.body) != img.Layers[0] {
				t.Fatalf("blob after the back-off: status %d, digest %s, err %v", r.status, sha(r.body), r.err)
			}
		})
	}
}
