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
	ggcrv1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/opencontainers/go-digest"
)

// aliasTags are the alias tags movedAliasesPulledAtOnce moves together.
var aliasTags = []string{"latest", "1.27"}

// tagAs pushes img to reg as library/app under each of tags.
func tagAs(t *testing.T, reg http.Handler, img ggcrv1.Image, tags ...string) {
	t.Helper()
	for _, tag := range tags {
		push(t, reg, "library/app:"+tag, img)
	}
}

// movedAliases is what movedAliasesPulledAtOnce leaves: the mirror, the
// image the tags moved to, the manifest GETs sent before the first was
// answered, and each tag's answer.
type movedAliases struct {
	p       *Proxy
	next    ggcrv1.Image
	gets    int32
	answers map[string]*httptest.ResponseRecorder
}

// movedAliasesPulledAtOnce pulls aliasTags through a mirror (tag TTL 0),
// moves them together upstream to an image the mirror does not hold and
// pulls them again at the very same moment: both revalidations' HEADs
// name the new image before either pull GETs it, and the first manifest
// GET is held until the other pull has chosen (sent its own GET, or waits
// for the first), then answered by first (nil: the registry), given the
// registry. Run in a synctest bubble; the mirror is idle when it returns.
func movedAliasesPulledAtOnce(t *testing.T, first func(reg http.Handler, w http.ResponseWriter, r *http.Request)) movedAliases {
	t.Helper()
	reg := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	var (
		armed atomic.Bool
		heads sync.WaitGroup // the revalidations' HEADs
		gets  atomic.Int32   // manifest GETs
		hold  = make(chan struct{})
	)
	heads.Add(len(aliasTags))
	front := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if armed.Load() && strings.Contains(r.URL.Path, "/manifests/") {
			switch r.Method {
			case http.MethodHead:
				// Every pull HEADs before any GETs.
				heads.Done()
				heads.Wait()
			case http.MethodGet:
				if gets.Add(1) == 1 {
					<-hold // held until the other pull has chosen
					if first != nil {
						first(reg, w, r)
						return
					}
				}
			}
		}
		reg.ServeHTTP(w, r)
	})
	p := inProcessMirror(t, front, WithTagTTL(0))
	t.Cleanup(func() { p.Close() })
	pull := func(tag string, img ggcrv1.Image) *httptest.ResponseRecorder {
		mt, _ := img.MediaType()
		rec := httptest.NewRecorder()
		req := httptest.NewRequestWithContext(t.Context(), http.MethodGet, "/v2/library/app/manifests/"+tag, nil)
		req.Header.Set("Accept", string(mt))
		p.Handler().ServeHTTP(rec, req)
		return rec
	}
	old := pushImage(t, reg, "library/app:latest", 1)
	tagAs(t, reg, old, aliasTags...)
	for _, tag := range aliasTags {
		if rec := pull(tag, old); rec.Code != http.StatusOK {
			t.Fatalf("first GET %s: %d %.200s", tag, rec.Code, rec.Body)
		}
	}
	if err := p.WaitIdle(t.Context()); err != nil {
		t.Fatal(err)
	}
	next := pushImage(t, reg, "library/app:latest", 1)
	tagAs(t, reg, next, aliasTags...)
	armed.Store(true)
	answers := make([]*httptest.ResponseRecorder, len(aliasTags))
	var pulls sync.WaitGroup
	for i, tag := range aliasTags {
		pulls.Go(func() { answers[i] = pull(tag, next) })
	}
	// Every goroutine waits: the first GET is held, and the other pull
	// has sent its own GET, or waits for the first.
	synctest.Wait()
	n := gets.Load()
	close(hold)
	pulls.Wait()
	if err := p.WaitIdle(t.Context()); err != nil {
		t.Fatal(err)
	}
	out := movedAliases{p: p, next: next, gets: n, answers: map[string]*httptest.ResponseRecorder{}}
	for i, tag := range aliasTags {
		out.answers[tag] = answers[i]
	}
	return out
}

// Alias tags (latest and 1.27) that moved together upstream to an image
// the mirror does not hold, pulled at the very same moment: both
// revalidations' HEADs name the new image before either pull fetches it,
// and the image is fetched with one GET (a pull Docker Hub counts), not
// one per tag; both tags are recorded there.
func TestAliasTagsMovedTogetherPulledAtOnceFetchedOnce(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		a := movedAliasesPulledAtOnce(t, nil)
		body, _ := a.next.RawManifest()
		for tag, rec := range a.answers {
			if rec.Code != http.StatusOK || rec.Body.String() != string(body) {
				t.Errorf("GET %s: %d %.200s; want 200 and the manifest it moved to", tag, rec.Code, rec.Body)
			}
		}
		if a.gets != 1 {
			t.Errorf("the image both tags moved to was fetched with %d manifest GETs, want 1", a.gets)
		}
		want, _ := a.next.Digest()
		for _, tag := range aliasTags {
			if rec, ok, err := a.p.index.Tag(DefaultHost, "library/app", tag); err != nil || !ok || rec.Digest != digest.Digest(want.String()) {
				t.Errorf("tag %s recorded as %+v %v %v, want %s", tag, rec, ok, err, want)
			}
		}
	})
}

