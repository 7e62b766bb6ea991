package tests

import (
	"encoding/json"
	"net/http"
	"slices"
	"testing"

	"github.com/docker-mirror/docker-mirror/tests/fixture"
	"github.com/docker-mirror/docker-mirror/tests/servertest"
)

// catalogPage reads one /v2/_catalog answer: the names and the Link header.
func catalogPage(t *testing.T, r response) ([]string, string) {
	t.Helper()
	if r.err != nil || r.status != http.StatusOK || r.header.Get("Content-Type") != "application/json" {
		t.Fatalf("catalog: %d %v %v %s", r.status, r.err, r.header, r.body)
	}
	var c struct {
		Repositories []string `json:"repositories"`
	}
	if err := json.Unmarshal(r.body, &c); err != nil || c.Repositories == nil {
		t.Fatalf("catalog body %s: %v", r.body, err)
	}
	return c.Repositories, r.header.Get("Link")
}

// GET /v2/_catalog lists the cached repositories from the index, as
// clients name them, with every upstream down, paged like the spec.
func TestCatalog(t *testing.T) {
	hub, ghcr := fixture.StartUpstream(t), fixture.StartUpstream(t)
	hub.SeedImage(t, "library/alpine", "1", 1, 1<<10)
	hub.SeedImage(t, "library/busybox", "1", 1, 1<<10)
	hub.SeedImage(t, "team/app", "1", 1, 1<<10)
	hub.SeedImage(t, "team/notpulled", "1", 1, 1<<10)
	ghcr.SeedImage(t, "o/app", "1", 1, 1<<10)
	m := servertest.StartUpstreams(t, []servertest.Upstream{
		{Host: "docker.io", URL: hub.URL()},
		{Host: "ghcr.io", URL: ghcr.URL()},
	}, nil)
	if names, link := catalogPage(t, get(t, m.URL()+"/v2/_catalog")); len(names) != 0 || link != "" {
		t.Fatalf("empty mirror's catalog %v %q", names, link)
	}
	for _, name := range []string{"alpine", "library/busybox", "team/app", "ghcr.io/o/app"} {
		cranePull(t, ref(t, m, name+":1"))
	}
	m.WaitIdle()
	hub.Stop()
	ghcr.Stop()

	want := []string{"ghcr.io/o/app", "library/alpine", "library/busybox", "team/app"}
	names, link := catalogPage(t, get(t, m.URL()+"/v2/_catalog"))
	if !slices.Equal(names, want) || link != "" {
		t.Fatalf("catalog %v (Link %q), want %v", names, link, want)
	}
	if h := do(t, http.MethodHead, m.URL()+"/v2/_catalog", nil); h.status != http.StatusOK || len(h.body) != 0 || h.header.Get("Content-Length") == "" {
		t.Fatalf("HEAD catalog: %d %v %q", h.status, h.header, h.body)
	}

	// Paged: n per page, a Link to the next page while more follow.
	var all []string
	next := "/v2/_catalog?n=3"
	for pages := 0; next != ""; pages++ {
		if pages > len(want) {
			t.Fatalf("catalog paging does not end (at %s)", next)
		}
		page, link := catalogPage(t, get(t, m.URL()+next))
		if len(page) > 3 {
			t.Fatalf("page %s has %d names", next, len(page))
		}
		all = append(all, page...)
		next = ""
		if link != "" {
			var ok bool
			if next, ok = linkTarget(link); !ok {
				t.Fatalf("Link %q", link)
			}
		}
	}
	if !slices.Equal(all, want) {
		t.Fatalf("paged catalog %v, want %v", all, want)
	}
	if names, _ := catalogPage(t, get(t, m.URL()+"/v2/_catalog?n=2&last=library%2Falpine")); !slices.Equal(names, want[2:]) {
		t.Fatalf("catalog after library/alpine %v", names)
	}
	wantError(t, get(t, m.URL()+"/v2/_catalog?n=-1"), http.StatusBadRequest, "PAGINATION_NUMBER_INVALID")
	// No repository is named _catalog: the name routes refuse it.
	wantError(t, get(t, m.URL()+"/v2/_catalog/tags/list"), http.StatusBadRequest, "NAME_INVALID")
	wantError(t, get(t, m.URL()+"/v2/_catalog/manifests/latest"), http.StatusBadRequest, "NAME_INVALID")
}

// linkTarget returns the URL of a `<url>; rel="next"` Link header.
func linkTarget(link string) (string, bool) {
	start, end := 0, 0
	for i, c := range link {
		switch c {
		case '<':
			start = i + 1
		case '>':
			end = i
		}
	}
	if end <= start {
		return "", false
	}
	return link[start:end], link[end:] == `>; rel="next"`
}
