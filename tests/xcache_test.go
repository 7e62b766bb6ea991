package tests

import (
	"encoding/json"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/docker-mirror/docker-mirror/proxy"
	"github.com/docker-mirror/docker-mirror/proxy/access"
	"github.com/docker-mirror/docker-mirror/tests/fixture"
	"github.com/docker-mirror/docker-mirror/tests/servertest"
)

// Every response carries X-Cache, as the README says: hit, miss,
// revalidated or stale where the cache or an upstream answered, none for
// answers of the mirror's own and for errors found before any lookup.
func TestXCacheOnEveryResponse(t *testing.T) {
	up := fixture.StartUpstream(t)
	img := up.SeedImage(t, "library/xc", "1", 1, 1<<10)
	m := servertest.Start(t, up.URL())

	cases := []struct {
		name, method, path string
		status             int
		cache              string
	}{
		{"base", http.MethodGet, "/v2/", 200, "none"},
		{"manifest miss", http.MethodGet, "/v2/xc/manifests/1", 200, "miss"},
		{"manifest hit", http.MethodGet, "/v2/xc/manifests/" + img.Digest, 200, "hit"},
		{"manifest unknown upstream", http.MethodGet, "/v2/xc/manifests/nope", 404, "miss"},
		{"blob", http.MethodGet, "/v2/xc/blobs/" + img.Layers[0], 200, ""}, // hit or miss: the background mirror races
		{"tags", http.MethodGet, "/v2/xc/tags/list", 200, "miss"},
		{"tags unknown repo", http.MethodGet, "/v2/nosuchrepo/tags/list", 404, "miss"},
		{"NAME_UNKNOWN upstream", http.MethodGet, "/v2/xc/manifests/1?ns=unconfigured.example", 404, "none"},
		{"NAME_INVALID", http.MethodGet, "/v2/docker.io/myreg.local/app/manifests/1", 400, "none"},
		{"catalog", http.MethodGet, "/v2/_catalog", 200, "none"},
		{"no such endpoint", http.MethodGet, "/nope", 404, "none"},
		{"write refused", http.MethodPut, "/v2/xc/manifests/1", 405, "none"},
		{"healthz", http.MethodGet, "/healthz", 200, "none"},
		{"readyz", http.MethodGet, "/readyz", 200, "none"},
		{"prefetch list", http.MethodGet, "/prefetch", 200, "none"},
		{"metrics", http.MethodGet, "/metrics", 200, "none"},
	}
	for _, c := range cases {
		r := do(t, c.method, m.URL()+c.path, map[string]string{"Accept": manifestAccept})
		if r.err != nil {
			t.Fatalf("%s: %v", c.name, r.err)
		}
		if r.status != c.status {
			t.Errorf("%s: %s %s: status %d, want %d (%s)", c.name, c.method, c.path, r.status, c.status, r.body)
		}
		got := r.header.Get("X-Cache")
		switch {
		case c.cache == "" && got != "hit" && got != "miss":
			t.Errorf("%s: X-Cache %q, want hit or miss", c.name, got)
		case c.cache != "" && got != c.cache:
			t.Errorf("%s: %s %s: X-Cache %q, want %q", c.name, c.method, c.path, got, c.cache)
		}
	}
	// The upstream down: the cached tags, marked stale.
	up.SetFault(fixture.Fault{Status: http.StatusServiceUnavailable})
	if r := get(t, m.URL()+"/v2/xc/tags/list"); r.status != 200 || r.header.Get("X-Cache") != "stale" {
		t.Errorf("tags with the upstream down: status %d, X-Cache %q, want 200 stale", r.status, r.header.Get("X-Cache"))
	}
}

// A client that cannot read an index is answered its linux/amd64 image
// for a tag, and X-Cache says how the tag was answered: revalidated after
// the TTL, stale with the upstream down; not the image's own lookup by
// digest, a hit either way.
func TestXCacheOfTagAnsweredWithItsPlatform(t *testing.T) {
	up := fixture.StartUpstream(t)
	ma := up.SeedMultiArch(t, "library/multi", "v1", fixture.Docker)
	m := servertest.Start(t, up.URL(), proxy.WithTagTTL(time.Minute))
	amd := ma.Platforms["linux/amd64"]
	url := m.URL() + "/v2/multi/manifests/v1"
	accept := map[string]string{"Accept": amd.MediaType}
	wantManifest(t, do(t, http.MethodGet, url, accept), amd.Manifest, amd.MediaType)
	m.WaitIdle()
	for _, c := range []struct {
		method, cache string
		after         time.Duration
		down          bool
	}{
		{http.MethodGet, "hit", 0, false},
		{http.MethodGet, "revalidated", 2 * time.Minute, false},
		{http.MethodHead, "revalidated", 2 * time.Minute, false},
		{http.MethodHead, "stale", 2 * time.Minute, true},
		{http.MethodGet, "stale", 0, true},
	} {
		m.Clock.Advance(c.after)
		if c.down {
			up.Stop()
		}
		r := do(t, c.method, url, accept)
		if r.status != http.StatusOK || r.header.Get("Docker-Content-Digest") != amd.Digest {
			t.Fatalf("%s (%s): %d %s %.200s", c.method, c.cache, r.status, r.header.Get("Docker-Content-Digest"), r.body)
		}
		if got := r.header.Get("X-Cache"); got != c.cache {
			t.Errorf("%s answered %s: X-Cache %q", c.method, c.cache, got)
		}
	}
}

