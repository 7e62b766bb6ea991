package lifecycle_test

import (
	"context"
	"io"
	"path/filepath"
	"sync"
	"testing"

	storagedriver "github.com/distribution/distribution/v3/registry/storage/driver"
	"github.com/distribution/distribution/v3/registry/storage/driver/factory"
	"github.com/opencontainers/go-digest"

	"github.com/docker-mirror/docker-mirror/gchold"
	"github.com/docker-mirror/docker-mirror/gchold/gcholdtest"
	"github.com/docker-mirror/docker-mirror/lifecycle"
	"github.com/docker-mirror/docker-mirror/storage"
)

// readProbe is a storage driver that calls probe before every read: a
// pass reads the manifests of the images it lists, keeps or removes.
type readProbe struct {
	storagedriver.StorageDriver
	probe func()
}

func (p readProbe) Reader(ctx context.Context, path string, offset int64) (io.ReadCloser, error) {
	p.probe()
	return p.StorageDriver.Reader(ctx, path, offset)
}

// Every long pass runs at the hold's GC percent, read while the pass
// reads the store, and the percent in force before it is back when it
// returns: the image list (built and visited), a collection, an
// eviction, the server's periodic pass and an admin's eviction of one
// image.
func TestPassesHoldTheGCPercent(t *testing.T) {
	e := newEnv(t)
	ctx := t.Context()
	a, _, c := seedThree(t, e)
	d, err := factory.Create(ctx, "filesystem", map[string]any{"rootdirectory": filepath.Dir(e.m.Index.Path())})
	if err != nil {
		t.Fatal(err)
	}
	rt := gcholdtest.NewPercent(100)
	var mu sync.Mutex
	var seen []int // the percent at each read of the pass under test
	observe := func() {
		mu.Lock()
		defer mu.Unlock()
		seen = append(seen, rt.GCPercent())
	}
	store := storage.NewDriverStore(readProbe{StorageDriver: d, probe: observe})
	col := lifecycle.New(store, e.m.Index, lifecycle.Options{Now: e.m.Clock.Now, GCHold: gchold.NewFor(rt, 30)})

	for _, pass := range []struct {
		name string
		run  func() error
	}{
		{"Images", func() error { _, err := col.Images(ctx); return err }},
		{"ListImages and Each", func() error {
			list, err := col.ListImages(ctx)
			if err != nil {
				return err
			}
			return list.Each(func(lifecycle.Image) error { observe(); return nil })
		}},
		{"Collect", func() error { _, err := col.Collect(ctx); return err }},
		{"Pass", func() error { _, err := col.Pass(ctx, lifecycle.Policy{}); return err }},
		{"EvictImage", func() error {
			_, err := col.EvictImage(ctx, "docker.io", "library/"+c.repo, digest.Digest(c.digest))
			return err
		}},
		{"Evict", func() error {
			r, err := col.Evict(ctx, 1, 0, e.m.Clock.Now())
			if err == nil && r.ImagesEvicted == 0 {
				t.Errorf("Evict evicted nothing; want a (%s) and b evicted", a.digest)
			}
			return err
		}},
	} {
		mu.Lock()
		seen = nil
		mu.Unlock()
		if err := pass.run(); err != nil {
			t.Fatalf("%s: %v", pass.name, err)
		}
		mu.Lock()
		if len(seen) == 0 {
			t.Errorf("%s read nothing from the store: nothing observed", pass.name)
		}
		for _, p := range seen {
			if p != 30 {
				t.Errorf("%s ran at GC percent %d, want the hold's 30 (all: %v)", pass.name, p, seen)
				break
			}
		}
		mu.Unlock()
		if p := rt.GCPercent(); p != 100 {
			t.Errorf("GC percent %d after %s, want the prior 100 back", p, pass.name)
		}
	}
}
