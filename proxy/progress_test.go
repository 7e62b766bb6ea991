package proxy

import (
	"bytes"
	"io"
	"log"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"testing"
	"testing/synctest"

	"github.com/google/go-containerregistry/pkg/registry"

	"github.com/docker-mirror/docker-mirror/proxy/upstream"
)

// heldBodyTransport answers a GET of one blob with the first half of its
// body, and the rest once release is closed: a large layer on its way.
type heldBodyTransport struct {
	base    http.RoundTripper
	blob    string
	release chan struct{}
}

func (h heldBodyTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	resp, err := h.base.RoundTrip(r)
	if err != nil || r.Method != http.MethodGet || !strings.HasSuffix(r.URL.Path, "/blobs/"+h.blob) {
		return resp, err
	}
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	half := len(body) / 2
	resp.Body = io.NopCloser(io.MultiReader(bytes.NewReader(body[:half]), heldReader{h.release, bytes.NewReader(body[half:])}))
	return resp, nil
}

type heldReader struct {
	release chan struct{}
	r       io.Reader
}

func (h heldReader) Read(p []byte) (int, error) {
	<-h.release
	return h.r.Read(p)
}

// A copy's progress counts a layer's bytes as they come, not only once
// the whole layer is in: mirror's bar (and a prefetch job's bytes_done)
// moves while a large layer downloads. Before, it showed 0 bytes done for
// as long as the layer took, minutes for a large one.
func TestCopyProgressCountsBytesOfALayerOnItsWay(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		reg := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
		img := pushImage(t, reg, "library/app:1", 1)
		layers, err := img.Layers()
		if err != nil {
			t.Fatal(err)
		}
		layer, err := layers[0].Digest()
		if err != nil {
			t.Fatal(err)
		}
		size, err := layers[0].Size()
		if err != nil {
			t.Fatal(err)
		}
		release := make(chan struct{})
		up, err := upstream.New(DefaultHost, "http://registry.test", upstream.WithTransport(heldBodyTransport{inProcess{reg}, layer.String(), release}))
		if err != nil {
			t.Fatal(err)
		}
		store, index := memStore(t)
		p, err := New(store, index, []*upstream.Client{up}, WithSpoolDir(t.TempDir()), WithReferrers(false), WithLogger(slog.New(slog.DiscardHandler)))
		if err != nil {
			t.Fatal(err)
		}
		defer p.Close()
		var mu sync.Mutex
		var last Progress
		done := make(chan error, 1)
		go func() {
			_, err := p.Copy(t.Context(), "app:1", nil, func(pr Progress) {
				mu.Lock()
				last = pr
				mu.Unlock()
			})
			done <- err
		}()
		synctest.Wait() // the layer's first half is in; the rest is held
		mu.Lock()
		got := last
		mu.Unlock()
		if got.BytesDone < size/2 || got.BytesDone >= got.BytesTotal {
			t.Errorf("progress with half of the %d-byte layer in: %d of %d bytes done, want at least %d", size, got.BytesDone, got.BytesTotal, size/2)
		}
		close(release)
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		if last.BytesDone != last.BytesTotal {
			t.Errorf("progress at the end: %d of %d bytes done", last.BytesDone, last.BytesTotal)
		}
	})
}
