package tests

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"testing"
	"time"

	"github.com/docker-mirror/docker-mirror/tests/fixture"
	"github.com/docker-mirror/docker-mirror/tests/servertest"
)

// watchdog bounds every wait of a gated test, so that a regression fails
// it instead of hanging it until the test binary's timeout. It is not a
// timing assertion: the waits it bounds take milliseconds.
const watchdog = 30 * time.Second

// stream is a GET whose body the test reads bit by bit.
type stream struct {
	t    *testing.T
	name string
	resp *http.Response
	got  []byte
}

// openStream sends a GET with ctx and returns once the headers are in
// (which the mirror sends with the first bytes of the body).
func openStream(t *testing.T, ctx context.Context, name, url string) *stream {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s: no answer while the upstream is held mid-body: %v", name, err)
	}
	t.Cleanup(func() { resp.Body.Close() })
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("%s: status %d", name, resp.StatusCode)
	}
	return &stream{t: t, name: name, resp: resp}
}

// readAtLeast reads until n body bytes in all have arrived; it fails the
// test if they do not arrive before the request's context ends.
func (s *stream) readAtLeast(n int) {
	s.t.Helper()
	buf := make([]byte, max(n-len(s.got), 0))
	k, err := io.ReadFull(s.resp.Body, buf)
	s.got = append(s.got, buf[:k]...)
	if err != nil {
		s.t.Fatalf("%s: got %d bytes, want at least %d while the upstream is held mid-body: %v", s.name, len(s.got), n, err)
	}
}

// readRest reads the body to its end.
func (s *stream) readRest() error {
	rest, err := io.ReadAll(s.resp.Body)
	s.got = append(s.got, rest...)
	return err
}

// wait waits for ch, failing the test if ctx ends first.
func wait(t *testing.T, ctx context.Context, ch <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-ctx.Done():
		t.Fatalf("%s: %v", what, ctx.Err())
	}
}

// Clients asking for a blob that is being downloaded read the download as
// it grows: while the upstream is held mid-body, both the client that
// started the download and one that joined it later have bytes in hand.
// Once it goes on, both get the whole blob, and the upstream sent it once.
func TestFollowersReadTheDownloadAsItGrows(t *testing.T) {
	up := fixture.StartUpstream(t)
	img := up.SeedImage(t, "library/follow", "1", 1, 512<<10)
	m := servertest.Start(t, up.URL())
	layer := img.Layers[0]
	url := m.URL() + "/v2/follow/blobs/" + layer
	const held = 128 << 10 // the upstream sends this much, then waits
	gate := up.GateBlob(layer, held)
	ctx, cancel := context.WithTimeout(t.Context(), watchdog)
	defer cancel()

	first := openStream(t, ctx, "first client", url)
	wait(t, ctx, gate.Reached(), "the upstream never reached the gate")
	follower := openStream(t, ctx, "follower", url)
	size, err := strconv.Atoi(follower.resp.Header.Get("Content-Length"))
	if err != nil || size <= held {
		t.Fatalf("follower: Content-Length %q, want more than the %d bytes before the gate", follower.resp.Header.Get("Content-Length"), held)
	}

	// The gate is closed: what arrives now comes from the download so far.
	// (Half of it: the rest may still sit in buffers along the way.)
	follower.readAtLeast(held / 2)
	first.readAtLeast(held / 2)
	for _, s := range []*stream{first, follower} {
		if len(s.got) >= size {
			t.Fatalf("%s has all %d bytes while the upstream has sent %d", s.name, len(s.got), held)
		}
	}

	gate.Open()
	for _, s := range []*stream{first, follower} {
		if err := s.readRest(); err != nil {
			t.Fatalf("%s: %v after %d bytes", s.name, err, len(s.got))
		}
		if len(s.got) != size || sha(s.got) != layer {
			t.Fatalf("%s: %d bytes hashing to %s, want %d bytes of %s", s.name, len(s.got), sha(s.got), size, layer)
		}
	}
	m.WaitIdle()
	if n := blobGets(up, layer); n != 1 {
		t.Errorf("%d upstream GETs of the blob, want 1", n)
	}
	if _, err := m.Store.Stat(t.Context(), "library/follow", digestOf(t, layer)); err != nil {
		t.Errorf("the blob was not stored: %v", err)
	}
}

// A client reading a download gets every byte but the last until the
// download is verified. The upstream answers with the blob's size (a 206
// for the whole blob) but the wrong bytes, chunked, and holds the end of
// its body: the mirror has every byte and waits for the end. Meanwhile a
// range short of the last byte is served in full, but the whole blob is
// not: when the end comes and the digest does not match, each client
// reading it sees its connection broken, never a complete 200.
func TestLastByteHeldBackUntilVerified(t *testing.T) {
	up := fixture.StartUpstream(t)
	img := up.SeedImage(t, "library/held", "1", 1, 256<<10)
	m := servertest.Start(t, up.URL())
	layer := img.Layers[0]
	url := m.URL() + "/v2/held/blobs/" + layer
	size := int(blobSizes(t, img)[layer])
	wrong := bytes.Repeat([]byte{'x'}, size)
	up.SetFault(fixture.Fault{Method: http.MethodGet, Kind: fixture.KindBlob, Status: http.StatusPartialContent, Body: wrong,
		Header: http.Header{"Content-Range": {fmt.Sprintf("bytes 0-%d/%d", size-1, size)}, "Transfer-Encoding": {"chunked"}}})
	gate := up.GateBlob(layer, int64(size))
	ctx, cancel := context.WithTimeout(t.Context(), watchdog)
	defer cancel()

	clients := []*stream{openStream(t, ctx, "client 1", url)}
	wait(t, ctx, gate.Reached(), "the upstream never reached the gate")
	for i := 2; i <= 4; i++ {
		clients = append(clients, openStream(t, ctx, fmt.Sprintf("client %d", i), url))
	}
	// Every byte is in once a range short of the last one can be served.
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Range", fmt.Sprintf("bytes=0-%d", size-2))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("range short of the last byte: %v", err)
	}
	short, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || resp.StatusCode != http.StatusPartialContent || !bytes.Equal(short, wrong[:size-1]) {
		t.Fatalf("range short of the last byte: %d, %d bytes, %v", resp.StatusCode, len(short), err)
	}

	gate.Open() // the end: the download is complete, and wrong
	for _, c := range clients {
		err := c.readRest()
		if err == nil || len(c.got) >= size {
			t.Errorf("%s: a blob that does not match its digest was served as a complete 200 (%d of %d bytes, read error %v)", c.name, len(c.got), size, err)
		}
	}
	m.WaitIdle()
	if _, err := m.Store.Stat(t.Context(), "library/held", digestOf(t, layer)); err == nil {
		t.Fatal("the wrong bytes were stored")
	}
	if n := blobGets(up, layer); n != 1 {
		t.Errorf("%d upstream GETs of the blob, want 1 (no fill wants it, so it is not fetched again)", n)
	}
	up.ClearFault()
	wantBlob(t, m, "held", layer)
}
