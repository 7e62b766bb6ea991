package lifecycle_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	storagedriver "github.com/distribution/distribution/v3/registry/storage/driver"
	"github.com/opencontainers/go-digest"

	"github.com/docker-mirror/docker-mirror/lifecycle"
	"github.com/docker-mirror/docker-mirror/proxy"
	"github.com/docker-mirror/docker-mirror/storage"
	"github.com/docker-mirror/docker-mirror/tests/fixture"
	"github.com/docker-mirror/docker-mirror/tests/servertest"
)

// runner runs a collector's Run on channels the test drives.
type runner struct {
	ticks chan time.Time
	wake  chan struct{}
	stop  func()
}

func startRun(t *testing.T, col *lifecycle.Collector, p lifecycle.Policy) *runner {
	t.Helper()
	ctx, cancel := context.WithCancel(t.Context())
	r := &runner{ticks: make(chan time.Time), wake: make(chan struct{}, 1)}
	done := make(chan struct{})
	go func() {
		defer close(done)
		col.Run(ctx, r.ticks, r.wake, p)
	}()
	r.stop = func() {
		cancel()
		<-done
	}
	t.Cleanup(r.stop)
	return r
}

// tick runs one pass and returns once it is over: Run takes the second
// tick only when the first pass is done.
func (r *runner) tick() {
	r.ticks <- time.Time{}
	r.ticks <- time.Time{}
}

// With --evict-after, an image not pulled for longer is gone, content and
// all, on the next minute tick: the server's collector (its grace period,
// its guard, its clock) frees what it evicts at once, though that content
// was written less than a grace period ago.
func TestRunEvictAfterFreesOnTheNextTick(t *testing.T) {
	e := newEnv(t)
	a := multi(e.up.SeedMultiArch(t, "library/a", "v1", 0))
	a.repo = "a"
	e.pull(t, a)
	col := e.m.Server.Collector
	r := startRun(t, col, lifecycle.Policy{EvictAfter: 20 * time.Second, CollectEvery: lifecycle.DefaultCollectEvery})

	e.m.Clock.Advance(10 * time.Second)
	r.tick()
	e.wantStored(t, true, a.content()...)

	e.m.Clock.Advance(11 * time.Second) // 21s after the pull: within the grace period still
	if lifecycle.DefaultGrace <= 21*time.Second {
		t.Fatalf("the test needs a grace period over 21s; DefaultGrace is %s", lifecycle.DefaultGrace)
	}
	r.tick()
	e.wantStored(t, false, a.content()...)
	if got := e.m.Index.StoredBytes(); got != 0 {
		t.Errorf("stored %d bytes after the eviction, want 0", got)
	}
	if list := images(t, col); len(list) != 0 {
		t.Errorf("images after the eviction: %+v", list)
	}
	// Pulled again, it is whole.
	e.wantPull(t, a)
}

