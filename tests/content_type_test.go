package tests

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/docker-mirror/docker-mirror/storage"
	"github.com/docker-mirror/docker-mirror/tests/fixture"
	"github.com/docker-mirror/docker-mirror/tests/servertest"
)

// A manifest the upstream serves as text/html, whose body names no media
// type, is refused as a bad upstream answer (502) and nothing of it is
// kept: served from the mirror's origin as text/html, its JSON (which may
// carry markup in any string) would be a page browsers render.
func TestManifestServedAsHTMLIsRefused(t *testing.T) {
	up := fixture.StartUpstream(t)
	m := servertest.Start(t, up.URL())
	// A valid OCI image manifest without mediaType (the field is optional).
	body := []byte(`{"schemaVersion":2,"config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"` +
		digest.FromString("config").String() + `","size":6},"layers":[],"annotations":{"x":"<script>alert(document.domain)</script>"}}`)
	for _, ct := range []string{"text/html", "image/svg+xml", "text/html; charset=utf-8"} {
		t.Run(ct, func(t *testing.T) {
			up.SetFault(fixture.Fault{Method: http.MethodGet, Kind: fixture.KindManifest, PathContains: "/manifests/html",
				Status: http.StatusOK, Header: http.Header{"Content-Type": {ct}}, Body: body})
			defer up.ClearFault()
			r := get(t, m.URL()+"/v2/team/page/manifests/html")
			wantError(t, r, http.StatusBadGateway, "UNAVAILABLE")
			if r.header.Get("Content-Type") == ct {
				t.Fatalf("error answered as %s", ct)
			}
			m.WaitIdle()
			d := digest.FromBytes(body)
			if _, ok, err := m.Index.Tag("docker.io", "team/page", "html"); err != nil || ok {
				t.Errorf("tag recorded: %v %v", ok, err)
			}
			if _, ok, err := m.Index.Manifest(d); err != nil || ok {
				t.Errorf("manifest recorded: %v %v", ok, err)
			}
			if _, err := m.Store.Stat(context.Background(), "docker.io/team/page", d); !errors.Is(err, storage.ErrNotFound) {
				t.Errorf("manifest stored: %v", err)
			}
		})
	}
}

// A manifest served as text/html whose body names its media type is
// served with the body's type, never text/html.
func TestManifestServedAsHTMLTakesBodyMediaType(t *testing.T) {
	up := fixture.StartUpstream(t)
	img := up.SeedImage(t, "team/app", "v1", 1, 1<<10)
	if !strings.Contains(string(img.Manifest), `"mediaType":"`+img.MediaType+`"`) {
		t.Fatalf("seeded manifest names no mediaType: %s", img.Manifest)
	}
	m := servertest.Start(t, up.URL())
	up.SetFault(fixture.Fault{Method: http.MethodGet, Kind: fixture.KindManifest, PathContains: "/manifests/v1",
		Status: http.StatusOK, Header: http.Header{"Content-Type": {"text/html"}}, Body: img.Manifest})
	wantManifest(t, get(t, m.URL()+"/v2/team/app/manifests/v1"), img.Manifest, img.MediaType)
	up.ClearFault()
	m.WaitIdle()
	// And so it is recorded: the hit is served with it too.
	hit := get(t, m.URL()+"/v2/team/app/manifests/"+img.Digest)
	wantManifest(t, hit, img.Manifest, img.MediaType)
	if hit.header.Get("X-Cache") != "hit" {
		t.Errorf("X-Cache %q, want hit", hit.header.Get("X-Cache"))
	}
}

