package proxy

import (
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"testing/synctest"

	"github.com/opencontainers/go-digest"

	gname "github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	ggcrv1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/docker-mirror/docker-mirror/storage"
)

// platformIndex pushes to reg an index of one random image per platform
// ("linux/amd64") as repo:tag, and returns it and its images.
func platformIndex(t *testing.T, reg http.Handler, repo, tag string, platforms ...string) (ggcrv1.ImageIndex, map[string]ggcrv1.Image) {
	t.Helper()
	idx := ggcrv1.ImageIndex(empty.Index)
	imgs := map[string]ggcrv1.Image{}
	for _, pl := range platforms {
		img, err := random.Image(2048, 1)
		if err != nil {
			t.Fatal(err)
		}
		os, arch, _ := strings.Cut(pl, "/")
		idx = mutate.AppendManifests(idx, mutate.IndexAddendum{Add: img, Descriptor: ggcrv1.Descriptor{
			Platform: &ggcrv1.Platform{OS: os, Architecture: arch},
		}})
		imgs[pl] = img
	}
	push(t, reg, repo+":"+tag, idx)
	return idx, imgs
}

// pushImage pushes a random image of n layers (512 bytes each) to the
// in-process registry reg as registry.test/ref ("library/app:1") and
// returns it.
func pushImage(t *testing.T, reg http.Handler, ref string, n int) ggcrv1.Image {
	t.Helper()
	return pushSized(t, reg, ref, 512, n)
}

// pushSized pushes to reg, as ref, a random image of n layers of size
// bytes each.
func pushSized(t *testing.T, reg http.Handler, ref string, size int64, n int) ggcrv1.Image {
	t.Helper()
	img, err := random.Image(size, int64(n))
	if err != nil {
		t.Fatal(err)
	}
	push(t, reg, ref, img)
	return img
}

// push pushes img, an image or an index, to the in-process registry reg
// as registry.test/ref ("library/app:1").
func push(t *testing.T, reg http.Handler, ref string, img remote.Taggable) {
	t.Helper()
	r, err := gname.ParseReference("registry.test/"+ref, gname.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Push(r, img, remote.WithTransport(inProcess{reg})); err != nil {
		t.Fatal(err)
	}
}

// One platform of an index that cannot be mirrored (its manifest gone
// upstream) does not stop the background fill of the others: they are
// stored, and pull with the upstream down. Before, the first child's
// failure cancelled every other child's downloads, so the other
// platforms were never stored, pull after pull.
func TestFillOfIndexStoresOtherChildrenWhenOneFails(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		reg := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
		idx, imgs := platformIndex(t, reg, "library/app", "1", "linux/amd64", "linux/arm64")
		broken, err := imgs["linux/arm64"].Digest()
		if err != nil {
			t.Fatal(err)
		}
		layers, err := imgs["linux/amd64"].Layers()
		if err != nil {
			t.Fatal(err)
		}
		layer, err := layers[0].Digest()
		if err != nil {
			t.Fatal(err)
		}
		release := make(chan struct{})
		var down atomic.Bool
		front := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			switch {
			case down.Load():
				http.Error(w, "down", http.StatusServiceUnavailable)
				return
			case strings.HasSuffix(r.URL.Path, "/manifests/"+broken.String()):
				w.Header().Set("Content-Type", "application/json")
				w.WriteHeader(http.StatusNotFound)
				_, _ = io.WriteString(w, `{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}`)
				return
			case r.Method == http.MethodGet && strings.HasSuffix(r.URL.Path, "/blobs/"+layer.String()):
				// Held until the other platform has failed.
				select {
				case <-release:
				case <-r.Context().Done():
					return
				}
			}
			reg.ServeHTTP(w, r)
		})
		p := inProcessMirror(t, front)
		defer p.Close()
		get := func(path string) *httptest.ResponseRecorder {
			rec := httptest.NewRecorder()
			p.Handler().ServeHTTP(rec, httptest.NewRequestWithContext(t.Context(), http.MethodGet, path, nil))
			return rec
		}
		if rec := get("/v2/library/app/manifests/1"); rec.Code != http.StatusOK {
			t.Fatalf("GET the index: %d %s", rec.Code, rec.Body)
		}
		synctest.Wait() // the arm64 platform has failed; amd64's layer is held
		close(release)
		if err := p.WaitIdle(t.Context()); err != nil {
			t.Fatal(err)
		}
		// Partial: the next pull resumes it.
		d, err := idx.Digest()
		if err != nil {
			t.Fatal(err)
		}
		if rec, ok, err := p.index.Fill(DefaultHost, "library/app", digest.Digest(d.String())); err != nil || !ok || rec.State != storage.FillPartial {
			t.Errorf("fill record of the index: %+v %v %v, want partial", rec, ok, err)
		}
		down.Store(true)
		amd64, err := imgs["linux/amd64"].Digest()
		if err != nil {
			t.Fatal(err)
		}
		if rec := get("/v2/library/app/manifests/" + amd64.String()); rec.Code != http.StatusOK {
			t.Errorf("GET the linux/amd64 manifest with the upstream down: %d %s", rec.Code, rec.Body)
		}
		if rec := get("/v2/library/app/blobs/" + layer.String()); rec.Code != http.StatusOK {
			t.Errorf("GET the linux/amd64 layer with the upstream down: %d %s", rec.Code, rec.Body)
		}
	})
}