// A write that takes the store past --max-size wakes a pass at once (no
// tick, no clock moving): the least recently pulled image is evicted and
// its space freed, while the image whose pull pushed the store over,
// still being mirrored and so in use, is kept whole.
func TestRunWakesWhenAPullPassesMaxSize(t *testing.T) {
	e := newEnv(t)
	old := single("old", "v1", e.up.SeedImage(t, "library/old", "v1", 2, 32<<10))
	seeded := e.up.SeedImage(t, "library/app", "v1", 2, 32<<10)
	app := single("app", "v1", seeded)

	gated, g := startGated(t, e.up, seeded.Layers[1])
	inUse := lifecycle.NewInUse()
	// Fetching ahead off: app's blobs are recorded after its manifest, so
	// the pass their growth wakes counts them as app's and evicts old.
	// (Fetched ahead, they could be recorded before the manifest, which
	// comes after the answer: that pass found the images' content under
	// the limit, evicted nothing, and ignored the wakes after it.)
	m := servertest.StartWithStore(t, gated.URL, func(ix *storage.Index) (storage.Store, error) {
		return openStore(ix)
	}, proxy.WithContentGuard(inUse), proxy.WithFetchAhead(false))
	t.Cleanup(g.Open) // before the mirror stops: it waits for the mirroring
	e = &env{up: e.up, m: m, store: m.Store.(*storage.DriverStore)}

	e.pull(t, old)
	oldSize := m.Index.StoredBytes()
	e.m.Clock.Advance(time.Second)
	collected := make(chan struct{}, 16)
	col := e.collector(lifecycle.Options{Grace: lifecycle.DefaultGrace, Guard: inUse, Log: slog.New(signal{"cache collected", collected})})
	limit := oldSize + oldSize/4 // room for one image, not two
	r := startRun(t, col, lifecycle.Policy{MaxSize: limit, CollectEvery: lifecycle.DefaultCollectEvery})
	m.Index.OnGrow(func(stored int64) { // as the server wires it
		if stored > limit {
			select {
			case r.wake <- struct{}{}:
			default:
			}
		}
	})

	if status, _, _ := get(t, m.URL()+"/v2/app/manifests/v1"); status != http.StatusOK {
		t.Fatalf("pull app: status %d", status)
	}
	<-g.reached // app's mirror waits for its second layer
	<-collected // the pass the growth woke: no tick was sent
	e.wantStored(t, false, old.content()...)
	if _, ok, _ := m.Index.Tag("docker.io", "library/app", "v1"); !ok {
		t.Error("app's tag was evicted mid-pull")
	}
	e.wantStored(t, true, app.digest)
	g.Open()
	m.WaitIdle()
	e.wantStored(t, true, app.content()...)
	if got := m.Index.StoredBytes(); got > limit {
		t.Errorf("stored %d, over the limit %d", got, limit)
	}
	e.wantPull(t, app)
}

// signal is a slog handler that signals on ch each record whose message
// is msg.
type signal struct {
	msg string
	ch  chan<- struct{}
}

func (s signal) Enabled(context.Context, slog.Level) bool { return true }
func (s signal) Handle(_ context.Context, r slog.Record) error {
	if r.Message == s.msg {
		s.ch <- struct{}{}
	}
	return nil
}
func (s signal) WithAttrs([]slog.Attr) slog.Handler { return s }
func (s signal) WithGroup(string) slog.Handler      { return s }

func openStore(ix *storage.Index) (storage.Store, error) {
	return storage.OpenDriverStore(context.Background(), "filesystem", map[string]any{"rootdirectory": filepath.Dir(ix.Path())})
}

// releases is the proxy's content guard, telling each release.
type releases struct {
	*lifecycle.InUse
	released chan digest.Digest
}

func (g releases) Acquire(ctx context.Context, d digest.Digest) (func(), error) {
	release, err := g.InUse.Acquire(ctx, d)
	if err != nil {
		return nil, err
	}
	return func() {
		release()
		g.released <- d
	}, nil
}

// A copy by digest (a prefetch or sync of image@digest) makes its image a
// root only once it is done; meanwhile the proxy holds the image's digest
// and the collector keeps what it references, however long the copy
// takes: the grace period does not have to outlast it.
func TestCollectKeepsWhatACopyHolds(t *testing.T) {
	up := fixture.StartUpstream(t)
	seeded := up.SeedImage(t, "library/app", "v1", 2, 8<<10)
	app := single("app", "v1", seeded)
	gated, g := startGated(t, up, seeded.Layers[1])
	guard := releases{lifecycle.NewInUse(), make(chan digest.Digest, 1024)}
	m := servertest.StartWithStore(t, gated.URL, openStore, proxy.WithContentGuard(guard))
	t.Cleanup(g.Open)
	e := &env{up: up, m: m, store: m.Store.(*storage.DriverStore)}
	col := e.collector(lifecycle.Options{Grace: lifecycle.DefaultGrace, Guard: guard.InUse})

	copied := make(chan error, 1)
	go func() {
		_, err := m.Proxy.Copy(context.Background(), "library/app@"+app.digest, nil, nil)
		copied <- err
	}()
	<-g.reached
	// Wait until the config and the first layer are recorded and no
	// longer held: only the copy's hold of the image keeps them.
	done := func(d string) bool {
		_, recorded, _ := m.Index.Blob(digest.Digest(d))
		return recorded && !guard.Busy(digest.Digest(d))
	}
	for !done(seeded.Config) || !done(seeded.Layers[0]) {
		<-guard.released
	}
	m.Clock.Advance(2 * lifecycle.DefaultGrace)
	if _, err := col.Collect(t.Context()); err != nil {
		t.Fatal(err)
	}
	e.wantStored(t, true, app.digest, seeded.Config, seeded.Layers[0])
	g.Open()
	if err := <-copied; err != nil {
		t.Fatalf("copy: %v", err)
	}
	e.wantStored(t, true, app.content()...)
}