// Alias tags moved together, pulled at once, the tag whose GET fetches
// for both deleted upstream between its HEAD and its GET: that tag is
// answered 404, as the upstream answers it, but not its alias, which is
// still there: it is fetched on its own and answered. Before, the alias's
// client was answered the other tag's 404.
func TestAliasOfATagDeletedWhileFetchedIsAnswered(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var deleted string
		a := movedAliasesPulledAtOnce(t, func(reg http.Handler, w http.ResponseWriter, r *http.Request) {
			deleted = r.URL.Path[strings.LastIndex(r.URL.Path, "/")+1:]
			del := httptest.NewRequest(http.MethodDelete, r.URL.Path, nil)
			rec := httptest.NewRecorder()
			if reg.ServeHTTP(rec, del); rec.Code != http.StatusAccepted {
				t.Errorf("deleting %s upstream: %d %s", deleted, rec.Code, rec.Body)
			}
			reg.ServeHTTP(w, r)
		})
		body, _ := a.next.RawManifest()
		for tag, rec := range a.answers {
			switch {
			case tag == deleted && rec.Code != http.StatusNotFound:
				t.Errorf("GET %s, deleted upstream: %d %.200s; want 404", tag, rec.Code, rec.Body)
			case tag != deleted && (rec.Code != http.StatusOK || rec.Body.String() != string(body)):
				t.Errorf("GET %s, its alias %s deleted upstream while fetched: %d %.200s; want 200 and the manifest it moved to", tag, deleted, rec.Code, rec.Body)
			}
		}
		want, _ := a.next.Digest()
		for _, tag := range aliasTags {
			if tag == deleted {
				continue
			}
			if rec, ok, err := a.p.index.Tag(DefaultHost, "library/app", tag); err != nil || !ok || rec.Digest != digest.Digest(want.String()) {
				t.Errorf("tag %s recorded as %+v %v %v, want %s", tag, rec, ok, err, want)
			}
		}
	})
}

// An alias tag answered by another tag's fetch (1.27 by latest's), moved
// on upstream and pulled again, fetched and recorded there, before the
// other tag's write recorded the manifest they shared: the alias's tag
// is left where its newer pull recorded it, not pointed back at the
// manifest it moved away from, which would be served as fresh until the
// tag TTL passed.
func TestAliasMovedOnBeforeTheSharedWriteIsRecordedStaysMoved(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		reg := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
		var (
			armed atomic.Bool
			gets  atomic.Int32
			hold  = make(chan struct{})
		)
		front := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if armed.Load() && r.Method == http.MethodGet && strings.Contains(r.URL.Path, "/manifests/") && gets.Add(1) == 1 {
				<-hold // latest's GET, until 1.27's pull waits for it
			}
			reg.ServeHTTP(w, r)
		})
		mem, _ := memStore(t)
		store := &gatedStore{Store: mem}
		t.Cleanup(store.open)
		p := transportMirror(t, inProcess{front}, store, WithTagTTL(0))
		defer p.Close()
		pull := func(tg string, img ggcrv1.Image) {
			t.Helper()
			body, _ := img.RawManifest()
			rec := httptest.NewRecorder()
			req := httptest.NewRequestWithContext(t.Context(), http.MethodGet, "/v2/library/app/manifests/"+tg, nil)
			p.Handler().ServeHTTP(rec, req)
			if rec.Code != http.StatusOK || rec.Body.String() != string(body) {
				t.Errorf("GET %s: %d %.200s; want 200 and the manifest it names upstream", tg, rec.Code, rec.Body)
			}
		}
		old := pushImage(t, reg, "library/app:latest", 1)
		tagAs(t, reg, old, "1.27")
		pull("latest", old)
		pull("1.27", old)
		if err := p.WaitIdle(t.Context()); err != nil {
			t.Fatal(err)
		}
		next := pushImage(t, reg, "library/app:latest", 1)
		tagAs(t, reg, next, "1.27")
		d, _ := next.Digest()
		gate := store.gate(d.String()) // latest's write, held
		armed.Store(true)
		var pulls sync.WaitGroup
		pulls.Go(func() { pull("latest", next) })
		synctest.Wait() // latest's GET is held
		pulls.Go(func() { pull("1.27", next) })
		synctest.Wait() // 1.27's pull waits for latest's GET
		close(hold)
		pulls.Wait()
		<-gate.reached
		// 1.27 moves on upstream, and is pulled again meanwhile.
		last := pushImage(t, reg, "library/app:1.27", 1)
		pull("1.27", last)
		synctest.Wait() // its write is recorded; latest's is held
		gate.release <- nil
		if err := p.WaitIdle(t.Context()); err != nil {
			t.Fatal(err)
		}
		for tg, img := range map[string]ggcrv1.Image{"latest": next, "1.27": last} {
			want, _ := img.Digest()
			if rec, ok, err := p.index.Tag(DefaultHost, "library/app", tg); err != nil || !ok || rec.Digest != digest.Digest(want.String()) {
				t.Errorf("tag %s recorded as %+v %v %v, want %s", tg, rec, ok, err, want)
			}
		}
	})
}