// A layer of a platform the background fill could not fetch (refused
// once) does not cancel the download of that platform's other layers:
// the fill the next pull resumes fetches only the refused one, and the
// upstream sends each of the others once. Before, they were cut off and
// downloaded again from the start.
func TestFillOfImageKeepsOtherLayersWhenOneFails(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		reg := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
		img, err := random.Image(2048, 2)
		if err != nil {
			t.Fatal(err)
		}
		idx := mutate.AppendManifests(empty.Index, mutate.IndexAddendum{Add: img, Descriptor: ggcrv1.Descriptor{
			Platform: &ggcrv1.Platform{OS: "linux", Architecture: "arm64"},
		}})
		push(t, reg, "library/app:1", idx)
		layers, err := img.Layers()
		if err != nil {
			t.Fatal(err)
		}
		refused, err := layers[0].Digest()
		if err != nil {
			t.Fatal(err)
		}
		held, err := layers[1].Digest()
		if err != nil {
			t.Fatal(err)
		}
		release := make(chan struct{})
		var refusedOnce atomic.Bool
		var heldGETs atomic.Int32
		front := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			switch {
			case r.Method != http.MethodGet:
			case strings.HasSuffix(r.URL.Path, "/blobs/"+refused.String()) && refusedOnce.CompareAndSwap(false, true):
				w.Header().Set("Content-Type", "application/json")
				w.WriteHeader(http.StatusForbidden)
				_, _ = io.WriteString(w, `{"errors":[{"code":"DENIED","message":"not now"}]}`)
				return
			case strings.HasSuffix(r.URL.Path, "/blobs/"+held.String()):
				heldGETs.Add(1)
				// Held until the other layer has failed.
				select {
				case <-release:
				case <-r.Context().Done():
					return
				}
			}
			reg.ServeHTTP(w, r)
		})
		p := inProcessMirror(t, front)
		defer p.Close()
		pull := func() {
			rec := httptest.NewRecorder()
			p.Handler().ServeHTTP(rec, httptest.NewRequestWithContext(t.Context(), http.MethodGet, "/v2/library/app/manifests/1", nil))
			if rec.Code != http.StatusOK {
				t.Fatalf("GET the index: %d %s", rec.Code, rec.Body)
			}
		}
		pull()
		synctest.Wait() // the first layer was refused; the second is held
		close(release)
		if err := p.WaitIdle(t.Context()); err != nil {
			t.Fatal(err)
		}
		pull() // resumes the fill
		if err := p.WaitIdle(t.Context()); err != nil {
			t.Fatal(err)
		}
		d, err := idx.Digest()
		if err != nil {
			t.Fatal(err)
		}
		if rec, ok, err := p.index.Fill(DefaultHost, "library/app", digest.Digest(d.String())); err != nil || !ok || rec.State != storage.FillComplete {
			t.Fatalf("fill record of the index after the second pull: %+v %v %v, want complete", rec, ok, err)
		}
		if n := heldGETs.Load(); n != 1 {
			t.Errorf("the upstream was asked for the layer not refused %d times, want once", n)
		}
	})
}
