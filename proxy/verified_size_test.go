package proxy

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
)

// A blob the upstream sends without a length (chunked) has one once it is
// verified: a client that asks for a range of it between its verification
// and its record (served from the spool file meanwhile) gets the 206 it
// asked for, and its length, not the whole blob.
func TestVerifiedChunkedBlobServesRanges(t *testing.T) {
	blob := []byte("a layer sent without a length")
	d := digest.FromBytes(blob)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasSuffix(r.URL.Path, "/blobs/"+d.String()) {
			http.NewResponseController(w).Flush() // chunked: no Content-Length
			_, _ = w.Write(blob)
		}
	}))
	defer srv.Close()
	p, _, _ := testMirror(t, nil, srv.URL)
	front := httptest.NewServer(p.Handler())
	defer front.Close()
	// Another download streams: the verified blob waits to be stored.
	waiting := make(chan struct{})
	p.blobs.quiet.wait = time.Hour
	p.blobs.quiet.waiting = sync.OnceFunc(func() { close(waiting) })
	end := p.blobs.quiet.stream()
	defer end()

	get := func(rng string) *http.Response {
		t.Helper()
		req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, front.URL+"/v2/library/x/blobs/"+d.String(), nil)
		if err != nil {
			t.Fatal(err)
		}
		if rng != "" {
			req.Header.Set("Range", rng)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { resp.Body.Close() })
		return resp
	}
	if body, err := io.ReadAll(get("").Body); err != nil || !bytes.Equal(body, blob) {
		t.Fatalf("GET: %q, %v", body, err)
	}
	recv(t, waiting, "the verified download to wait for the other")
	if p.blobs.running(d) == nil {
		t.Fatal("the download ended: the test needs it verified and not yet recorded")
	}

	resp := get("bytes=2-6")
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusPartialContent || !bytes.Equal(body, blob[2:7]) {
		t.Fatalf("range of a verified blob: %d, %q, %v; want 206 %q", resp.StatusCode, body, err, blob[2:7])
	}
	if got, want := resp.Header.Get("Content-Range"), fmt.Sprintf("bytes 2-6/%d", len(blob)); got != want {
		t.Errorf("Content-Range %q, want %q", got, want)
	}
	end()
	if err := p.WaitIdle(t.Context()); err != nil {
		t.Fatal(err)
	}
}
