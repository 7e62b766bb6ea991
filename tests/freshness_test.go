package tests

import (
	"net/http"
	"testing"
	"time"

	"github.com/docker-mirror/docker-mirror/proxy"
	"github.com/docker-mirror/docker-mirror/tests/fixture"
	"github.com/docker-mirror/docker-mirror/tests/servertest"
)

// Within the tag TTL a tag is served without asking the upstream; after
// it, one HEAD revalidates; a moved tag is picked up; a failing upstream
// during revalidation serves the cached digest.
func TestTagTTL(t *testing.T) {
	up := fixture.StartUpstream(t)
	first := up.SeedImage(t, "library/app", "stable", 1, 1<<10)
	m := servertest.Start(t, up.URL(), proxy.WithTagTTL(time.Minute))
	url := m.URL() + "/v2/app/manifests/stable"

	wantManifest(t, get(t, url), first.Manifest, first.MediaType)
	m.WaitIdle()
	up.ResetCounts()

	m.Clock.Advance(59 * time.Second)
	for range 3 {
		r := get(t, url)
		wantManifest(t, r, first.Manifest, first.MediaType)
		if r.header.Get("X-Cache") != "hit" {
			t.Errorf("X-Cache %q within the TTL", r.header.Get("X-Cache"))
		}
	}
	if n := up.Count("", fixture.KindManifest); n != 0 {
		t.Fatalf("%d upstream manifest requests within the TTL, want 0", n)
	}

	m.Clock.Advance(2 * time.Second)
	r := get(t, url)
	wantManifest(t, r, first.Manifest, first.MediaType)
	if h, g := up.Count(http.MethodHead, fixture.KindManifest), up.Count(http.MethodGet, fixture.KindManifest); h != 1 || g != 0 {
		t.Fatalf("after the TTL: %d HEADs and %d GETs upstream, want 1 and 0", h, g)
	}
	if r.header.Get("X-Cache") != "revalidated" {
		t.Errorf("X-Cache %q, want revalidated", r.header.Get("X-Cache"))
	}
	// Revalidated: fresh again for another TTL.
	get(t, url)
	if n := up.Count("", fixture.KindManifest); n != 1 {
		t.Fatalf("%d upstream manifest requests after revalidating, want 1", n)
	}

	// The tag moves upstream.
	second := up.SeedImage(t, "library/app", "stable", 1, 1<<10)
	m.Clock.Advance(2 * time.Minute)
	wantManifest(t, get(t, url), second.Manifest, second.MediaType)
	m.WaitIdle()
	wantImage(t, m, "app", second)

	// Revalidation fails: the cached digest is served.
	m.Clock.Advance(2 * time.Minute)
	up.SetFault(fixture.Fault{Status: http.StatusServiceUnavailable})
	r = get(t, url)
	wantManifest(t, r, second.Manifest, second.MediaType)
	if r.header.Get("X-Cache") != "stale" {
		t.Errorf("X-Cache %q, want stale", r.header.Get("X-Cache"))
	}
	up.ClearFault()
	up.Stop()
	wantManifest(t, get(t, url), second.Manifest, second.MediaType)
}

// With a TTL of 0 every pull revalidates; a tag deleted upstream is gone.
func TestTagTTLZeroAndDeletedTag(t *testing.T) {
	up := fixture.StartUpstream(t)
	img := up.SeedImage(t, "library/gone", "1", 1, 1<<10)
	m := servertest.Start(t, up.URL(), proxy.WithTagTTL(0))
	url := m.URL() + "/v2/gone/manifests/1"
	wantManifest(t, get(t, url), img.Manifest, img.MediaType)
	m.WaitIdle() // the fill's HEADs of cosign tags are not the pull's
	up.ResetCounts()
	wantManifest(t, get(t, url), img.Manifest, img.MediaType)
	if n := up.Count(http.MethodHead, fixture.KindManifest); n != 1 {
		t.Fatalf("%d HEADs with TTL 0, want 1", n)
	}
	up.Delete(t, "library/gone", img.Digest)
	wantError(t, get(t, url), http.StatusNotFound, "MANIFEST_UNKNOWN")
}

