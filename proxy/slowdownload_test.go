package proxy

import (
	"io"
	"log"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	gname "github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/docker-mirror/docker-mirror/storage"
)

// dribbling answers as its transport does, but, until mended, sends each
// blob's body a byte every 25 seconds (on a synctest bubble's clock): an
// upstream, or a link, broken in a way that keeps the connection alive.
type dribbling struct {
	rt     http.RoundTripper
	mended *atomic.Bool
}

func (d dribbling) RoundTrip(r *http.Request) (*http.Response, error) {
	resp, err := d.rt.RoundTrip(r)
	if err != nil || d.mended.Load() || r.Method != http.MethodGet || !strings.Contains(r.URL.Path, "/blobs/") {
		return resp, err
	}
	// Read until the request ends, as a connection is.
	resp.Body = &trickle{rc: io.NopCloser(ctxReader{r.Context(), resp.Body}), piece: 1}
	return resp, nil
}

// A download that dribbles, a byte every 25 seconds (a 100 KiB layer in
// a month), fails once its rate says it would take longer than a day,
// saying so (its config, of 323 bytes, is let go on: two hours), and the
// next prefetch, the upstream mended, fetches the blob afresh. Before, nothing but max_blob_size bounded it: the prefetch
// ran for ever, and every client asking for the blob joined it and
// waited for ever, until a restart.
func TestDribblingDownloadFails(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		reg := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
		img, err := random.Image(100<<10, 1)
		if err != nil {
			t.Fatal(err)
		}
		ref, err := gname.ParseReference("registry.test/library/a:1", gname.Insecure)
		if err != nil {
			t.Fatal(err)
		}
		if err := remote.Write(ref, img, remote.WithTransport(inProcess{reg})); err != nil {
			t.Fatal(err)
		}
		var mended atomic.Bool
		p := transportMirror(t, dribbling{inProcess{reg}, &mended}, nil)
		defer p.Close()
		got := prefetchAfter(t, p, "a:1", 3*time.Hour)
		if got.State != storage.JobFailed || !strings.Contains(got.Images[0].Error, "too slow") {
			t.Fatalf("prefetch of a layer dribbling a byte every 25 s, 3 hours on: %s, want failed for being too slow; images: %+v", got.State, got.Images)
		}
		mended.Store(true)
		if got := prefetchAfter(t, p, "a:1", time.Minute); got.State != storage.JobDone {
			t.Fatalf("prefetch once the upstream is mended: %s, want done; images: %+v", got.State, got.Images)
		}
	})
}
