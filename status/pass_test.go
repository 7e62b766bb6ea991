package status_test

import (
	"context"
	"errors"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	storagedriver "github.com/distribution/distribution/v3/registry/storage/driver"
	"github.com/opencontainers/go-digest"

	"github.com/docker-mirror/docker-mirror/lifecycle"
	"github.com/docker-mirror/docker-mirror/status"
	"github.com/docker-mirror/docker-mirror/storage"
	"github.com/docker-mirror/docker-mirror/tests/fixture"
	"github.com/docker-mirror/docker-mirror/tests/servertest"
)

// heldWalk is a storage driver whose listing (Walk), once armed, is held
// until release is closed: a collection's walk of a large S3 store, which
// takes minutes. entered is closed when the first armed Walk begins.
// With read set, the reads (Reader) of paths holding it are held
// instead of Walk: a slow read of a manifest.
type heldWalk struct {
	storagedriver.StorageDriver
	armed   *atomic.Bool
	read    *atomic.Pointer[string]
	once    *sync.Once
	entered chan struct{}
	release chan struct{}
}

// hold waits, if armed, for release.
func (d heldWalk) hold(ctx context.Context) error {
	if !d.armed.Load() {
		return nil
	}
	d.once.Do(func() { close(d.entered) })
	select {
	case <-d.release:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (d heldWalk) Walk(ctx context.Context, path string, f storagedriver.WalkFn, opts ...func(*storagedriver.WalkOptions)) error {
	if d.read.Load() == nil {
		if err := d.hold(ctx); err != nil {
			return err
		}
	}
	return d.StorageDriver.Walk(ctx, path, f, opts...)
}

func (d heldWalk) Reader(ctx context.Context, path string, offset int64) (io.ReadCloser, error) {
	if r := d.read.Load(); r != nil && strings.Contains(path, *r) {
		if err := d.hold(ctx); err != nil {
			return nil, err
		}
	}
	return d.StorageDriver.Reader(ctx, path, offset)
}

// startHeldWalk runs a mirror whose embedded store's listing can be held
// (heldWalk), with jenkins pulled.
func startHeldWalk(t *testing.T) (*servertest.Server, *fixture.Image, heldWalk) {
	t.Helper()
	up := fixture.StartUpstream(t)
	small := up.SeedImage(t, "area51/jenkins", "2.4", 1, 4<<10)
	held := heldWalk{armed: &atomic.Bool{}, read: &atomic.Pointer[string]{}, once: &sync.Once{}, entered: make(chan struct{}), release: make(chan struct{})}
	m := servertest.StartWithStore(t, up.URL(), func(ix *storage.Index) (storage.Store, error) {
		ds, err := storage.OpenDriverStore(context.Background(), "filesystem", map[string]any{"rootdirectory": filepath.Dir(ix.Path())})
		if err != nil {
			return nil, err
		}
		held.StorageDriver = ds.Driver()
		return storage.NewDriverStore(held), nil
	})
	if a := send(t, http.MethodGet, m.URL()+"/v2/area51/jenkins/manifests/2.4", "", map[string]string{"Accept": manifestAccept}); a.status != http.StatusOK {
		t.Fatalf("pull: %d %s", a.status, a.body)
	}
	m.WaitIdle()
	return m, small, held
}

// The image list and the admin's actions answer while a lifecycle pass
// walks the store (minutes on a large S3 store): the list is read from
// the index, not after the pass. Before, listing took the collector's
// lock, which a pass holds throughout: the first visit of the page or
// /api/v1/images, one to a list more than 2 minutes old, and every pin
// or unpin (which reads the list again) waited for the whole pass.
func TestImageListDuringAPass(t *testing.T) {
	m, small, held := startHeldWalk(t)
	held.armed.Store(true)
	passed := make(chan error, 1)
	go func() {
		_, err := m.Server.Collector.Pass(context.Background(), lifecycle.Policy{})
		passed <- err
	}()
	defer func() {
		close(held.release)
		if err := <-passed; err != nil {
			t.Errorf("pass: %v", err)
		}
	}()
	<-held.entered // the pass walks the store now, holding its lock

	// send fails after a minute: the pass is held until the test ends.
	p := getJSON[status.Page](t, m.URL()+"/api/v1/images", nil)
	if p.Total != 1 || p.Images[0].Name != "docker.io/area51/jenkins" {
		t.Errorf("image list during a pass: %+v", p)
	}
	body := `{"upstream": "docker.io", "repo": "area51/jenkins", "digest": "` + small.Digest + `"}`
	if a := send(t, http.MethodPost, m.URL()+"/api/v1/actions/pin", body, map[string]string{"Content-Type": "application/json"}); a.status != http.StatusOK {
		t.Fatalf("pin during a pass: %d %s", a.status, a.body)
	}
	if p := getJSON[status.Page](t, m.URL()+"/api/v1/images", nil); p.Total != 1 || !p.Images[0].Pinned {
		t.Errorf("image list after a pin during a pass: %+v", p)
	}
}

// An image evicted while the list is read (the list does not wait for a
// pass or an eviction any more) is not listed as missing: its manifest,
// read after the eviction removed it, was taken for content the store
// lost, and the page and /api/v1/images showed the evicted image, state
// "missing", counted in the total.
func TestImageListBesideAnEviction(t *testing.T) {
	m, small, held := startHeldWalk(t)
	enc := strings.TrimPrefix(small.Digest, "sha256:")
	held.read.Store(&enc)
	held.armed.Store(true)
	listed := make(chan status.Page, 1)
	go func() {
		defer close(listed) // getJSON failing the test ends the goroutine
		listed <- getJSON[status.Page](t, m.URL()+"/api/v1/images", nil)
	}()
	<-held.entered // the list read the index, and now reads the manifest
	held.armed.Store(false)
	if _, err := m.Server.Collector.EvictImage(context.Background(), "docker.io", "area51/jenkins", digest.Digest(small.Digest)); err != nil {
		t.Fatalf("evict: %v", err)
	}
	close(held.release)
	if p, ok := <-listed; ok && p.Total != 0 {
		for _, im := range p.Images {
			t.Errorf("image list read beside its eviction: %s@%s state %q (total %d), want none", im.Name, im.Digest, im.State, p.Total)
		}
	}
}

// A pin answered during a lifecycle pass (the pin no longer waits for
// the pass) keeps the image: the pass, which had read the pins before
// it, evicted the image the admin had just been told was pinned (its
// tags gone: a pull by tag went upstream again).
func TestPinDuringAPassKeepsTheImage(t *testing.T) {
	m, small, held := startHeldWalk(t)
	enc := strings.TrimPrefix(small.Digest, "sha256:")
	held.read.Store(&enc)
	held.armed.Store(true)
	m.Clock.Advance(time.Hour) // not pulled for an hour: evicted by the pass
	passed := make(chan error, 1)
	go func() {
		_, err := m.Server.Collector.Pass(context.Background(), lifecycle.Policy{EvictAfter: time.Minute})
		passed <- err
	}()
	<-held.entered // the pass read the pins, and now reads the manifest
	held.armed.Store(false)
	body := `{"upstream": "docker.io", "repo": "area51/jenkins", "digest": "` + small.Digest + `"}`
	a := send(t, http.MethodPost, m.URL()+"/api/v1/actions/pin", body, map[string]string{"Content-Type": "application/json"})
	close(held.release)
	if err := <-passed; err != nil {
		t.Fatalf("pass: %v", err)
	}
	if a.status != http.StatusOK {
		t.Fatalf("pin during a pass: %d %s", a.status, a.body)
	}
	if _, found, err := m.Index.Tag("docker.io", "area51/jenkins", "2.4"); err != nil || !found {
		t.Errorf("the image pinned during the pass was evicted by it: its tag 2.4 gone (%v)", err)
	}
}

// An admin's eviction asked for during a lifecycle pass (the status
// page's evict, its client gone: the browser's tab closed, a script's
// timeout) ends with its request: it waited for the collector's lock,
// whatever the request's context said, for the whole pass (minutes on a
// large store), its goroutine left behind the client.
func TestEvictRequestLeftDuringAPassEndsWithIt(t *testing.T) {
	m, small, held := startHeldWalk(t)
	held.armed.Store(true)
	passed := make(chan error, 1)
	go func() {
		_, err := m.Server.Collector.Pass(context.Background(), lifecycle.Policy{})
		passed <- err
	}()
	<-held.entered // the pass walks the store now, holding its lock
	ctx, cancel := context.WithCancel(context.Background())
	cancel() // the request's context once its client left
	evicted := make(chan error, 1)
	go func() {
		_, err := m.Server.Collector.EvictImage(ctx, "docker.io", "area51/jenkins", digest.Digest(small.Digest))
		evicted <- err
	}()
	// A bound on a hang, not a time measured: the pass is held until
	// released below.
	select {
	case err := <-evicted:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("eviction whose request ended during a pass: %v, want context.Canceled", err)
		}
	case <-time.After(time.Minute):
		t.Errorf("an eviction whose request ended waited for the pass (still waiting after a minute)")
		defer func() { <-evicted }()
	}
	close(held.release)
	if err := <-passed; err != nil {
		t.Fatalf("pass: %v", err)
	}
	if _, found, err := m.Index.Tag("docker.io", "area51/jenkins", "2.4"); err != nil || !found {
		t.Errorf("the image whose eviction's request ended was evicted after the pass: its tag gone (%v)", err)
	}
}

// A pin answered while an admin's eviction of the same image reads the
// images (an eviction asked for by another admin, or a script, beside a
// prefetch that pins) keeps the image: the eviction, which had read the
// pins before, evicted the image the pin's admin had been told was
// pinned.
func TestPinDuringAnEvictionKeepsTheImage(t *testing.T) {
	m, small, held := startHeldWalk(t)
	enc := strings.TrimPrefix(small.Digest, "sha256:")
	held.read.Store(&enc)
	held.armed.Store(true)
	evicted := make(chan error, 1)
	go func() {
		_, err := m.Server.Collector.EvictImage(context.Background(), "docker.io", "area51/jenkins", digest.Digest(small.Digest))
		evicted <- err
	}()
	<-held.entered // the eviction read the pins, and now reads the manifest
	held.armed.Store(false)
	body := `{"upstream": "docker.io", "repo": "area51/jenkins", "digest": "` + small.Digest + `"}`
	a := send(t, http.MethodPost, m.URL()+"/api/v1/actions/pin", body, map[string]string{"Content-Type": "application/json"})
	close(held.release)
	err := <-evicted
	if a.status != http.StatusOK {
		t.Fatalf("pin during an eviction: %d %s", a.status, a.body)
	}
	if !errors.Is(err, lifecycle.ErrImagePinned) {
		t.Errorf("eviction of an image pinned meanwhile: %v, want %v", err, lifecycle.ErrImagePinned)
	}
	if _, found, err := m.Index.Tag("docker.io", "area51/jenkins", "2.4"); err != nil || !found {
		t.Errorf("the image pinned during its eviction was evicted: its tag 2.4 gone (%v)", err)
	}
}