// Docker Hub's anonymous token flow: a token is fetched once per
// repository and reused for every request.
func TestTokenReused(t *testing.T) {
	up := fixture.StartUpstream(t, fixture.WithTokenAuth())
	ma := up.SeedMultiArch(t, "library/multi", "v1", fixture.OCI)
	m := servertest.Start(t, up.URL())
	cranePull(t, ref(t, m, "multi:v1"))
	m.WaitIdle()
	for _, p := range []string{"linux/arm64", "linux/arm/v7"} {
		wantImage(t, m, "multi", ma.Platforms[p])
	}
	if n := up.Count("", fixture.KindToken); n != 1 {
		t.Fatalf("%d token requests, want 1", n)
	}
	if n := up.Count("", fixture.KindBlob); n == 0 {
		t.Fatal("no blob requests: the test pulled nothing")
	}
}

// Tags are listed from the upstream with n/last paging, and from the
// index when the upstream is down.
func TestTagsList(t *testing.T) {
	up := fixture.StartUpstream(t)
	img := up.SeedImage(t, "library/tl", "a", 1, 1<<10)
	for _, tag := range []string{"b", "c", "d"} {
		up.Tag(t, "library/tl", img.Digest, tag)
	}
	m := servertest.Start(t, up.URL())

	r := get(t, m.URL()+"/v2/tl/tags/list?n=2")
	if r.status != 200 || string(r.body) != `{"name":"tl","tags":["a","b"]}`+"\n" {
		t.Fatalf("page 1: %d %s", r.status, r.body)
	}
	if link := r.header.Get("Link"); link != `</v2/tl/tags/list?last=b&n=2>; rel="next"` {
		t.Fatalf("Link %q", link)
	}
	r = get(t, m.URL()+"/v2/tl/tags/list?n=2&last=b")
	if string(r.body) != `{"name":"tl","tags":["c","d"]}`+"\n" {
		t.Fatalf("page 2: %s", r.body)
	}

	for _, tag := range []string{"a", "c"} {
		get(t, m.URL()+"/v2/tl/manifests/"+tag)
	}
	m.WaitIdle() // the tags are recorded after their answers
	up.Stop()
	r = get(t, m.URL()+"/v2/tl/tags/list")
	if r.status != 200 || string(r.body) != `{"name":"tl","tags":["a","c"]}`+"\n" || r.header.Get("X-Cache") != "stale" {
		t.Fatalf("cached tags: %d %s %v", r.status, r.body, r.header)
	}
	r = get(t, m.URL()+"/v2/tl/tags/list?n=1")
	if string(r.body) != `{"name":"tl","tags":["a"]}`+"\n" || r.header.Get("Link") == "" {
		t.Fatalf("cached page: %s %v", r.body, r.header)
	}
}

// An upstream's own tag_ttl overrides the global one: docker.io keeps the
// global minute, ghcr.io trusts its tags for an hour and local.test for
// nothing. On the mirror's clock each revalidates on its own schedule.
func TestPerUpstreamTagTTL(t *testing.T) {
	hub, ghcr, local := fixture.StartUpstream(t), fixture.StartUpstream(t), fixture.StartUpstream(t)
	hubImg := hub.SeedImage(t, "library/app", "1", 1, 1<<10)
	ghcrImg := ghcr.SeedImage(t, "org/app", "1", 1, 1<<10)
	localImg := local.SeedImage(t, "org/app", "1", 1, 1<<10)
	hour, zero := time.Hour, time.Duration(0)
	m := servertest.StartUpstreams(t, []servertest.Upstream{
		{Host: proxy.DefaultHost, URL: hub.URL()},
		{Host: "ghcr.io", URL: ghcr.URL(), TagTTL: &hour},
		{Host: "local.test", URL: local.URL(), TagTTL: &zero},
	}, nil, proxy.WithTagTTL(time.Minute), proxy.WithReferrers(false)) // only the tags' HEADs counted
	type pull struct {
		up  *fixture.Upstream
		url string
		img *fixture.Image
	}
	pulls := map[string]pull{
		"docker.io":  {hub, m.URL() + "/v2/app/manifests/1", hubImg},
		"ghcr.io":    {ghcr, m.URL() + "/v2/org/app/manifests/1?ns=ghcr.io", ghcrImg},
		"local.test": {local, m.URL() + "/v2/org/app/manifests/1?ns=local.test", localImg},
	}
	for _, p := range pulls {
		wantManifest(t, get(t, p.url), p.img.Manifest, p.img.MediaType)
	}
	m.WaitIdle()
	// check pulls every tag once and wants want[host] upstream HEADs.
	check := func(when string, want map[string]int) {
		t.Helper()
		for host, p := range pulls {
			p.up.ResetCounts()
			wantManifest(t, get(t, p.url), p.img.Manifest, p.img.MediaType)
			if h, g := p.up.Count(http.MethodHead, fixture.KindManifest), p.up.Count(http.MethodGet, fixture.KindManifest); h != want[host] || g != 0 {
				t.Errorf("%s, %s: %d HEADs and %d GETs upstream, want %d and 0", when, host, h, g, want[host])
			}
		}
	}
	check("at once", map[string]int{"docker.io": 0, "ghcr.io": 0, "local.test": 1})
	m.Clock.Advance(2 * time.Minute)
	check("after 2 minutes", map[string]int{"docker.io": 1, "ghcr.io": 0, "local.test": 1})
	m.Clock.Advance(30 * time.Minute)
	check("after 32 minutes", map[string]int{"docker.io": 1, "ghcr.io": 0, "local.test": 1})
	m.Clock.Advance(30 * time.Minute)
	check("after 62 minutes", map[string]int{"docker.io": 1, "ghcr.io": 1, "local.test": 1})
}

