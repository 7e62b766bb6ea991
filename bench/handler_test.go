package bench

import (
	"io"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/docker-mirror/docker-mirror/tests/fixture"
	"github.com/docker-mirror/docker-mirror/tests/servertest"
)

// BenchmarkHandlerHit measures the mirror's own work for a cache hit: a
// manifest GET by tag and a 1 KiB blob GET served by the proxy's handler
// in-process, into a writer that discards the body, with no network and
// no client. It is the part of a hit's latency the mirror's code decides
// (routing, checks, the index and the store), measured apart from
// net/http and the kernel's loopback, which BenchmarkScaleLatency
// includes.
func BenchmarkHandlerHit(b *testing.B) {
	up := fixture.StartUpstream(b)
	img := up.SeedImage(b, "library/hit", "1", 1, 1<<10)
	m := servertest.Start(b, up.URL())
	paths := []struct{ name, path string }{
		{"manifest-by-tag", "/v2/hit/manifests/1"},
		{"blob", "/v2/hit/blobs/" + img.Layers[0]},
	}
	for _, p := range paths {
		resp, err := http.Get(m.URL() + p.path)
		if err != nil {
			b.Fatal(err)
		}
		_, err = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if err != nil || resp.StatusCode != http.StatusOK {
			b.Fatalf("GET %s: %d %v", p.path, resp.StatusCode, err)
		}
	}
	m.WaitIdle()
	h := m.Proxy.Handler()
	for _, p := range paths {
		b.Run(p.name, func(b *testing.B) {
			req := httptest.NewRequest(http.MethodGet, p.path, nil)
			b.ReportAllocs()
			for b.Loop() {
				w := &discardResponse{header: http.Header{}}
				h.ServeHTTP(w, req)
				if w.status != http.StatusOK || w.header.Get("X-Cache") != "hit" {
					b.Fatalf("GET %s: %d, X-Cache %q", p.path, w.status, w.header.Get("X-Cache"))
				}
			}
		})
	}
}

// discardResponse is a ResponseWriter that keeps the status and headers and drops
// the body.
type discardResponse struct {
	header http.Header
	status int
}

func (d *discardResponse) Header() http.Header { return d.header }

func (d *discardResponse) Write(p []byte) (int, error) {
	if d.status == 0 {
		d.status = http.StatusOK
	}
	return len(p), nil
}

func (d *discardResponse) WriteHeader(status int) {
	if d.status == 0 {
		d.status = status
	}
}
