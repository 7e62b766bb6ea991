package proxy

import (
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"

	gname "github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	ggcrv1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/opencontainers/go-digest"
)

// Alias tags (latest and 1.27) that moved together upstream to an image
// the mirror does not hold, pulled at the very same moment: both
// revalidations' HEADs name the new image before either pull fetches it,
// and the image is fetched with one GET (a pull Docker Hub counts), not
// one per tag; both tags are recorded there.
func TestAliasTagsMovedTogetherPulledAtOnceFetchedOnce(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		reg := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
		tags := []string{"latest", "1.27"}
		tagAll := func(img ggcrv1.Image) {
			for _, tag := range tags {
				ref, err := gname.ParseReference("registry.test/library/app:"+tag, gname.Insecure)
				if err != nil {
					t.Fatal(err)
				}
				if err := remote.Write(ref, img, remote.WithTransport(inProcess{reg})); err != nil {
					t.Fatal(err)
				}
			}
		}
		var (
			armed atomic.Bool
			heads sync.WaitGroup // the two revalidations' HEADs
			gets  atomic.Int32   // manifest GETs
			hold  = make(chan struct{})
		)
		heads.Add(len(tags))
		front := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if armed.Load() && strings.Contains(r.URL.Path, "/manifests/") {
				switch r.Method {
				case http.MethodHead:
					// Both pulls HEAD before either GETs.
					heads.Done()
					heads.Wait()
				case http.MethodGet:
					if gets.Add(1) == 1 {
						<-hold // the first GET is held until the other pull has chosen
					}
				}
			}
			reg.ServeHTTP(w, r)
		})
		p := inProcessMirror(t, front, WithTagTTL(0))
		defer p.Close()
		pull := func(tag string, img ggcrv1.Image) {
			t.Helper()
			mt, _ := img.MediaType()
			body, _ := img.RawManifest()
			rec := httptest.NewRecorder()
			req := httptest.NewRequestWithContext(t.Context(), http.MethodGet, "/v2/library/app/manifests/"+tag, nil)
			req.Header.Set("Accept", string(mt))
			p.Handler().ServeHTTP(rec, req)
			if rec.Code != http.StatusOK || rec.Body.String() != string(body) {
				t.Errorf("GET %s: %d %.200s; want 200 and the manifest it moved to", tag, rec.Code, rec.Body)
			}
		}
		old := pushImage(t, reg, "library/app:latest", 1)
		tagAll(old)
		for _, tag := range tags {
			pull(tag, old)
		}
		if err := p.WaitIdle(t.Context()); err != nil {
			t.Fatal(err)
		}
		next := pushImage(t, reg, "library/app:latest", 1)
		tagAll(next)
		armed.Store(true)
		var pulls sync.WaitGroup
		for _, tag := range tags {
			pulls.Go(func() { pull(tag, next) })
		}
		// Every goroutine waits: the first GET is held, and the other
		// pull has sent its own GET, or waits for the first.
		synctest.Wait()
		n := gets.Load()
		close(hold)
		pulls.Wait()
		if err := p.WaitIdle(t.Context()); err != nil {
			t.Fatal(err)
		}
		if n != 1 {
			t.Errorf("the image both tags moved to was fetched with %d manifest GETs, want 1", n)
		}
		want, _ := next.Digest()
		for _, tag := range tags {
			if rec, ok, err := p.index.Tag(DefaultHost, "library/app", tag); err != nil || !ok || rec.Digest != digest.Digest(want.String()) {
				t.Errorf("tag %s recorded as %+v %v %v, want %s", tag, rec, ok, err, want)
			}
		}
	})
}
