package proxy

import (
	"context"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/opencontainers/go-digest"

	"github.com/docker-mirror/docker-mirror/storage"
)

// statThenGone is a store in memory whose lookups of one blob, once armed,
// play a miss that races a prefetch and an eviction: the first says the
// blob is not stored (before the prefetch stored it), the second finds it
// and removes it (the eviction, right after).
type statThenGone struct {
	*storage.DriverStore
	dgst  digest.Digest
	armed atomic.Bool
	stats atomic.Int32
}

func (s *statThenGone) Stat(ctx context.Context, repo string, dgst digest.Digest) (int64, error) {
	if dgst != s.dgst || !s.armed.Load() {
		return s.DriverStore.Stat(ctx, repo, dgst)
	}
	switch s.stats.Add(1) {
	case 1:
		return 0, storage.ErrNotFound
	case 2:
		n, err := s.DriverStore.Stat(ctx, repo, dgst)
		if err == nil {
			err = s.DriverStore.Delete(ctx, repo, dgst)
		}
		return n, err
	}
	return s.DriverStore.Stat(ctx, repo, dgst)
}

// A blob a miss finds stored (by a prefetch, meanwhile) but that is
// removed before it is opened (an eviction) is fetched again, as a hit's
// blob removed since its lookup is: not answered 500.
func TestMissOfBlobRemovedSinceItsLookup(t *testing.T) {
	body := []byte(strings.Repeat("layer bytes ", 1000))
	d := digest.FromBytes(body)
	mem, _ := memStore(t)
	store := &statThenGone{DriverStore: mem, dgst: d}
	p, _, _ := testMirror(t, store, blobUpstream(t, body))
	srv := httptest.NewServer(p.Handler())
	defer srv.Close()
	get := func() (int, string) {
		t.Helper()
		resp, err := http.Get(srv.URL + "/v2/library/app/blobs/" + d.String())
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		return resp.StatusCode, string(b)
	}
	if code, got := get(); code != http.StatusOK || got != string(body) {
		t.Fatalf("first GET: %d %.200s", code, got)
	}
	if err := p.WaitIdle(t.Context()); err != nil {
		t.Fatal(err)
	}
	store.armed.Store(true)
	if code, got := get(); code != http.StatusOK || got != string(body) {
		t.Errorf("GET of a blob removed between its lookup and its open: %d %.200s", code, got)
	}
}

// A layer a prefetch finds stored but that is removed right after (the
// eviction of another replica sharing the bucket) is fetched again: the
// prefetch is done. Before, it failed, the blob not found.
func TestPrefetchOfBlobRemovedSinceItsLookup(t *testing.T) {
	reg := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	img := pushImage(t, reg, "library/a:1", 1)
	mem, _ := memStore(t)
	store := &statThenGone{DriverStore: mem, dgst: firstLayer(t, img)}
	p := transportMirror(t, inProcess{reg}, store)
	prefetch := func() *storage.Job {
		t.Helper()
		job, err := p.StartPrefetch(t.Context(), PrefetchRequest{Images: []string{"a:1"}}, "prefetch")
		if err != nil {
			t.Fatal(err)
		}
		if err := p.WaitIdle(t.Context()); err != nil {
			t.Fatal(err)
		}
		got, err := p.Job(job.ID)
		if err != nil {
			t.Fatal(err)
		}
		return got
	}
	if got := prefetch(); got.State != storage.JobDone {
		t.Fatalf("first prefetch: %s; images: %+v", got.State, got.Images)
	}
	store.armed.Store(true)
	if got := prefetch(); got.State != storage.JobDone {
		t.Fatalf("prefetch of a layer removed between its lookups (%d): %s, want done; images: %+v", store.stats.Load(), got.State, got.Images)
	}
}
