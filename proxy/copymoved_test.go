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

	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/opencontainers/go-digest"
)

// A copy (prefetch, sync) of an alias tag (1.27) and a pull of another
// (latest), the two moved together upstream to an image the mirror does
// not hold, at the very same moment: the image is fetched with one GET,
// whichever of the two fetches it, and both tags are recorded there, the
// copy's before the copy goes on. Before, the copy fetched its tag in a
// flight of its own.
func TestCopyOfAnAliasTagMovedWhilePulledFetchedOnce(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		reg := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
		var (
			armed atomic.Bool
			heads sync.WaitGroup // the pull's revalidation and the copy's
			gets  atomic.Int32   // manifest GETs
			hold  = make(chan struct{})
		)
		heads.Add(2)
		front := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if armed.Load() && strings.Contains(r.URL.Path, "/manifests/") {
				switch r.Method {
				case http.MethodHead:
					heads.Done()
					heads.Wait() // both HEAD before either GETs
				case http.MethodGet:
					if gets.Add(1) == 1 {
						<-hold // until the other has sent its own GET, or waits for this one
					}
				}
			}
			reg.ServeHTTP(w, r)
		})
		p := inProcessMirror(t, front, WithTagTTL(0))
		defer p.Close()
		pull := func(tag string) *httptest.ResponseRecorder {
			rec := httptest.NewRecorder()
			p.Handler().ServeHTTP(rec, httptest.NewRequestWithContext(t.Context(), http.MethodGet, "/v2/library/app/manifests/"+tag, nil))
			return rec
		}
		tagAs(t, reg, pushImage(t, reg, "library/app:latest", 1), aliasTags...)
		for _, tag := range aliasTags {
			if rec := pull(tag); rec.Code != http.StatusOK {
				t.Fatalf("first GET %s: %d %.200s", tag, rec.Code, rec.Body)
			}
		}
		if err := p.WaitIdle(t.Context()); err != nil {
			t.Fatal(err)
		}
		next := pushImage(t, reg, "library/app:latest", 1)
		tagAs(t, reg, next, aliasTags...)
		armed.Store(true)
		var wg sync.WaitGroup
		var rec *httptest.ResponseRecorder
		var copyErr error
		wg.Go(func() { rec = pull("latest") })
		wg.Go(func() { _, copyErr = p.Copy(t.Context(), "app:1.27", nil, nil) })
		synctest.Wait()
		n := gets.Load()
		close(hold)
		wg.Wait()
		if err := p.WaitIdle(t.Context()); err != nil {
			t.Fatal(err)
		}
		if rec.Code != http.StatusOK || copyErr != nil {
			t.Fatalf("pull: %d %.200s; copy: %v", rec.Code, rec.Body, copyErr)
		}
		if n != 1 {
			t.Errorf("the image both tags moved to was fetched with %d manifest GETs, want 1", n)
		}
		want, _ := next.Digest()
		for _, tag := range aliasTags {
			if r, ok, err := p.index.Tag(DefaultHost, "library/app", tag); err != nil || !ok || r.Digest != digest.Digest(want.String()) {
				t.Errorf("tag %s recorded as %+v %v %v, want %s", tag, r, ok, err, want)
			}
		}
	})
}
