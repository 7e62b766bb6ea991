package tests

import (
	"fmt"
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

// capRanges is an upstream front that answers a Range request with a
// subset of the range asked for (at most cap bytes), as RFC 9110 lets a
// server do: the 206's Content-Range says which bytes it holds.
func capRanges(up http.Handler, limit int64) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if rng := r.Header.Get("Range"); rng != "" {
			var first int64
			if _, err := fmt.Sscanf(rng, "bytes=%d-", &first); err == nil {
				r.Header.Set("Range", fmt.Sprintf("bytes=%d-%d", first, first+limit-1))
			}
		}
		up.ServeHTTP(w, r)
	})
}

// A blob download cut mid-stream is resumed; an upstream that answers the
// resume with a subset of the rest (a 206 whose Content-Range ends short
// of the blob) is asked again from where that ended: the client gets the
// whole blob, not a body the mirror took for complete and then found
// corrupt.
func TestBlobResumeAnsweredWithPartOfTheRest(t *testing.T) {
	up := fixture.StartUpstream(t)
	layer, _ := pullCutThroughCap(t, up, "capped", up)
	if n := blobGets(up, layer); n != 3 {
		t.Errorf("%d upstream GETs of the blob, want 3 (the cut one, two resumes)", n)
	}
}

// A blob the upstream sends without a length, cut mid-stream, is resumed;
// the resume's 206 says the blob's size, and holds a subset of the rest:
// the download goes on from where that ended, not taking the end of the
// subset for the end of a blob it now knows the size of. The client gets
// the whole blob, each byte sent once.
func TestChunkedBlobResumeAnsweredWithPartOfTheRest(t *testing.T) {
	up := fixture.StartUpstream(t)
	layer, size := pullCutThroughCap(t, up, "chunkcap", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		up.ServeHTTP(&noLength{ResponseWriter: w}, r)
	}))
	if n := up.BlobBytesFor(layer); n != size {
		t.Errorf("upstream sent %d bytes of a blob of %d", n, size)
	}
}

// pullCutThroughCap seeds library/NAME:1 in up, a layer of 512 KiB, and
// pulls that layer through a mirror whose upstream is served by (up, or
// a front of it) behind capRanges of 300 KiB, its first GET cut after
// 100 KiB; the client must get it whole, and the mirror store it. It
// returns the layer and its size.
func pullCutThroughCap(t *testing.T, up *fixture.Upstream, name string, served http.Handler) (string, int64) {
	t.Helper()
	img := up.SeedImage(t, "library/"+name, "1", 1, 512<<10)
	front := httptest.NewServer(capRanges(served, 300<<10))
	t.Cleanup(front.Close)
	m := servertest.Start(t, front.URL)
	layer := img.Layers[0]
	size := blobSizes(t, img)[layer]
	if size <= 400<<10 {
		t.Fatalf("the layer is %d bytes: the test needs one resume to leave some of it", size)
	}
	up.SetFault(fixture.Fault{Kind: fixture.KindBlob, Method: http.MethodGet, Cut: true, CutAfter: 100 << 10, Times: 1})
	wantBlob(t, m, name, layer)
	m.WaitIdle()
	if _, err := m.Store.Stat(t.Context(), "library/"+name, digestOf(t, layer)); err != nil {
		t.Fatalf("the blob was not stored: %v", err)
	}
	return layer, size
}

// An upstream that answers each Range in small pieces (a 206 of at most
// 16 KiB, its Content-Range saying so, each answer complete) is followed
// piece by piece once a download is cut: each short answer brought what
// it promised, and is not a connection cut for want of progress. Before,
// three such answers in a row were taken for cuts that brought too
// little, and the download failed, the client's body cut short.
func TestBlobResumeAnsweredInSmallPieces(t *testing.T) {
	up := fixture.StartUpstream(t)
	img := up.SeedImage(t, "library/pieces", "1", 1, 256<<10)
	front := httptest.NewServer(capRanges(up, 16<<10))
	t.Cleanup(front.Close)
	m := servertest.Start(t, front.URL)
	layer := img.Layers[0]
	up.SetFault(fixture.Fault{Kind: fixture.KindBlob, Method: http.MethodGet, Cut: true, CutAfter: 100 << 10, Times: 1})
	wantBlob(t, m, "pieces", layer)
	m.WaitIdle()
	if _, err := m.Store.Stat(t.Context(), "library/pieces", digestOf(t, layer)); err != nil {
		t.Fatalf("the blob was not stored: %v", err)
	}
}