// The media type a manifest's body names is served bare: parameters
// (here one holding a control character, which no header may carry) are
// left out; a type that is not made of a media type's characters is no
// manifest type, and the manifest is refused as a bad upstream answer.
func TestManifestBodyMediaTypeServedBare(t *testing.T) {
	up := fixture.StartUpstream(t)
	m := servertest.Start(t, up.URL())
	manifest := func(mt string) []byte {
		return []byte(`{"schemaVersion":2,"mediaType":"` + mt + `","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"` +
			digest.FromString("config").String() + `","size":6},"layers":[]}`)
	}
	withParam := manifest(`application/vnd.oci.image.manifest.v1+json; x=\"a\u0001b\"`)
	up.SetFault(fixture.Fault{Method: http.MethodGet, Kind: fixture.KindManifest, PathContains: "/manifests/param",
		Status: http.StatusOK, Header: http.Header{"Content-Type": {"application/json"}}, Body: withParam})
	wantManifest(t, get(t, m.URL()+"/v2/team/bare/manifests/param"), withParam, "application/vnd.oci.image.manifest.v1+json")
	up.ClearFault()
	m.WaitIdle()
	d := digest.FromBytes(withParam)
	wantManifest(t, get(t, m.URL()+"/v2/team/bare/manifests/"+d.String()), withParam, "application/vnd.oci.image.manifest.v1+json")
	// Recorded with the parameter (as a version before this one did):
	// served bare all the same.
	recordMediaType(t, m, "team/bare", d, "application/vnd.oci.image.manifest.v1+json; x=\"a\x01b\"")
	wantManifest(t, get(t, m.URL()+"/v2/team/bare/manifests/"+d.String()), withParam, "application/vnd.oci.image.manifest.v1+json")

	broken := manifest(`application/vnd.a\r\nX-Injected: 1.manifest.v1+json`)
	up.SetFault(fixture.Fault{Method: http.MethodGet, Kind: fixture.KindManifest, PathContains: "/manifests/broken",
		Status: http.StatusOK, Header: http.Header{"Content-Type": {"application/json"}}, Body: broken})
	defer up.ClearFault()
	r := get(t, m.URL()+"/v2/team/bare/manifests/broken")
	wantError(t, r, http.StatusBadGateway, "UNAVAILABLE")
	if r.header.Get("X-Injected") != "" {
		t.Errorf("a header from the manifest's media type: %q", r.header)
	}
	m.WaitIdle()
	if _, ok, err := m.Index.Manifest(digest.FromBytes(broken)); err != nil || ok {
		t.Errorf("manifest recorded: %v %v", ok, err)
	}
}

// A manifest recorded with a non-manifest type (by a version that took
// any Content-Type) is never served with it: the type is settled again
// from the body, and a body that names none is fetched again.
func TestStoredNonManifestTypeIsNotServed(t *testing.T) {
	up := fixture.StartUpstream(t)
	img := up.SeedImage(t, "team/old", "v1", 1, 1<<10)
	m := servertest.Start(t, up.URL())
	wantManifest(t, get(t, m.URL()+"/v2/team/old/manifests/"+img.Digest), img.Manifest, img.MediaType)
	m.WaitIdle()
	recordMediaType(t, m, "team/old", digestOf(t, img.Digest), "text/html")
	before := up.Count(http.MethodGet, fixture.KindManifest)
	hit := get(t, m.URL()+"/v2/team/old/manifests/"+img.Digest)
	wantManifest(t, hit, img.Manifest, img.MediaType)
	if hit.header.Get("X-Cache") != "hit" || up.Count(http.MethodGet, fixture.KindManifest) != before {
		t.Errorf("X-Cache %q, upstream GETs %d -> %d: the body names its type, no fetch needed",
			hit.header.Get("X-Cache"), before, up.Count(http.MethodGet, fixture.KindManifest))
	}

	// A body that names no type: dropped and fetched again.
	body := []byte(`{"schemaVersion":2,"config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"` +
		digest.FromString("config").String() + `","size":6},"layers":[]}`)
	bare := digest.FromBytes(body)
	up.SetFault(fixture.Fault{Method: http.MethodGet, Kind: fixture.KindManifest, PathContains: bare.String(),
		Status: http.StatusOK, Header: http.Header{"Content-Type": {"application/vnd.oci.image.manifest.v1+json"}}, Body: body})
	defer up.ClearFault()
	wantManifest(t, get(t, m.URL()+"/v2/team/old/manifests/"+bare.String()), body, "application/vnd.oci.image.manifest.v1+json")
	m.WaitIdle()
	recordMediaType(t, m, "team/old", bare, "text/html")
	again := get(t, m.URL()+"/v2/team/old/manifests/"+bare.String())
	wantManifest(t, again, body, "application/vnd.oci.image.manifest.v1+json")
	if again.header.Get("X-Cache") != "miss" {
		t.Errorf("X-Cache %q, want miss (fetched again)", again.header.Get("X-Cache"))
	}
}

