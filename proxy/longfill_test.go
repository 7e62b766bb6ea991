package proxy

import (
	"io"
	"log"
	"net/http"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/opencontainers/go-digest"

	"github.com/docker-mirror/docker-mirror/storage"
)

// trickling answers as its transport does, but sends each blob's body in
// 200 pieces, one every 25 seconds (on a synctest bubble's clock): a
// large layer over a slow link, its bytes coming all along.
type trickling struct{ rt http.RoundTripper }

func (t trickling) RoundTrip(r *http.Request) (*http.Response, error) {
	resp, err := t.rt.RoundTrip(r)
	if err != nil || r.Method != http.MethodGet || !strings.Contains(r.URL.Path, "/blobs/") || resp.ContentLength <= 0 {
		return resp, err
	}
	resp.Body = &trickle{rc: resp.Body, piece: max(1, resp.ContentLength/200)}
	return resp, nil
}

type trickle struct {
	rc    io.ReadCloser
	piece int64
}

func (b *trickle) Read(p []byte) (int, error) {
	time.Sleep(25 * time.Second)
	return b.rc.Read(p[:min(int64(len(p)), b.piece)])
}

func (b *trickle) Close() error { return b.rc.Close() }

// A download whose bytes keep coming is not cut for taking longer than
// the fill timeout: a layer taking 83 minutes to arrive (a 5 GB layer at
// 10 Mbit/s) against the default hour is stored, and its prefetch done.
// Before, the hour cut it, and every try after started the same doomed
// hour from its first byte.
func TestDownloadLongerThanTheFillTimeout(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		reg := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
		img := pushImage(t, reg, "library/a:1", 1)
		p := transportMirror(t, trickling{inProcess{reg}}, WithFillTimeout(time.Hour))
		defer p.Close()
		job, err := p.StartPrefetch(t.Context(), PrefetchRequest{Images: []string{"a:1"}}, "prefetch")
		if err != nil {
			t.Fatal(err)
		}
		time.Sleep(3 * time.Hour)
		synctest.Wait()
		got, err := p.Job(job.ID)
		if err != nil {
			t.Fatal(err)
		}
		if got.State != storage.JobDone {
			t.Fatalf("prefetch %s, want done; images: %+v", got.State, got.Images)
		}
		layers, err := img.Layers()
		if err != nil {
			t.Fatal(err)
		}
		d, err := layers[0].Digest()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := p.store.Stat(t.Context(), StoreRepo(DefaultHost, "library/a"), digest.Digest(d.String())); err != nil {
			t.Fatalf("layer not stored: %v", err)
		}
	})
}