// Scrapes are counted but not access-logged; a refused scrape is logged.
func TestMetricsNotAccessLogged(t *testing.T) {
	up := fixture.StartUpstream(t)
	file := htpasswd(t, map[string]string{"ops": "secret"})
	pol, err := access.Load(file, []string{"ops"}, true)
	if err != nil {
		t.Fatal(err)
	}
	var buf fixture.LogBuffer
	m := servertest.Start(t, up.URL(), proxy.WithLogger(slog.New(slog.NewJSONHandler(&buf, nil))), proxy.WithAccess(pol, access.Admin))
	for range 3 {
		if r := do(t, http.MethodGet, m.URL()+"/metrics", authed("ops", "secret")); r.status != 200 {
			t.Fatalf("/metrics as an admin: %d", r.status)
		}
	}
	wantError(t, do(t, http.MethodGet, m.URL()+"/metrics", nil), http.StatusUnauthorized, "UNAUTHORIZED")
	get(t, m.URL()+"/healthz")
	r := do(t, http.MethodGet, m.URL()+"/metrics", authed("ops", "secret"))
	if !strings.Contains(string(r.body), `docker_mirror_http_requests_total{method="GET",route="metrics",status="200"} 3`) {
		t.Errorf("scrapes not counted in the requests metric:\n%s", grepLines(string(r.body), "route=\"metrics\""))
	}

	routes := map[string][]float64{}
	for _, line := range strings.Split(strings.TrimSpace(buf.String()), "\n") {
		var e map[string]any
		if err := json.Unmarshal([]byte(line), &e); err != nil {
			t.Fatalf("not a JSON log line: %q", line)
		}
		if e["msg"] == "request" {
			route, _ := e["route"].(string)
			status, _ := e["status"].(float64)
			routes[route] = append(routes[route], status)
		}
	}
	if got := routes["metrics"]; len(got) != 1 || got[0] != http.StatusUnauthorized {
		t.Errorf("access-log lines of /metrics: statuses %v, want only the refused one (401)", got)
	}
	if len(routes["healthz"]) != 1 {
		t.Errorf("access-log lines of /healthz: %v, want 1", routes["healthz"])
	}
}

// grepLines returns the lines of s that contain sub.
func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// A HEAD of a blob not held is answered from the upstream's HEAD, nothing
// fetched, and says miss, counted as one: the same HEAD of the blob held
// is a hit (operations.md, X-Cache).
func TestBlobHeadNotHeldIsAMiss(t *testing.T) {
	up := fixture.StartUpstream(t)
	img := up.SeedImage(t, "library/hd", "1", 1, 1<<10)
	layer := img.Layers[0]
	m := servertest.Start(t, up.URL())
	url := m.URL() + "/v2/hd/blobs/" + layer
	if r := do(t, http.MethodHead, url, nil); r.status != http.StatusOK || r.header.Get("X-Cache") != "miss" || r.header.Get("Content-Length") == "" {
		t.Fatalf("HEAD of a blob not held: status %d, X-Cache %q, Content-Length %q; want 200, miss, its size", r.status, r.header.Get("X-Cache"), r.header.Get("Content-Length"))
	}
	if n := blobGets(up, layer); n != 0 {
		t.Fatalf("HEAD of a blob not held: %d GETs of it upstream, want none", n)
	}
	wantBlob(t, m, "hd", layer)
	m.WaitIdle()
	if r := do(t, http.MethodHead, url, nil); r.status != http.StatusOK || r.header.Get("X-Cache") != "hit" {
		t.Fatalf("HEAD of a blob held: status %d, X-Cache %q; want 200, hit", r.status, r.header.Get("X-Cache"))
	}
	got := scrape(t, m)
	if h, mi := got[`docker_mirror_cache_requests_total{kind="blob",result="hit"}`], got[`docker_mirror_cache_requests_total{kind="blob",result="miss"}`]; mi != 2 || h != 1 {
		t.Errorf("a HEAD not held, a GET, a HEAD held: %v blob misses, %v hits; want 2, 1", mi, h)
	}
}

// A blob held for one repository, asked for another that the upstream
// says does not have it, is answered 404 after the upstream was asked:
// X-Cache says miss, as for any error the upstream passed on, not none,
// which operations.md keeps for errors found before any lookup.
func TestXCacheOfBlobHeldForAnotherRepositoryNotUpstream(t *testing.T) {
	up := fixture.StartUpstream(t)
	img := up.SeedImage(t, "library/xc", "1", 1, 1<<10)
	up.SeedImage(t, "library/other", "1", 1, 1<<10)
	m := servertest.Start(t, up.URL())
	if r := get(t, m.URL()+"/v2/xc/blobs/"+img.Layers[0]); r.status != http.StatusOK {
		t.Fatalf("blob GET: %d", r.status)
	}
	m.WaitIdle()
	before := up.Count("", "")
	r := get(t, m.URL()+"/v2/other/blobs/"+img.Layers[0])
	if r.status != http.StatusNotFound {
		t.Fatalf("blob held for another repository, not in this one upstream: %d, want 404 (%s)", r.status, r.body)
	}
	if up.Count("", "") == before {
		t.Fatal("the upstream was not asked whether the repository has the blob")
	}
	if c := r.header.Get("X-Cache"); c != "miss" {
		t.Errorf("X-Cache of a 404 the upstream answered: %q, want miss", c)
	}
}
