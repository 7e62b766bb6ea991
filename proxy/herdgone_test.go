package proxy

import (
	"context"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"testing/synctest"

	"github.com/google/go-containerregistry/pkg/registry"
)

// heldBlobs answers as its transport does, but holds every blob GET until
// open is closed: a download under way whose first byte has not come.
type heldBlobs struct {
	rt   http.RoundTripper
	open chan struct{}
}

func (h heldBlobs) RoundTrip(r *http.Request) (*http.Response, error) {
	if r.Method == http.MethodGet && strings.Contains(r.URL.Path, "/blobs/") {
		<-h.open
	}
	return h.rt.RoundTrip(r)
}

// Of a herd sharing one download, the miss is the first client answered
// from it, not the first to join it: a client that went away before its
// answer began (counted nowhere, as any client gone) took the miss with
// it, and the next client, the one the upstream's bytes were sent to, was
// told X-Cache: hit and counted a hit; the status page showed a fetch
// from the upstream without a miss.
func TestHerdOfOneBlobWhoseFirstClientLeftIsOneMiss(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		reg := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
		dgst := firstLayer(t, pushSized(t, reg, "library/a:1", 4<<10, 1))
		open := make(chan struct{})
		p := transportMirror(t, heldBlobs{inProcess{reg}, open}, nil)
		defer p.Close()
		h := p.Handler()
		get := func(ctx context.Context) *httptest.ResponseRecorder {
			w := httptest.NewRecorder()
			h.ServeHTTP(w, httptest.NewRequestWithContext(ctx, http.MethodGet, "/v2/library/a/blobs/"+dgst.String(), nil))
			return w
		}
		leaving, leave := context.WithCancel(t.Context())
		left := make(chan *httptest.ResponseRecorder, 1)
		go func() { left <- get(leaving) }()
		synctest.Wait() // the first client waits for the download's first bytes
		stayed := make(chan *httptest.ResponseRecorder, 1)
		go func() { stayed <- get(t.Context()) }()
		synctest.Wait() // the second has joined it
		leave()
		if w := <-left; w.Body.Len() != 0 {
			t.Fatalf("client gone before its answer began: answered %d bytes", w.Body.Len())
		}
		close(open)
		w := <-stayed
		if w.Code != http.StatusOK {
			t.Fatalf("blob GET: %d %s", w.Code, w.Body)
		}
		if c := w.Header().Get(cacheHeader); c != "miss" {
			t.Errorf("X-Cache of the only client answered from the download: %q, want miss", c)
		}
		if got := p.Traffic().SinceStart; got.Misses != 1 || got.Hits != 0 {
			t.Errorf("one download answered once: %d misses, %d hits; want 1 miss", got.Misses, got.Hits)
		}
	})
}
