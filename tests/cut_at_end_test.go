package tests

import (
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/docker-mirror/docker-mirror/tests/fixture"
	"github.com/docker-mirror/docker-mirror/tests/servertest"
)

// A blob the upstream sends without a length (chunked) whose connection
// is cut after its last byte, before the end of the chunked body, has
// every byte in hand: it verifies, and the client gets it whole. A resume
// from its end (bytes=<size>-) would be answered 416 by the upstream.
func TestChunkedBlobCutAfterLastByteServed(t *testing.T) {
	up := fixture.StartUpstream(t)
	img := up.SeedImage(t, "library/cutend", "1", 1, 256<<10)
	front := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		up.ServeHTTP(&noLength{ResponseWriter: w}, r)
	}))
	t.Cleanup(front.Close)
	m := servertest.Start(t, front.URL)
	layer := img.Layers[0]
	size := blobSizes(t, img)[layer]

	up.SetFault(fixture.Fault{Kind: fixture.KindBlob, Method: http.MethodGet, Cut: true, CutAfter: size, Times: 1})
	wantBlob(t, m, "cutend", layer)
	m.WaitIdle()
	if _, err := m.Store.Stat(t.Context(), "library/cutend", digestOf(t, layer)); err != nil {
		t.Fatalf("the blob was not stored: %v", err)
	}
	if n := blobGets(up, layer); n != 1 {
		t.Errorf("%d upstream GETs of the blob, want 1 (nothing to resume)", n)
	}
}