// A manifest missing when the collection marks, and stored before it
// removes anything (a fill stores a child manifest, then its blobs), keeps
// the blobs it references: the collector reads missing manifests again.
func TestCollectRereadsMissingManifests(t *testing.T) {
	e := newEnv(t)
	ma := e.up.SeedMultiArch(t, "library/m", "v1", fixture.OCI)
	im := multi(ma)
	im.repo = "m"
	e.pull(t, im)
	child := ma.Platforms["linux/arm64"]
	if err := os.Remove(e.path(child.Digest)); err != nil {
		t.Fatal(err)
	}
	// Nor recorded yet, as in a fill (a recorded manifest whose file is
	// gone is lost, and keeps its repository's content:
	// TestCollectKeepsImageWhoseRootCannotBeRead).
	if _, err := e.m.Index.Forget([]digest.Digest{digest.Digest(child.Digest)}, nil); err != nil {
		t.Fatal(err)
	}
	stored := false
	guard := &claimHook{first: func() {
		body := child.Manifest
		if err := e.store.Put(context.Background(), "", digest.Digest(child.Digest), int64(len(body)), bytes.NewReader(body)); err != nil {
			t.Error(err)
		}
		stored = true
	}}
	if _, err := e.collector(lifecycle.Options{Guard: guard}).Collect(t.Context()); err != nil {
		t.Fatal(err)
	}
	if !stored {
		t.Fatal("the collection claimed nothing: the child's blobs were not unreferenced")
	}
	e.wantStored(t, true, im.content()...)
}

// Without limits a pass collects only every CollectEvery: ticks between
// change nothing, the first after it collects what no image references.
func TestPassCollectsEveryCollectEvery(t *testing.T) {
	e := newEnv(t)
	a := single("a", "v1", e.up.SeedImage(t, "library/a", "v1", 2, 8<<10))
	e.pull(t, a)
	col := e.m.Server.Collector
	p := lifecycle.Policy{CollectEvery: lifecycle.DefaultCollectEvery}
	if _, err := col.Pass(t.Context(), p); err != nil { // the first collects
		t.Fatal(err)
	}
	if err := e.m.Index.DeleteTag("docker.io", "library/a", "v1"); err != nil {
		t.Fatal(err)
	}
	if err := e.m.Index.DeleteFill("docker.io", "library/a", digest.Digest(a.digest)); err != nil {
		t.Fatal(err)
	}
	e.m.Clock.Advance(lifecycle.DefaultGrace + time.Second) // a's content is past the grace period
	if r, err := col.Pass(t.Context(), p); err != nil || r.BlobsRemoved+r.ManifestsRemoved != 0 {
		t.Fatalf("pass before CollectEvery = %+v, %v; want nothing removed", r, err)
	}
	e.wantStored(t, true, a.content()...)
	e.m.Clock.Advance(lifecycle.DefaultCollectEvery)
	if r, err := col.Pass(t.Context(), p); err != nil || r.BlobsRemoved != 3 || r.ManifestsRemoved != 1 {
		t.Fatalf("pass after CollectEvery = %+v, %v; want a's manifest and 3 blobs removed", r, err)
	}
	e.wantStored(t, false, a.content()...)
}