// An upstream that answers each Range with a byte or a few (a 206 whose
// Content-Range says so, each answer complete: a broken front end, or a
// hostile one) is not asked once per byte for the rest of a cut blob: a
// few such answers in a row fail the download, as cuts that brought too
// little do. Each was counted afresh: a 1 GiB layer cost a billion
// requests, until the slow-download rule cut it after an hour.
func TestBlobResumeAnsweredInBytesStops(t *testing.T) {
	up := fixture.StartUpstream(t)
	img := up.SeedImage(t, "library/bytes", "1", 1, 8<<10)
	front := httptest.NewServer(capRanges(up, 1))
	t.Cleanup(front.Close)
	m := servertest.Start(t, front.URL)
	layer := img.Layers[0]
	up.SetFault(fixture.Fault{Kind: fixture.KindBlob, Method: http.MethodGet, Cut: true, CutAfter: 1 << 10, Times: 1})
	get(t, m.URL()+"/v2/bytes/blobs/"+layer)
	m.WaitIdle()
	if n := blobGets(up, layer); n > 8 {
		t.Errorf("%d upstream GETs of the blob answered a byte at a time, want a few (the cut one, and resumes that brought too little)", n)
	}
}

// claimsTheRest is an upstream front that answers a Range request with
// its first piece bytes, as capRanges does, but whose 206 says in its
// Content-Range that it holds the whole rest of the blob: each answer
// ends short of what it claims, as a cut one does.
func claimsTheRest(up http.Handler, piece, size int64) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var first int64
		if _, err := fmt.Sscanf(r.Header.Get("Range"), "bytes=%d-", &first); err == nil {
			r.Header.Set("Range", fmt.Sprintf("bytes=%d-%d", first, first+piece-1))
			w = &claimingWriter{ResponseWriter: w, claim: fmt.Sprintf("bytes %d-%d/%d", first, size-1, size)}
		}
		up.ServeHTTP(w, r)
	})
}

type claimingWriter struct {
	http.ResponseWriter
	claim string
}

func (w *claimingWriter) WriteHeader(code int) {
	if code == http.StatusPartialContent {
		w.Header().Set("Content-Range", w.claim)
	}
	w.ResponseWriter.WriteHeader(code)
}

// An upstream whose answers to a resume end short of the range their
// Content-Range claims (1 KiB of the rest each) is cut, not answering in
// pieces: each such answer counts as a cut that brought too little, and
// the download fails after a few. Before, each counted afresh, and the
// mirror went on asking, a request per KiB of the blob (per byte, for an
// upstream sending one), without end on a large blob.
func TestBlobResumeAnswerShortOfItsRangeIsACut(t *testing.T) {
	up := fixture.StartUpstream(t)
	img := up.SeedImage(t, "library/short", "1", 1, 256<<10)
	layer := img.Layers[0]
	size := blobSizes(t, img)[layer]
	front := httptest.NewServer(claimsTheRest(up, 1<<10, size))
	t.Cleanup(front.Close)
	m := servertest.Start(t, front.URL)
	up.SetFault(fixture.Fault{Kind: fixture.KindBlob, Method: http.MethodGet, Cut: true, CutAfter: 100 << 10, Times: 1})
	get(t, m.URL()+"/v2/short/blobs/"+layer)
	m.WaitIdle()
	if n := blobGets(up, layer); n > 5 {
		t.Errorf("%d upstream GETs of a blob whose resumes each held 1 KiB of the rest they claimed, want at most 5 (the cut one and a few resumes)", n)
	}
}
