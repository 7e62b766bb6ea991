package cluster_test

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/docker-mirror/docker-mirror/server"
	"github.com/docker-mirror/docker-mirror/tests/fixture"
	"github.com/docker-mirror/docker-mirror/tests/servertest"
)

// TestStaleTagRevalidatedByOwner: once a tag every replica holds is past
// its TTL, each replica asks its owner, which asks the upstream: three
// replicas cost one upstream HEAD, and none serves the tag stale.
func TestStaleTagRevalidatedByOwner(t *testing.T) {
	up := fixture.StartUpstream(t)
	img := up.SeedImage(t, "library/stale", "v1", 1, 1024)
	clock := servertest.NewClock()
	rs := startClusterWith(t, 3, up, sharedDir, nil, func(int) []server.Option {
		return []server.Option{server.WithClock(clock.Now)}
	})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	heads := func() int {
		n := 0
		for _, rec := range up.Requests() {
			if rec.Kind == fixture.KindManifest && rec.Method == http.MethodHead && strings.HasSuffix(rec.Path, "/manifests/v1") {
				n++
			}
		}
		return n
	}
	for _, r := range rs {
		st, _, raw, err := get(ctx, r.url+"/v2/library/stale/manifests/v1", nil)
		if err != nil || st != http.StatusOK || sha(raw) != img.Digest {
			t.Fatalf("%s: tag: status %d, err %v", r.url, st, err)
		}
		r.waitIdle(t)
	}
	before := heads()
	clock.Advance(time.Duration(rs[0].cfg.TagTTL) + time.Minute)
	for _, r := range rs {
		st, h, raw, err := get(ctx, r.url+"/v2/library/stale/manifests/v1", nil)
		if err != nil || st != http.StatusOK || sha(raw) != img.Digest {
			t.Fatalf("%s: stale tag: status %d, err %v", r.url, st, err)
		}
		// The owner answers a hit if an earlier replica's question made
		// it revalidate already.
		if c := h.Get("X-Cache"); c != "revalidated" && c != "hit" {
			t.Errorf("%s: X-Cache %q, want revalidated (or hit, on the owner)", r.url, c)
		}
	}
	if n := heads() - before; n != 1 {
		t.Errorf("stale tag revalidated with %d upstream HEADs across %d replicas, want 1", n, len(rs))
	}
}

// TestStaleTagGoneUpstreamAskedOnce: a stale tag the upstream no longer
// has is asked of the upstream once, by its owner (a HEAD, and the GET
// that confirms its 404), whose "not found" the other replicas take as
// the upstream's: not a reason to ask it again.
func TestStaleTagGoneUpstreamAskedOnce(t *testing.T) {
	up := fixture.StartUpstream(t)
	img := up.SeedImage(t, "library/gone", "v1", 1, 1024)
	clock := servertest.NewClock()
	rs := startClusterWith(t, 2, up, sharedDir, nil, func(int) []server.Option {
		return []server.Option{server.WithClock(clock.Now)}
	})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for _, r := range rs {
		st, _, raw, err := get(ctx, r.url+"/v2/library/gone/manifests/v1", nil)
		if err != nil || st != http.StatusOK || sha(raw) != img.Digest {
			t.Fatalf("%s: tag: status %d, err %v", r.url, st, err)
		}
		r.waitIdle(t)
	}
	asked := func() map[string]int {
		n := map[string]int{}
		for _, rec := range up.Requests() {
			if rec.Kind == fixture.KindManifest && strings.HasSuffix(rec.Path, "/manifests/v1") {
				n[rec.Method]++
			}
		}
		return n
	}
	before := asked()
	clock.Advance(time.Duration(rs[0].cfg.TagTTL) + time.Minute)
	up.SetFault(fixture.Fault{Kind: fixture.KindManifest, PathContains: "/manifests/v1", Status: http.StatusNotFound})
	via := rs[0]
	if o := owner(rs, "docker.io/library/gone:v1"); o == via {
		via = rs[1]
	}
	st, _, _, err := get(ctx, via.url+"/v2/library/gone/manifests/v1", nil)
	if err != nil || st != http.StatusNotFound {
		t.Fatalf("%s: tag gone upstream: status %d, err %v; want 404", via.url, st, err)
	}
	after := asked()
	if heads, gets := after[http.MethodHead]-before[http.MethodHead], after[http.MethodGet]-before[http.MethodGet]; heads != 1 || gets != 1 {
		t.Errorf("a stale tag gone upstream was asked of the upstream with %d HEADs and %d GETs, want 1 of each (by its owner)", heads, gets)
	}
}
