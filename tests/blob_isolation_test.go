package tests

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/docker-mirror/docker-mirror/tests/fixture"
	"github.com/docker-mirror/docker-mirror/tests/servertest"
)

// getNoWait sends a GET with ctx and reads the body only of an answer
// other than 200: a blob answered 200 from a download that is held
// upstream would not end until the gate opens, and its status is enough.
func getNoWait(t *testing.T, ctx context.Context, url string) response {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return response{err: err}
	}
	defer resp.Body.Close()
	r := response{status: resp.StatusCode, header: resp.Header}
	if resp.StatusCode != http.StatusOK {
		r.body, r.err = io.ReadAll(resp.Body)
	}
	return r
}

// blobOf reads a blob straight from an upstream (counted by the fixture;
// reset its counts afterwards).
func blobOf(t *testing.T, up *fixture.Upstream, repo, dgst string) []byte {
	t.Helper()
	r := get(t, up.URL()+"/v2/"+repo+"/blobs/"+dgst)
	if r.err != nil || r.status != http.StatusOK || sha(r.body) != dgst {
		t.Fatalf("reading %s@%s from the upstream: %d %v", repo, dgst, r.status, r.err)
	}
	return r.body
}

// blobHeads counts the upstream's HEADs of one blob in one repository.
func blobHeads(up *fixture.Upstream, repo, dgst string) int {
	n := 0
	for _, r := range up.Requests() {
		if r.Method == http.MethodHead && r.Path == "/v2/"+repo+"/blobs/"+dgst {
			n++
		}
	}
	return n
}

// blobSends counts the GETs of blob dgst that up answered with it.
func blobSends(up *fixture.Upstream, dgst string) int {
	n := 0
	for _, r := range up.Requests() {
		if r.Method == http.MethodGet && r.Kind == fixture.KindBlob && strings.HasSuffix(r.Path, "/"+dgst) &&
			(r.Status == http.StatusOK || r.Status == http.StatusPartialContent) {
			n++
		}
	}
	return n
}

// headSignal serves an upstream and closes seen once the first HEAD of
// one blob has been answered: a test waits for the mirror to have asked.
type headSignal struct {
	up   http.Handler
	blob string
	seen chan struct{}
	once sync.Once
}

func startHeadSignal(t *testing.T, up http.Handler, blob string) (*headSignal, string) {
	h := &headSignal{up: up, blob: blob, seen: make(chan struct{})}
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return h, srv.URL
}

func (h *headSignal) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h.up.ServeHTTP(w, r)
	if r.Method == http.MethodHead && strings.HasSuffix(r.URL.Path, "/blobs/"+h.blob) {
		h.once.Do(func() { close(h.seen) })
	}
}

// A blob download in progress is shared only with requests whose own
// upstream repository has the blob: while docker.io's download of a layer
// is held mid-body, the same digest asked through ghcr.io (which does not
// have it) or through another docker.io repository (which does not
// either) is 404 BLOB_UNKNOWN, never docker.io's bytes; through a ghcr.io
// repository that has it (its upstream says so with a HEAD), the request
// joins the download and ghcr.io does not send the blob again.
func TestDownloadSharedOnlyWhereTheUpstreamHasTheBlob(t *testing.T) {
	hub := fixture.StartUpstream(t)
	ghcr := fixture.StartUpstream(t)
	img := hub.SeedImage(t, "library/app", "v1", 1, 256<<10)
	layer := img.Layers[0]
	ghcr.SeedImage(t, "library/app", "v1", 1, 4<<10) // the repository exists; the layer is not in it
	ghcr.PushBlob(t, "library/has", blobOf(t, hub, "library/app", layer))
	hub.ResetCounts()
	m := servertest.StartUpstreams(t, []servertest.Upstream{
		{Host: "docker.io", URL: hub.URL()},
		{Host: "ghcr.io", URL: ghcr.URL()},
	}, nil)

	gate := hub.GateBlob(layer, 64<<10)
	ctx, cancel := context.WithTimeout(t.Context(), watchdog)
	defer cancel()
	first := openStream(t, ctx, "docker.io client", m.URL()+"/v2/library/app/blobs/"+layer)
	wait(t, ctx, gate.Reached(), "the upstream never reached the gate")

	for _, name := range []string{"ghcr.io/library/app", "library/app?ns=ghcr.io", "other/app", "docker.io/library/other"} {
		path, query := name, ""
		if i := len("library/app"); len(name) > i && name[i] == '?' {
			path, query = name[:i], name[i:]
		}
		r := getNoWait(t, ctx, m.URL()+"/v2/"+path+"/blobs/"+layer+query)
		if r.status == http.StatusOK {
			t.Errorf("%s: the blob being downloaded for docker.io/library/app was served (200) for a repository whose upstream does not have it", name)
			continue
		}
		wantError(t, r, http.StatusNotFound, "BLOB_UNKNOWN")
	}
	if n := blobHeads(ghcr, "library/app", layer); n == 0 {
		t.Error("ghcr.io was not asked whether library/app has the blob")
	}

	joined := openStream(t, ctx, "ghcr.io client of a repository that has the blob", m.URL()+"/v2/ghcr.io/library/has/blobs/"+layer)
	gate.Open()
	for _, c := range []*stream{first, joined} {
		if err := c.readRest(); err != nil || sha(c.got) != layer {
			t.Errorf("%s: %d bytes hashing to %s, %v", c.name, len(c.got), sha(c.got), err)
		}
	}
	// A HEAD's 404 is asked again with a GET (upstreamHasBlob), answered
	// 404 here: only a GET answered with the blob sends it.
	if n := blobSends(ghcr, layer); n != 0 {
		t.Errorf("ghcr.io sent the blob being downloaded from docker.io %d times; want 0 (a HEAD confirms, the download is shared)", n)
	}
	m.WaitIdle()
	if n := blobSends(hub, layer); n != 1 {
		t.Errorf("docker.io sent the blob %d times, want 1", n)
	}
}