// A tag that moved upstream, whose new manifest the upstream then refuses
// (Docker Hub over its pull limit still answers HEADs, which it does not
// count, and refuses GETs with 429; or a failing GET), is served from the
// cache as stale, as when the revalidation itself fails: the client is
// not refused what the mirror holds. Once the upstream answers, the new
// manifest is served.
func TestMovedTagServedStaleWhenItsFetchFails(t *testing.T) {
	for _, status := range []int{http.StatusTooManyRequests, http.StatusServiceUnavailable} {
		t.Run(http.StatusText(status), func(t *testing.T) {
			up := fixture.StartUpstream(t)
			first := up.SeedImage(t, "library/app", "stable", 1, 1<<10)
			m := servertest.Start(t, up.URL(), proxy.WithTagTTL(time.Minute))
			url := m.URL() + "/v2/app/manifests/stable"
			wantManifest(t, get(t, url), first.Manifest, first.MediaType)
			m.WaitIdle()

			second := up.SeedImage(t, "library/app", "stable", 1, 1<<10)
			m.Clock.Advance(2 * time.Minute)
			up.ResetCounts()
			up.SetFault(fixture.Fault{Method: http.MethodGet, Kind: fixture.KindManifest, Status: status, Header: http.Header{"Retry-After": {"0"}}})
			r := get(t, url)
			wantManifest(t, r, first.Manifest, first.MediaType)
			if c := r.header.Get("X-Cache"); c != "stale" {
				t.Errorf("X-Cache %q, want stale", c)
			}
			if h, g := up.Count(http.MethodHead, fixture.KindManifest), up.Count(http.MethodGet, fixture.KindManifest); h != 1 || g != 1 {
				t.Errorf("%d HEADs and %d GETs upstream, want 1 and 1", h, g)
			}

			up.ClearFault() // and no back-off (Retry-After: 0)
			wantManifest(t, get(t, url), second.Manifest, second.MediaType)
		})
	}
}

// n=0 asks for no tags, as the upstream answers it (the distribution
// registry and go-containerregistry's list none): so does the mirror's
// list of cached tags with the upstream down, and its catalog. Before,
// both took 0 for "no limit" and listed everything.
func TestTagsAndCatalogPageOfZero(t *testing.T) {
	up := fixture.StartUpstream(t)
	img := up.SeedImage(t, "library/zero", "a", 1, 1<<10)
	up.Tag(t, "library/zero", img.Digest, "b")
	m := servertest.Start(t, up.URL())
	for _, tag := range []string{"a", "b"} {
		get(t, m.URL()+"/v2/zero/manifests/"+tag)
	}
	m.WaitIdle()
	want := `{"name":"zero","tags":[]}` + "\n"
	if r := get(t, m.URL()+"/v2/zero/tags/list?n=0"); r.status != 200 || string(r.body) != want {
		t.Fatalf("upstream's n=0: %d %s", r.status, r.body)
	}
	up.Stop()
	r := get(t, m.URL()+"/v2/zero/tags/list?n=0")
	if r.status != 200 || string(r.body) != want || r.header.Get("Link") != "" || r.header.Get("X-Cache") != "stale" {
		t.Errorf("cached tags, n=0: %d %s %v", r.status, r.body, r.header)
	}
	r = get(t, m.URL()+"/v2/_catalog?n=0")
	if r.status != 200 || string(r.body) != `{"repositories":[]}` || r.header.Get("Link") != "" {
		t.Errorf("catalog, n=0: %d %s %v", r.status, r.body, r.header)
	}
}
