package tests

import (
	"context"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/docker-mirror/docker-mirror/tests/fixture"
	"github.com/docker-mirror/docker-mirror/tests/servertest"
)

// A lazy puller (stargz, soci) reads a blob it has not cached a range at a
// time, one after the other: the first range starts the download of the
// whole blob, which goes on once that range is answered, so the next range
// is served from it (or from the store) and the upstream sends the blob
// once.
func TestSequentialRangesOnAMissFetchTheBlobOnce(t *testing.T) {
	up := fixture.StartUpstream(t)
	img := up.SeedImage(t, "library/lazy", "1", 1, 256<<10)
	m := servertest.Start(t, up.URL())
	layer := img.Layers[0]
	size := blobSizes(t, img)[layer]
	url := m.URL() + "/v2/lazy/blobs/" + layer
	// The download is still running when the first range is answered.
	gate := up.GateBlob(layer, 64<<10)

	first := do(t, http.MethodGet, url, map[string]string{"Range": "bytes=10-19"})
	if first.status != http.StatusPartialContent || first.header.Get("Content-Range") != fmt.Sprintf("bytes 10-19/%d", size) {
		t.Fatalf("first range: %d, Content-Range %q", first.status, first.header.Get("Content-Range"))
	}
	ctx, cancel := context.WithTimeout(t.Context(), watchdog)
	defer cancel()
	wait(t, ctx, gate.Reached(), "the upstream never reached the gate")
	gate.Open()
	m.WaitIdle()

	second := do(t, http.MethodGet, url, map[string]string{"Range": "bytes=100000-100099"})
	if second.status != http.StatusPartialContent || second.header.Get("Content-Range") != fmt.Sprintf("bytes 100000-100099/%d", size) {
		t.Fatalf("second range: %d, Content-Range %q", second.status, second.header.Get("Content-Range"))
	}
	full := get(t, url)
	if full.status != http.StatusOK || sha(full.body) != layer {
		t.Fatalf("GET: %d, digest %s", full.status, sha(full.body))
	}
	if string(first.body) != string(full.body[10:20]) || string(second.body) != string(full.body[100000:100100]) {
		t.Fatal("a range on a miss returned the wrong bytes")
	}
	if n, b := blobGets(up, layer), up.BlobBytesFor(layer); n != 1 || b != size {
		t.Fatalf("the upstream was asked %d times for the blob and sent %d bytes, want once and %d", n, b, size)
	}
}

// An upstream that stops sending a blob's body mid-way, its connection
// still open (a stalled CDN node, a load balancer holding a dead backend's
// stream), is taken as cut once it has sent nothing for the upstream
// timeout: the download resumes from where it stopped, and the client
// waiting for it gets the whole blob, not a pull hung until the fill's
// hour is up.
func TestStalledBlobBodyResumed(t *testing.T) {
	up := fixture.StartUpstream(t)
	img := up.SeedImage(t, "library/stall", "1", 1, 256<<10)
	m := servertest.StartUpstreams(t, []servertest.Upstream{{Host: "docker.io", URL: up.URL(), Timeout: 300 * time.Millisecond}}, nil)
	layer := img.Layers[0]
	up.GateBlob(layer, 64<<10) // held until the test ends
	ctx, cancel := context.WithTimeout(t.Context(), watchdog)
	defer cancel()

	s := openStream(t, ctx, "client", m.URL()+"/v2/stall/blobs/"+layer)
	if err := s.readRest(); err != nil {
		t.Fatalf("the client got %d bytes, then %v", len(s.got), err)
	}
	if sha(s.got) != layer {
		t.Fatalf("%d bytes hashing to %s", len(s.got), sha(s.got))
	}
	// (Not counted: on a loaded machine a pause of the timeout's 300 ms
	// between two of the resume's writes is a stall too, and resumed.)
	if n := blobGets(up, layer); n < 2 {
		t.Errorf("%d upstream GETs of the blob, want the stalled one and a resume", n)
	}
}
