package proxy

import (
	"fmt"
	"io"
	"log"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"testing"
	"testing/synctest"

	"github.com/google/go-containerregistry/pkg/registry"

	"github.com/docker-mirror/docker-mirror/proxy/upstream"
	"github.com/docker-mirror/docker-mirror/storage"
)

// The store's refusal that the status and docker_mirror_store_refuses_writes
// show is one still believed: a repository whose refusal was the latest
// storing a blob (a layer whose upload was under way when another was
// refused, a destination's per-project quota) leaves the refusals of the
// other repositories shown. Before, the status said nothing was refused
// while another repository's pulls went on being served without being
// stored.
func TestWritesRefusedShownWhileAnyRepositoryIsRefused(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		reg := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
		layers := map[string][]string{}
		for name, n := range map[string]int{"y": 1, "x": 2} {
			img := pushImage(t, reg, "library/"+name+":1", n)
			ls, err := img.Layers()
			if err != nil {
				t.Fatal(err)
			}
			for _, l := range ls {
				d, err := l.Digest()
				if err != nil {
					t.Fatal(err)
				}
				layers[name] = append(layers[name], d.String())
			}
		}
		mem, index := memStore(t)
		store := &gatedStore{Store: mem}
		up, err := upstream.New(DefaultHost, "http://registry.test", upstream.WithTransport(inProcess{reg}))
		if err != nil {
			t.Fatal(err)
		}
		p, err := New(store, index, []*upstream.Client{up}, WithSpoolDir(t.TempDir()), WithReferrers(false), WithLogger(slog.New(slog.DiscardHandler)))
		if err != nil {
			t.Fatal(err)
		}
		defer p.Close()
		refused := fmt.Errorf("destination: quota exceeded: %w", storage.ErrWriteRefused)
		pull := func(repo, dgst string) {
			go func() {
				rec := httptest.NewRecorder()
				p.Handler().ServeHTTP(rec, httptest.NewRequestWithContext(t.Context(), http.MethodGet, "/v2/library/"+repo+"/blobs/"+dgst, nil))
				if rec.Code != http.StatusOK {
					t.Errorf("GET %s blob: %d %s", repo, rec.Code, rec.Body)
				}
			}()
		}

		// y's blob is refused.
		gy := store.gate(layers["y"][0])
		pull("y", layers["y"][0])
		<-gy.reached
		gy.release <- refused
		synctest.Wait()
		y := target{up: up, repo: "library/y", name: "library/y"}
		if p.writesRefused(y) == nil || p.WritesRefused() == nil {
			t.Fatalf("y's refusal not noted: %v, %v", p.writesRefused(y), p.WritesRefused())
		}
		// x's first layer is being stored when its second is refused; then
		// the first is stored.
		g1, g2 := store.gate(layers["x"][0]), store.gate(layers["x"][1])
		pull("x", layers["x"][0])
		<-g1.reached
		pull("x", layers["x"][1])
		<-g2.reached
		g2.release <- refused
		synctest.Wait()
		g1.release <- nil
		synctest.Wait()

		if p.writesRefused(y) == nil {
			t.Fatal("y's refusal is no longer believed")
		}
		if err := p.WritesRefused(); err == nil {
			t.Error("WritesRefused() = nil, while y's refusal is believed")
		}
	})
}
