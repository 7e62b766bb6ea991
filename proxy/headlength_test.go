package proxy

import (
	"net/http"
	"net/http/httptest"
	"strconv"
	"testing"

	"github.com/docker-mirror/docker-mirror/tests/fixture"
)

// A blob's HEAD on a miss, through an upstream whose HEAD answers without
// Content-Length (a CDN or gateway in front of some registries) while its
// GET has one, is answered with the blob's Content-Length all the same,
// as the distribution spec and the clients that size a blob by its HEAD
// (go-containerregistry's remote.Layer, regclient) want it.
func TestBlobHeadMissWithoutUpstreamLength(t *testing.T) {
	up := fixture.StartUpstream(t)
	img := up.SeedImage(t, "library/app", "v1", 1, 4<<10)
	front := headWithoutFront(t, up, "Content-Length")
	p, _, _ := testMirror(t, nil, front)
	srv := httptest.NewServer(p.Handler())
	t.Cleanup(srv.Close)

	layer := img.Layers[0]
	direct, err := http.Head(up.URL() + "/v2/library/app/blobs/" + layer)
	if err != nil {
		t.Fatal(err)
	}
	direct.Body.Close()
	want := direct.ContentLength
	viaFront, err := http.Head(front + "/v2/library/app/blobs/" + layer)
	if err != nil {
		t.Fatal(err)
	}
	viaFront.Body.Close()
	if viaFront.Header.Get("Content-Length") != "" || want <= 0 {
		t.Fatalf("the front's HEAD has Content-Length %q (want none), the upstream's %d", viaFront.Header.Get("Content-Length"), want)
	}
	resp, err := http.Head(srv.URL + "/v2/library/app/blobs/" + layer)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Length") != strconv.FormatInt(want, 10) {
		t.Fatalf("HEAD of a blob missed: %d, Content-Length %q, want 200 and %d", resp.StatusCode, resp.Header.Get("Content-Length"), want)
	}
	if err := p.WaitIdle(t.Context()); err != nil {
		t.Fatal(err)
	}
}