// recordMediaType records docker.io/repo's manifest d again with media
// type mt, as a version that kept another type would have.
func recordMediaType(t *testing.T, m *servertest.Server, repo string, d digest.Digest, mt string) {
	t.Helper()
	rec, ok, err := m.Index.Manifest(d)
	if err != nil || !ok {
		t.Fatalf("manifest %s not recorded: %v", d, err)
	}
	rec.MediaType = mt
	if err := m.Index.RecordManifest(storage.ManifestEntry{Upstream: "docker.io", Repo: repo, Digest: d, Record: rec}); err != nil {
		t.Fatal(err)
	}
}

// Every answer, of every route, success or error, tells browsers not to
// sniff a type other than the one declared (X-Content-Type-Options).
func TestNosniffOnEveryRoute(t *testing.T) {
	up := fixture.StartUpstream(t)
	img := up.SeedImage(t, "library/sniff", "1", 1, 1<<10)
	m := servertest.Start(t, up.URL())
	missing := "sha256:" + strings.Repeat("0", 64)
	cases := []struct {
		name, method, path string
		status             int
	}{
		{"base", http.MethodGet, "/v2/", 200},
		{"manifest", http.MethodGet, "/v2/sniff/manifests/1", 200},
		{"manifest head", http.MethodHead, "/v2/sniff/manifests/1", 200},
		{"manifest unknown", http.MethodGet, "/v2/sniff/manifests/nope", 404},
		{"manifest bad tag", http.MethodGet, "/v2/sniff/manifests/-bad", 400},
		{"blob", http.MethodGet, "/v2/sniff/blobs/" + img.Layers[0], 200},
		{"blob unknown", http.MethodGet, "/v2/sniff/blobs/" + missing, 404},
		{"tags", http.MethodGet, "/v2/sniff/tags/list", 200},
		{"referrers", http.MethodGet, "/v2/sniff/referrers/" + img.Digest, 200}, // the mirror serves the API for an upstream without it
		{"prefetch list", http.MethodGet, "/prefetch", 200},
		{"prefetch unknown", http.MethodGet, "/prefetch/nope", 404},
		{"prefetch bad body", http.MethodPost, "/prefetch", 400},
		{"write", http.MethodPut, "/v2/sniff/manifests/1", 405},
		{"method", http.MethodDelete, "/metrics", 405},
		{"not found", http.MethodGet, "/nowhere", 404},
		{"healthz", http.MethodGet, "/healthz", 200},
		{"readyz", http.MethodGet, "/readyz", 200},
		{"metrics", http.MethodGet, "/metrics", 200},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := do(t, c.method, m.URL()+c.path, map[string]string{"Accept": manifestAccept})
			if r.err != nil || r.status != c.status {
				t.Fatalf("%s %s: status %d, want %d (err %v, body %.200s)", c.method, c.path, r.status, c.status, r.err, r.body)
			}
			if got := r.header.Get("X-Content-Type-Options"); got != "nosniff" {
				t.Errorf("%s %s: X-Content-Type-Options %q, want nosniff", c.method, c.path, got)
			}
		})
	}
}