// A manifest of one upstream that lists a blob stored from another does
// not make that blob servable through it: ghcr.io's image lists a layer
// the mirror holds from docker.io, but ghcr.io answers 404 for it. Its
// background fill asks ghcr.io (a HEAD) instead of linking the stored
// blob, and the blob stays 404 through ghcr.io, both when it was stored
// before and when docker.io's download of it is still running.
func TestManifestOfAnotherUpstreamDoesNotLinkAStoredBlob(t *testing.T) {
	for _, running := range []bool{false, true} {
		name := "stored"
		if running {
			name = "downloading"
		}
		t.Run(name, func(t *testing.T) {
			hub := fixture.StartUpstream(t)
			ghcr := fixture.StartUpstream(t)
			img := hub.SeedImage(t, "library/app", "v1", 1, 256<<10)
			layer := img.Layers[0]
			// ghcr.io's library/app holds the same image, then answers 404
			// for the layer: a registry whose manifest lists a blob it does
			// not serve (or would not serve to us).
			for _, b := range img.Blobs() {
				ghcr.PushBlob(t, "library/app", blobOf(t, hub, "library/app", b))
			}
			ghcr.PutManifest(t, "library/app", "v1", img.MediaType, img.Manifest)
			ghcr.SetFault(fixture.Fault{Kind: fixture.KindBlob, PathContains: layer, Status: http.StatusNotFound,
				Body: []byte(`{"errors":[{"code":"BLOB_UNKNOWN","message":"blob unknown to registry"}]}`)})
			hub.ResetCounts()
			asked, ghcrURL := startHeadSignal(t, ghcr, layer)
			m := servertest.StartUpstreams(t, []servertest.Upstream{
				{Host: "docker.io", URL: hub.URL()},
				{Host: "ghcr.io", URL: ghcrURL},
			}, nil)
			ctx, cancel := context.WithTimeout(t.Context(), watchdog)
			defer cancel()

			var first *stream
			var gate *fixture.Gate
			if running {
				gate = hub.GateBlob(layer, 64<<10)
				first = openStream(t, ctx, "docker.io client", m.URL()+"/v2/library/app/blobs/"+layer)
				wait(t, ctx, gate.Reached(), "the upstream never reached the gate")
			} else {
				wantBlob(t, m, "library/app", layer)
				wantError(t, get(t, m.URL()+"/v2/ghcr.io/library/app/blobs/"+layer), http.StatusNotFound, "BLOB_UNKNOWN")
			}
			wantManifest(t, get(t, m.URL()+"/v2/ghcr.io/library/app/manifests/v1"), img.Manifest, img.MediaType)
			if running {
				// The fill asks ghcr.io instead of waiting for docker.io's
				// download of the layer.
				wait(t, ctx, asked.seen, "the fill never asked ghcr.io for the layer")
				gate.Open()
				if err := first.readRest(); err != nil || sha(first.got) != layer {
					t.Fatalf("docker.io client: %d bytes, %v", len(first.got), err)
				}
			}
			m.WaitIdle()

			if linked, err := m.Index.Linked("ghcr.io", "library/app", digestOf(t, layer)); err != nil || linked {
				t.Errorf("ghcr.io/library/app linked to a blob ghcr.io does not have: %v, %v", linked, err)
			}
			wantError(t, get(t, m.URL()+"/v2/ghcr.io/library/app/blobs/"+layer), http.StatusNotFound, "BLOB_UNKNOWN")
			wantError(t, get(t, m.URL()+"/v2/library/app/blobs/"+layer+"?ns=ghcr.io"), http.StatusNotFound, "BLOB_UNKNOWN")
			// A HEAD's 404 is confirmed by a GET (some registries answer
			// 404 to a HEAD only): answered 404 too, it sends nothing.
			if n := ghcr.BlobBytesFor(layer); n != 0 {
				t.Errorf("ghcr.io sent %d bytes of the layer; it answers 404 for it", n)
			}
			// docker.io's own content is untouched.
			wantBlob(t, m, "library/app", layer)
		})
	}
}