// acquires is the proxy's content guard, telling each Acquire as it
// starts (before it waits for a claim).
type acquires struct {
	*lifecycle.InUse
	acquiring chan digest.Digest
}

func (g acquires) Acquire(ctx context.Context, d digest.Digest) (func(), error) {
	g.acquiring <- d
	return g.InUse.Acquire(ctx, d)
}

// A downloaded blob is stored and recorded under the guard: while the
// collector has the digest claimed (it is removing an older copy), the
// download waits, so the removal never leaves a record of nothing.
func TestDownloadStoresUnderTheGuard(t *testing.T) {
	up := fixture.StartUpstream(t)
	seeded := up.SeedImage(t, "library/app", "v1", 1, 8<<10)
	layer := digest.Digest(seeded.Layers[0])
	gated, g := startGated(t, up, seeded.Layers[0])
	guard := acquires{lifecycle.NewInUse(), make(chan digest.Digest, 64)}
	m := servertest.StartWithStore(t, gated.URL, openStore, proxy.WithContentGuard(guard))
	t.Cleanup(g.Open)

	pulled := make(chan int, 1)
	go func() {
		req, _ := http.NewRequest(http.MethodGet, m.URL()+"/v2/app/blobs/"+layer.String(), nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			pulled <- 0
			return
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		pulled <- resp.StatusCode
	}()
	<-g.reached // the download waits for the upstream
	if d := <-guard.acquiring; d != layer {
		t.Fatalf("the blob request held %s", d)
	}
	release, ok := guard.Claim(layer) // as the collector does
	if !ok {
		t.Fatal("the blob is held while it downloads")
	}
	idle := make(chan struct{})
	go func() {
		m.Proxy.WaitIdle(context.Background())
		close(idle)
	}()
	g.Open()
	select {
	case d := <-guard.acquiring:
		if d != layer {
			t.Fatalf("acquired %s", d)
		}
	case <-idle:
		t.Fatal("the download stored the blob without asking the guard")
	}
	if _, ok, _ := m.Index.Blob(layer); ok {
		t.Error("recorded while claimed")
	}
	if _, err := m.Store.Stat(t.Context(), "", layer); err == nil {
		t.Error("stored while claimed")
	}
	release()
	<-idle
	if status := <-pulled; status != http.StatusOK {
		t.Fatalf("blob: status %d", status)
	}
	if _, ok, _ := m.Index.Blob(layer); !ok {
		t.Error("not recorded once released")
	}
	if _, err := m.Store.Stat(t.Context(), "", layer); err != nil {
		t.Errorf("not stored once released: %v", err)
	}
}

// A fill that needs a stored blob the collector is removing waits for the
// removal, then fetches the blob again: it never counts on content that
// is going away, and the image it completes is whole.
func TestFillWaitsForARemoval(t *testing.T) {
	up := fixture.StartUpstream(t)
	baseBytes := randomBytes(8 << 10)
	base := up.PushBlob(t, "library/app", baseBytes)
	a := seedOnLayer(t, up, "library/app", "a", base, len(baseBytes))
	b := seedOnLayer(t, up, "library/app", "b", base, len(baseBytes))
	guard := acquires{lifecycle.NewInUse(), make(chan digest.Digest, 256)}
	m := servertest.StartWithStore(t, up.URL(), openStore, proxy.WithContentGuard(guard))
	e := &env{up: up, m: m, store: m.Store.(*storage.DriverStore)}
	e.pull(t, a)
	for len(guard.acquiring) > 0 {
		<-guard.acquiring
	}
	release, ok := guard.Claim(digest.Digest(base)) // the collector removes the shared layer
	if !ok {
		t.Fatal("the layer is in use")
	}
	if status, _, _ := get(t, m.URL()+"/v2/app/manifests/b"); status != http.StatusOK {
		t.Fatalf("pull b: status %d", status)
	}
	idle := make(chan struct{})
	go func() {
		m.Proxy.WaitIdle(context.Background())
		close(idle)
	}()
	for waiting := false; !waiting; {
		select {
		case d := <-guard.acquiring:
			waiting = d.String() == base
		case <-idle:
			t.Fatal("b's fill used the layer without asking the guard")
		}
	}
	if _, err := m.Index.Forget([]digest.Digest{digest.Digest(base)}, nil); err != nil {
		t.Fatal(err)
	}
	if err := m.Store.Delete(t.Context(), "", digest.Digest(base)); err != nil {
		t.Fatal(err)
	}
	release()
	go func() { // the fill downloads the layer again: drain its acquires
		for {
			select {
			case <-guard.acquiring:
			case <-idle:
				return
			}
		}
	}()
	<-idle
	if rec, ok, _ := m.Index.Fill("docker.io", "library/app", digest.Digest(b.digest)); !ok || rec.State != storage.FillComplete {
		t.Fatalf("b's fill: %+v", rec)
	}
	e.wantStored(t, true, b.content()...)
	e.wantPull(t, b)
}

// A fetched manifest is stored and recorded under the guard, as a blob is.
func TestManifestStoresUnderTheGuard(t *testing.T) {
	up := fixture.StartUpstream(t)
	app := single("app", "v1", up.SeedImage(t, "library/app", "v1", 1, 4<<10))
	d := digest.Digest(app.digest)
	guard := acquires{lifecycle.NewInUse(), make(chan digest.Digest, 256)}
	m := servertest.StartWithStore(t, up.URL(), openStore, proxy.WithContentGuard(guard))
	release, ok := guard.Claim(d)
	if !ok {
		t.Fatal("claim")
	}
	pulled := make(chan int, 1)
	go func() {
		status, _, _ := get(t, m.URL()+"/v2/app/manifests/v1")
		pulled <- status
	}()
	for waiting := false; !waiting; {
		select {
		case got := <-guard.acquiring:
			waiting = got == d
		case status := <-pulled:
			t.Fatalf("the pull ended (status %d) without the manifest asking the guard", status)
		}
	}
	if _, ok, _ := m.Index.Manifest(d); ok {
		t.Error("recorded while claimed")
	}
	if _, err := m.Store.Stat(t.Context(), "", d); err == nil {
		t.Error("stored while claimed")
	}
	release()
	stop, drained := make(chan struct{}), make(chan struct{})
	go func() { // the background mirror acquires more
		defer close(drained)
		for {
			select {
			case <-guard.acquiring:
			case <-stop:
				return
			}
		}
	}()
	defer func() {
		close(stop)
		<-drained
	}()
	if status := <-pulled; status != http.StatusOK {
		t.Fatalf("pull: status %d", status)
	}
	m.WaitIdle()
	if _, ok, _ := m.Index.Manifest(d); !ok {
		t.Error("not recorded once released")
	}
}

// With --evict-after set every pass is an eviction; one that evicts
// nothing and runs the periodic collection counts it as a collection
// (reason gc), not as removals after an eviction no one made.
func TestPassCollectionWithoutEvictionCountsAsGC(t *testing.T) {
	e := newEnv(t)
	a := single("a", "v1", e.up.SeedImage(t, "library/a", "v1", 2, 8<<10))
	e.pull(t, a)
	if err := e.m.Index.DeleteTag("docker.io", "library/a", "v1"); err != nil {
		t.Fatal(err)
	}
	if err := e.m.Index.DeleteFill("docker.io", "library/a", digest.Digest(a.digest)); err != nil {
		t.Fatal(err)
	}
	e.m.Clock.Advance(lifecycle.DefaultGrace + time.Second) // a's content is past the grace period
	p := lifecycle.Policy{EvictAfter: 24 * time.Hour, CollectEvery: lifecycle.DefaultCollectEvery}
	r, err := e.m.Server.Collector.Pass(t.Context(), p)
	if err != nil || r.ImagesEvicted != 0 || r.ManifestsRemoved != 1 {
		t.Fatalf("Pass = %+v, %v; want a's manifest collected, nothing evicted", r, err)
	}
	_, body, _ := get(t, e.m.URL()+"/metrics")
	for _, want := range []string{
		`docker_mirror_removed_content_total{kind="manifest",reason="gc"} 1`,
		`docker_mirror_removed_content_total{kind="blob",reason="gc"} 3`,
		`docker_mirror_lifecycle_runs_total{operation="collect",result="ok"} 1`,
	} {
		if !strings.Contains(string(body), want) {
			t.Errorf("metrics lack %q", want)
		}
	}
}

// failingWalk is a storage driver whose Walk (a store's listing) fails
// while fail is set.
type failingWalk struct {
	storagedriver.StorageDriver
	fail *atomic.Bool
}

func (d failingWalk) Walk(ctx context.Context, path string, f storagedriver.WalkFn, opts ...func(*storagedriver.WalkOptions)) error {
	if d.fail.Load() {
		return errors.New("listing failed")
	}
	return d.StorageDriver.Walk(ctx, path, f, opts...)
}

// A pass whose collection fails (the store's listing) is no collection:
// the next pass collects, rather than waiting CollectEvery for the next
// try.
func TestPassRetriesAFailedCollection(t *testing.T) {
	e := newEnv(t)
	a := single("a", "v1", e.up.SeedImage(t, "library/a", "v1", 2, 8<<10))
	e.pull(t, a)
	if err := e.m.Index.DeleteTag("docker.io", "library/a", "v1"); err != nil {
		t.Fatal(err)
	}
	if err := e.m.Index.DeleteFill("docker.io", "library/a", digest.Digest(a.digest)); err != nil {
		t.Fatal(err)
	}
	e.m.Clock.Advance(lifecycle.DefaultGrace + time.Second) // a's content is past the grace period
	fail := &atomic.Bool{}
	fail.Store(true)
	store := storage.NewDriverStore(failingWalk{e.store.Driver(), fail})
	col := lifecycle.New(store, e.m.Index, lifecycle.Options{Now: e.m.Clock.Now, Grace: lifecycle.DefaultGrace})
	p := lifecycle.Policy{CollectEvery: lifecycle.DefaultCollectEvery}
	if _, err := col.Pass(t.Context(), p); err == nil {
		t.Fatal("a pass whose listing of the store fails succeeded")
	}
	fail.Store(false)
	e.m.Clock.Advance(time.Minute) // the next tick
	if r, err := col.Pass(t.Context(), p); err != nil || r.BlobsRemoved != 3 || r.ManifestsRemoved != 1 {
		t.Fatalf("pass after a failed collection = %+v, %v; want a's manifest and 3 blobs removed", r, err)
	}
	e.wantStored(t, false, a.content()...)
}

// cancelAtDelete is a storage driver that ends a context once it has
// removed something: an operator's ^C landing just after a repair's
// removals.
type cancelAtDelete struct {
	storagedriver.StorageDriver
	cancel context.CancelFunc
}

func (d cancelAtDelete) Delete(ctx context.Context, path string) error {
	err := d.StorageDriver.Delete(ctx, path)
	d.cancel()
	return err
}

// A repair interrupted once it has removed corrupt content still leaves
// the image that lost it partial, so that the next pull mirrors it again:
// a rerun finds nothing more to remove, and would never set it back.
func TestVerifyInterruptedAfterRemovalLeavesImagePartial(t *testing.T) {
	e := newEnv(t)
	_, b, _ := seedThree(t, e)
	flipByte(t, e.path(b.blobs[1]))
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	store := storage.NewDriverStore(cancelAtDelete{e.store.Driver(), cancel})
	_, _ = lifecycle.New(store, e.m.Index, lifecycle.Options{Now: e.m.Clock.Now}).Verify(ctx) // cut short: its error is the cancellation's
	e.wantStored(t, false, b.blobs[1])
	if _, err := e.collector(lifecycle.Options{}).Verify(t.Context()); err != nil {
		t.Fatal(err)
	}
	if rec, _, _ := e.m.Index.Fill("docker.io", "library/b", digest.Digest(b.digest)); rec.State != storage.FillPartial {
		t.Errorf("b's mirror state is %q after its corrupt layer was removed, want partial", rec.State)
	}
}
