package lifecycle_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/distribution/distribution/v3/registry/storage/driver/inmemory"
	"github.com/opencontainers/go-digest"

	"github.com/docker-mirror/docker-mirror/lifecycle"
	"github.com/docker-mirror/docker-mirror/proxy"
	"github.com/docker-mirror/docker-mirror/storage"
	"github.com/docker-mirror/docker-mirror/tests/fixture"
	"github.com/docker-mirror/docker-mirror/tests/servertest"
)

func randomBytes(n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

// seedOnLayer pushes to repo:tag an OCI image of its own config and
// layer on top of the layer base (a digest pushed to repo already).
func seedOnLayer(t *testing.T, up *fixture.Upstream, repo, tag, base string, baseSize int) image {
	t.Helper()
	config := []byte(`{"architecture":"amd64","os":"linux","config":{"Labels":{"tag":"` + tag + `"}},"rootfs":{"type":"layers","diff_ids":[]}}`)
	own := randomBytes(4 << 10)
	configD, ownD := up.PushBlob(t, repo, config), up.PushBlob(t, repo, own)
	type desc struct {
		MediaType string `json:"mediaType"`
		Digest    string `json:"digest"`
		Size      int    `json:"size"`
	}
	raw, err := json.Marshal(struct {
		SchemaVersion int    `json:"schemaVersion"`
		MediaType     string `json:"mediaType"`
		Config        desc   `json:"config"`
		Layers        []desc `json:"layers"`
	}{2, "application/vnd.oci.image.manifest.v1+json",
		desc{"application/vnd.oci.image.config.v1+json", configD, len(config)},
		[]desc{{"application/vnd.oci.image.layer.v1.tar+gzip", base, baseSize}, {"application/vnd.oci.image.layer.v1.tar+gzip", ownD, len(own)}},
	})
	if err != nil {
		t.Fatal(err)
	}
	d := up.PutManifest(t, repo, tag, "application/vnd.oci.image.manifest.v1+json", raw)
	return image{repo: strings.TrimPrefix(repo, "library/"), tag: tag, digest: d, manifests: map[string][]byte{d: raw}, blobs: []string{configD, base, ownD}}
}

// A layer several images share is freed only with the last of them:
// evicting the least recently pulled image frees its own content alone,
// so the size limit takes a second eviction, and the shared layer stays
// with the image still using it.
func TestEvictCountsSharedLayerFreedWithItsLastImage(t *testing.T) {
	e := newEnv(t)
	base := randomBytes(256 << 10) // most of each image
	baseD := e.up.PushBlob(t, "library/app", base)
	var v [3]image // pulled in this order, an hour apart
	for i, tag := range []string{"v1", "v2", "v3"} {
		v[i] = seedOnLayer(t, e.up, "library/app", tag, baseD, len(base))
		e.pull(t, v[i])
		e.m.Clock.Advance(time.Hour)
	}
	col := e.collector(lifecycle.Options{})
	list := images(t, col)
	var size [3]int64
	for i := range v {
		size[i] = findImage(t, list, v[i].digest).Size
	}
	// Room for v3 alone: v1's own content is not enough to free; counting
	// the shared layer as freed with it would stop there, over the limit.
	limit := size[2]
	own := func(i int) int64 { return size[i] - int64(len(base)) }
	if stored := e.m.Index.StoredBytes(); stored != limit+own(0)+own(1) {
		t.Fatalf("stored %d, want %d: the images' own content and one copy of the shared layer", stored, limit+own(0)+own(1))
	}

	r, err := col.Evict(t.Context(), limit, 0, e.m.Clock.Now())
	if err != nil {
		t.Fatal(err)
	}
	if r.ImagesEvicted != 2 || r.Evicted[0].Digest.String() != v[0].digest || r.Evicted[1].Digest.String() != v[1].digest {
		t.Fatalf("evicted %+v, want v1 then v2", r.Evicted)
	}
	if r.StoredAfter > limit || e.m.Index.StoredBytes() > limit {
		t.Errorf("stored %d (report %d) after eviction, over the limit %d", e.m.Index.StoredBytes(), r.StoredAfter, limit)
	}
	if r.BytesFreed != own(0)+own(1) || r.BlobsRemoved != 4 || r.ManifestsRemoved != 2 {
		t.Errorf("report %+v, want v1's and v2's own content freed (%d bytes, 4 blobs, 2 manifests)", r, own(0)+own(1))
	}
	for _, im := range v[:2] {
		for _, d := range im.content() {
			if d != baseD {
				e.wantStored(t, false, d)
			}
		}
	}
	e.wantStored(t, true, v[2].content()...) // the shared layer among them
	if list := images(t, col); len(list) != 1 || list[0].Digest.String() != v[2].digest {
		t.Errorf("images after eviction: %+v, want v3 alone", list)
	}
	e.up.Stop()
	e.wantPull(t, v[2])
}

// gate holds the upstream's answers to GETs whose path contains block
// until it is opened.
type gate struct {
	block   string
	reached chan struct{} // closed when a request is first held
	open    chan struct{}
	once    sync.Once
	opening sync.Once
}

func (g *gate) Open() { g.opening.Do(func() { close(g.open) }) }

// startGated serves up through a gate on GETs of block.
func startGated(t *testing.T, up *fixture.Upstream, block string) (*httptest.Server, *gate) {
	t.Helper()
	target, err := url.Parse(up.URL())
	if err != nil {
		t.Fatal(err)
	}
	g := &gate{block: block, reached: make(chan struct{}), open: make(chan struct{})}
	rp := httputil.NewSingleHostReverseProxy(target)
	tr := http.DefaultTransport.(*http.Transport).Clone()
	rp.Transport = tr
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet && strings.Contains(r.URL.Path, g.block) {
			g.once.Do(func() { close(g.reached) })
			select {
			case <-g.open:
			case <-r.Context().Done():
				return
			}
		}
		rp.ServeHTTP(w, r)
	}))
	t.Cleanup(func() {
		srv.Close()
		tr.CloseIdleConnections()
	})
	return srv, g
}

// An image whose background mirroring is under way is not evicted: the
// mirror records it complete when it is done, so evicting it meanwhile
// would leave its content held by a mirror record with its tags gone (an
// image no one can pull by tag, kept in place of those that can). Once
// mirrored, and past the grace period, it is evicted whole.
func TestEvictSparesImageBeingMirrored(t *testing.T) {
	mi := startMirroring(t)
	m, col := mi.m, mi.col
	mi.wantSparedUntilDone(t)

	m.Clock.Advance(lifecycle.DefaultGrace + time.Minute)
	r, err := col.Evict(t.Context(), 1, 0, m.Clock.Now())
	if err != nil {
		t.Fatal(err)
	}
	if r.ImagesEvicted != 1 || m.Index.StoredBytes() != 0 {
		t.Fatalf("evict after the mirror: %+v, stored %d", r, m.Index.StoredBytes())
	}
	if list := images(t, col); len(list) != 0 {
		t.Errorf("images after eviction: %+v", list)
	}
	if _, ok, _ := m.Index.Fill("docker.io", "library/app", digest.Digest(mi.im.digest)); ok {
		t.Error("the evicted image's mirror record survived")
	}
}

// An image whose mirroring failed stays partial; it is spared for the
// grace period only, then evicted like any other.
func TestEvictPartialImageAfterGrace(t *testing.T) {
	e := newEnv(t)
	seeded := e.up.SeedImage(t, "library/app", "v1", 2, 8<<10)
	e.up.SetFault(fixture.Fault{Kind: fixture.KindBlob, PathContains: seeded.Layers[1], Status: http.StatusNotFound})
	e.pull(t, single("app", "v1", seeded))
	col := e.collector(lifecycle.Options{Grace: lifecycle.DefaultGrace})
	if list := images(t, col); len(list) != 1 || list[0].State != storage.FillPartial {
		t.Fatalf("images = %+v, want app:v1 partial", list)
	}
	if r, err := col.Evict(t.Context(), 1, 0, e.m.Clock.Now()); err != nil || r.ImagesEvicted != 0 {
		t.Fatalf("Evict within the grace period = %+v, %v", r, err)
	}
	e.m.Clock.Advance(lifecycle.DefaultGrace + time.Minute)
	r, err := col.Evict(t.Context(), 1, 0, e.m.Clock.Now())
	if err != nil || r.ImagesEvicted != 1 || e.m.Index.StoredBytes() != 0 {
		t.Fatalf("Evict after the grace period = %+v, %v; stored %d", r, err, e.m.Index.StoredBytes())
	}
}

// An image the guard reports in use is not evicted: it keeps its tags and
// its content.
func TestEvictSparesImageInUse(t *testing.T) {
	e := newEnv(t)
	a, b, c := seedThree(t, e)
	inUse := lifecycle.NewInUse()
	release, err := inUse.Acquire(t.Context(), digest.Digest(a.digest))
	if err != nil {
		t.Fatal(err)
	}
	defer release()
	col := e.collector(lifecycle.Options{Guard: inUse})
	r, err := col.Evict(t.Context(), 1, 0, e.m.Clock.Now())
	if err != nil {
		t.Fatal(err)
	}
	for _, im := range r.Evicted {
		if im.Digest.String() == a.digest {
			t.Errorf("evicted %+v, the guard reporting a in use", r.Evicted)
		}
	}
	if r.ImagesEvicted != 2 {
		t.Errorf("evicted %+v, want b and c", r.Evicted)
	}
	if list := images(t, col); len(list) != 1 || list[0].Digest.String() != a.digest || strings.Join(list[0].Tags, ",") != "v1" {
		t.Errorf("images after eviction: %+v, want a:v1", list)
	}
	if rec, ok, err := e.m.Index.Tag("docker.io", "library/a", "v1"); err != nil || !ok || rec.Digest.String() != a.digest {
		t.Errorf("a's tag after eviction: %+v, %v, %v", rec, ok, err)
	}
	e.wantStored(t, true, a.content()...)
	e.wantStored(t, false, b.content()...)
	e.wantStored(t, false, c.content()...)
}

// A background mirror holds its image in use for as long as it runs: an
// image whose mirroring outlasts the grace period (so its partial mirror
// record no longer spares it) is not evicted half-mirrored.
func TestEvictSparesLongMirror(t *testing.T) {
	mi := startMirroring(t)
	mi.m.Clock.Advance(lifecycle.DefaultGrace + time.Minute)
	mi.wantSparedUntilDone(t)
	mi.wantStored(t, true, mi.im.content()...)
}

// mirroring is a mirror whose background mirroring of app:v1 is held at
// the image's second layer: the pull answered, the mirror not done.
type mirroring struct {
	*env
	im  image
	g   *gate
	col *lifecycle.Collector
}

// startMirroring pulls app:v1 through a mirror whose upstream holds the
// image's second layer, and returns once the background mirror waits for
// it (the mirror does not fetch ahead, so the fill asks for it first).
// Its collector has what the server gives it: a grace period, and the
// guard the proxy holds.
func startMirroring(t *testing.T) mirroring {
	t.Helper()
	up := fixture.StartUpstream(t)
	seeded := up.SeedImage(t, "library/app", "v1", 2, 8<<10)
	im := single("app", "v1", seeded)
	gated, g := startGated(t, up, seeded.Layers[1])
	inUse := lifecycle.NewInUse()
	// Fetching ahead off: the gated layer is asked for by the fill alone,
	// which holds the image's root first (fetched ahead, the gate could be
	// reached before the fill, which starts after the manifest's answer,
	// held it, and an eviction then took the image).
	m := servertest.StartWithStore(t, gated.URL, func(ix *storage.Index) (storage.Store, error) {
		return storage.OpenDriverStore(context.Background(), "filesystem", map[string]any{"rootdirectory": filepath.Dir(ix.Path())})
	}, proxy.WithContentGuard(inUse), proxy.WithFetchAhead(false))
	t.Cleanup(g.Open) // before the mirror stops: it waits for the mirroring
	e := &env{up: up, m: m, store: m.Store.(*storage.DriverStore)}
	col := e.collector(lifecycle.Options{Grace: lifecycle.DefaultGrace, Guard: inUse})

	if status, _, _ := get(t, m.URL()+"/v2/app/manifests/v1"); status != http.StatusOK {
		t.Fatalf("pull: status %d", status)
	}
	select {
	case <-g.reached: // the background mirror waits for a layer
	case <-time.After(time.Minute):
		t.Fatal("the background mirror never asked for the gated layer")
	}
	return mirroring{env: e, im: im, g: g, col: col}
}

// wantSparedUntilDone evicts down to 1 byte while the mirroring is held,
// wants nothing evicted, then lets the mirror finish and wants app:v1
// complete.
func (mi mirroring) wantSparedUntilDone(t *testing.T) {
	t.Helper()
	r, err := mi.col.Evict(t.Context(), 1, 0, mi.m.Clock.Now())
	if err != nil {
		t.Fatal(err)
	}
	if r.ImagesEvicted != 0 {
		t.Errorf("evicted %+v while it was being mirrored", r.Evicted)
	}
	mi.g.Open()
	mi.m.WaitIdle()
	list := images(t, mi.col)
	if len(list) != 1 || list[0].Digest.String() != mi.im.digest || strings.Join(list[0].Tags, ",") != "v1" || list[0].State != storage.FillComplete {
		t.Fatalf("images after the mirror: %+v, want app:v1 complete", list)
	}
}

// The collection that follows an eviction takes the content records its
// model read (not read again): an image pulled meanwhile, its records
// not in that table, is kept whole, and the victim's content goes.
func TestEvictKeepsWhatIsPulledDuringIt(t *testing.T) {
	e := newEnv(t)
	a, b, c := seedThree(t, e)
	d := single("library/d", "v1", e.up.SeedImage(t, "library/d", "v1", 2, 8<<10))
	d.repo = "d"
	col := e.collector(lifecycle.Options{Guard: &claimHook{first: func() { e.pull(t, d) }}})
	list := images(t, col)
	limit := findImage(t, list, b.digest).Size + findImage(t, list, c.digest).Size
	r, err := col.Evict(t.Context(), limit, 0, e.m.Clock.Now())
	if err != nil {
		t.Fatal(err)
	}
	if r.ImagesEvicted != 1 || r.Evicted[0].Digest.String() != a.digest {
		t.Fatalf("evicted %+v, want image a", r.Evicted)
	}
	e.wantStored(t, false, a.content()...)
	for _, im := range []image{b, c, d} {
		e.wantStored(t, true, im.content()...)
	}
	e.up.Stop()
	e.wantPull(t, d)
}

// freelistProbe is a Guard that reads, at each claim, whether the
// index's last commit wrote bbolt's freelist.
type freelistProbe struct {
	path    string
	mu      sync.Mutex
	written []bool
	err     error
}

func (p *freelistProbe) Claim(digest.Digest) (func(), bool) {
	w, err := storage.FreelistWritten(p.path)
	p.mu.Lock()
	defer p.mu.Unlock()
	p.written = append(p.written, w)
	p.err = errors.Join(p.err, err)
	return func() {}, true
}

// An eviction is a pass of the index (storage.Index.BeginPass): the
// commits removing its victims leave bbolt's freelist out, and once it
// is over the freelist is written.
func TestEvictIsAPassOfTheIndex(t *testing.T) {
	e := newEnv(t)
	seedThree(t, e)
	probe := &freelistProbe{path: e.m.Index.Path()}
	r, err := e.collector(lifecycle.Options{Guard: probe}).Evict(t.Context(), 1, 0, e.m.Clock.Now())
	if err != nil || r.ImagesEvicted != 3 {
		t.Fatalf("evict: %+v, %v", r, err)
	}
	if probe.err != nil {
		t.Fatal(probe.err)
	}
	if len(probe.written) == 0 || slices.Contains(probe.written, true) {
		t.Errorf("freelist written at the collection's claims: %v, want false after the victims' commits", probe.written)
	}
	if written, err := storage.FreelistWritten(e.m.Index.Path()); err != nil || !written {
		t.Errorf("the freelist written at the eviction's end: %v, %v", written, err)
	}
}

// On a store several replicas share, an eviction an admin asks for (the
// status page's button) reads every replica's records first, as every
// pass does: a layer the evicted image shares with an image another
// replica fetched since this one last read the records stays, and that
// replica serves its image whole with the upstream down.
func TestEvictImageKeepsWhatAnotherReplicaRecorded(t *testing.T) {
	up := fixture.StartUpstream(t)
	base := randomBytes(8 << 10)
	baseD := up.PushBlob(t, "library/x", base)
	up.PushBlob(t, "library/y", base)
	x := seedOnLayer(t, up, "library/x", "v1", baseD, len(base))
	y := seedOnLayer(t, up, "library/y", "v1", baseD, len(base))

	// Two replicas on one store, their records shared beside it.
	root := t.TempDir()
	records := storage.NewDriverRecords(inmemory.New())
	onShared := func(ix *storage.Index) (storage.Store, error) {
		ix.ShareRecords(records, nil)
		return storage.OpenDriverStore(context.Background(), "filesystem", map[string]any{"rootdirectory": root})
	}
	a := servertest.StartWithStore(t, up.URL(), onShared)
	b := servertest.StartWithStore(t, up.URL(), onShared)
	ea := &env{up: up, m: a, store: a.Store.(*storage.DriverStore)}
	eb := &env{up: up, m: b, store: b.Store.(*storage.DriverStore)}
	ea.pull(t, x)
	eb.pull(t, y)

	r, err := a.Server.Collector.EvictImage(t.Context(), "docker.io", "library/x", digest.Digest(x.digest))
	if err != nil {
		t.Fatal(err)
	}
	if r.ImagesEvicted != 1 {
		t.Fatalf("report %+v, want x evicted", r)
	}
	ea.wantStored(t, true, baseD)
	up.Stop()
	eb.wantPull(t, y)
}

// On a shared disk (a cluster's filesystem store, its records shared
// beside it), a pass between collections lists the store to learn whether
// it can be over max_size: a directory it cannot list (permission denied:
// restored as another user) failed every such pass, and evictions waited
// for the next collection. An incomplete listing cannot say the store is
// under the limit: the records are read, and the pass evicts.
func TestUnlistableDirectoryStopsNoEvictionOnSharedDisk(t *testing.T) {
	if os.Geteuid() == 0 {
		t.Skip("root lists any directory")
	}
	up := fixture.StartUpstream(t)
	root := t.TempDir()
	records := storage.NewDriverRecords(inmemory.New())
	m := servertest.StartWithStore(t, up.URL(), func(ix *storage.Index) (storage.Store, error) {
		ix.ShareRecords(records, nil)
		return storage.OpenDriverStore(context.Background(), "filesystem", map[string]any{"rootdirectory": root})
	})
	e := &env{up: up, m: m, store: m.Store.(*storage.DriverStore)}
	x := single("library/x", "v1", up.SeedImage(t, "library/x", "v1", 1, 8<<10))
	y := single("library/y", "v1", up.SeedImage(t, "library/y", "v1", 1, 8<<10))
	x.repo, y.repo = "x", "y"
	e.pull(t, x)
	e.pull(t, y)
	col := e.collector(lifecycle.Options{})
	policy := lifecycle.Policy{MaxSize: 1 << 40, CollectEvery: lifecycle.DefaultCollectEvery}
	if _, err := col.Pass(t.Context(), policy); err != nil { // the collection: the next is not due
		t.Fatal(err)
	}
	hex := strings.TrimPrefix(y.digest, "sha256:")
	dir := filepath.Join(root, "blobs", "sha256", hex[:2]) // y's manifest's prefix directory
	if err := os.Chmod(dir, 0o300); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Chmod(dir, 0o755) })

	policy.MaxSize = 1
	r, err := col.Pass(t.Context(), policy)
	if err != nil || r.ImagesEvicted == 0 {
		t.Fatalf("a pass over max_size beside a directory it cannot list: %v, %d images evicted; want images evicted", err, r.ImagesEvicted)
	}
}

// pulledMeanwhile is shared records in which another replica pulls an
// image (its manifest dgst, at at) once armed: what an eviction reads
// again of its victims' pull times (Get) sees the pull; what it read
// before (Walk) did not.
type pulledMeanwhile struct {
	storage.Records
	dgst atomic.Pointer[string]
	at   time.Time
}

func (r *pulledMeanwhile) Get(ctx context.Context, kind, key string) ([]byte, error) {
	if d := r.dgst.Load(); d != nil && kind == "access" && key == *d {
		return json.Marshal(r.at)
	}
	return r.Records.Get(ctx, kind, key)
}

// An eviction on a shared bucket that chose again, a victim pulled on
// another replica meanwhile, logs as evicted only the images it evicts:
// it logged the first choice's victims too, the image it spared said
// evicted in the log the operator reads to learn why an image went.
func TestReplannedEvictionLogsOnlyItsVictims(t *testing.T) {
	up := fixture.StartUpstream(t)
	root := t.TempDir()
	records := &pulledMeanwhile{Records: storage.NewDriverRecords(inmemory.New())}
	m := servertest.StartWithStore(t, up.URL(), func(ix *storage.Index) (storage.Store, error) {
		ix.ShareRecords(records, nil)
		return storage.OpenDriverStore(context.Background(), "filesystem", map[string]any{"rootdirectory": root})
	})
	e := &env{up: up, m: m, store: m.Store.(*storage.DriverStore)}
	b := single("library/b", "v1", up.SeedImage(t, "library/b", "v1", 2, 8<<10))
	c := single("library/c", "v1", up.SeedImage(t, "library/c", "v1", 2, 8<<10))
	b.repo, c.repo = "b", "c"
	for _, im := range []image{b, c} {
		e.pull(t, im)
		e.m.Clock.Advance(time.Hour)
	}
	// b, pulled first, is the victim of an eviction to below the size
	// held, until its pulls are read again.
	records.at = e.m.Clock.Now()
	records.dgst.Store(&b.digest)
	var logs bytes.Buffer
	col := e.collector(lifecycle.Options{Log: slog.New(slog.NewTextHandler(&logs, nil))})
	r, err := col.Evict(t.Context(), e.m.Index.StoredBytes()-1, 0, e.m.Clock.Now())
	if err != nil || r.ImagesEvicted != 1 || string(r.Evicted[0].Digest) != c.digest {
		t.Fatalf("evict: %+v, %v; want c evicted, b pulled meanwhile", r, err)
	}
	logged := false
	for _, line := range strings.Split(logs.String(), "\n") {
		if strings.Contains(line, "evicting cached image") && strings.Contains(line, b.digest) {
			t.Errorf("the image the eviction spared logged as evicted: %s", line)
		}
		logged = logged || strings.Contains(line, "evicting cached image") && strings.Contains(line, c.digest)
	}
	if !logged {
		t.Errorf("the image evicted not logged so:\n%s", logs.String())
	}
}

// onLog is a slog handler that calls at, once, on the first record whose
// message is msg: a hook at the moment an eviction logs its victim,
// after its last look at the pins and before it removes the victim's
// tags.
type onLog struct {
	msg  string
	at   func()
	once *sync.Once
}

func (h onLog) Enabled(context.Context, slog.Level) bool { return true }
func (h onLog) Handle(_ context.Context, r slog.Record) error {
	if r.Message == h.msg {
		h.once.Do(h.at)
	}
	return nil
}
func (h onLog) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h onLog) WithGroup(string) slog.Handler      { return h }

// A pin made while an eviction removes its victim (after the eviction's
// last look at the pins, before the victim's tags leave the index: a pin
// does not wait for a pass, and is answered as done) keeps the image
// whole: its tags and content stay, and it is served with the upstream
// down. The pin was lost: the image was evicted all the same (pinned by
// tag: its tag and content gone; by digest: its tag gone). Both an
// eviction over max_size and an admin's eviction of the image.
func TestPinDuringEvictionKeepsTheImage(t *testing.T) {
	evictions := map[string]struct {
		msg   string
		evict func(t *testing.T, col *lifecycle.Collector, e *env, b image) (lifecycle.Report, error)
	}{
		"max_size": {"evicting cached image", func(t *testing.T, col *lifecycle.Collector, e *env, _ image) (lifecycle.Report, error) {
			return col.Evict(t.Context(), 1, 0, e.m.Clock.Now())
		}},
		"request": {"evicting cached image on request", func(t *testing.T, col *lifecycle.Collector, _ *env, b image) (lifecycle.Report, error) {
			return col.EvictImage(t.Context(), "docker.io", "library/b", digest.Digest(b.digest))
		}},
	}
	pins := map[string]func(b image) string{
		"tag":    func(image) string { return storage.TagKey("docker.io", "library/b", "v1") },
		"digest": func(b image) string { return b.digest },
	}
	for name, ev := range evictions {
		for by, ref := range pins {
			t.Run(name+"/pinned by "+by, func(t *testing.T) {
				e := newEnv(t)
				_, b, _ := seedThree(t, e)
				pinned := false
				col := e.collector(lifecycle.Options{Log: slog.New(onLog{msg: ev.msg, once: &sync.Once{}, at: func() {
					if err := e.m.Index.Pin(t.Context(), ref(b), storage.PinRecord{PinnedAt: e.m.Clock.Now(), Reason: "admin"}); err != nil {
						t.Error(err)
					}
					pinned = true
				}})})
				r, err := ev.evict(t, col, e, b)
				if !pinned {
					t.Fatalf("no victim logged: %+v, %v", r, err)
				}
				if name == "request" && !errors.Is(err, lifecycle.ErrImagePinned) {
					t.Errorf("EvictImage = %v, want ErrImagePinned", err)
				} else if name != "request" && err != nil {
					t.Fatal(err)
				}
				for _, im := range r.Evicted {
					if im.Digest.String() == b.digest {
						t.Errorf("the image pinned during the eviction reported evicted: %+v", r)
					}
				}
				e.wantStored(t, true, b.content()...)
				e.up.Stop()
				e.wantPull(t, b)
			})
		}
	}
}

// An admin's eviction of an image (the status page's button, a POST
// behind a reverse proxy) whose request ends once it has begun (the
// proxy's read timeout cut the connection) is carried out whole: the
// image was left half evicted, its tags gone from the index and its
// content left in the store, the request answered as failed.
func TestEvictImageFinishesWhenItsRequestEnds(t *testing.T) {
	e := newEnv(t)
	_, b, _ := seedThree(t, e)
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	col := e.collector(lifecycle.Options{Log: slog.New(onLog{msg: "evicting cached image on request", once: &sync.Once{}, at: cancel})})
	r, err := col.EvictImage(ctx, "docker.io", "library/b", digest.Digest(b.digest))
	if ctx.Err() == nil {
		t.Fatalf("the eviction logged nothing: %+v, %v", r, err)
	}
	if err != nil || r.ImagesEvicted != 1 {
		t.Errorf("EvictImage = %+v, %v; want b evicted", r, err)
	}
	e.wantStored(t, false, b.content()...)
}

// hookedRelease is the proxy's content guard, running after, once, at
// the first release of dgst for which when is true.
type hookedRelease struct {
	*lifecycle.InUse
	dgst  digest.Digest
	when  func() bool
	after func()
	once  sync.Once
}

func (g *hookedRelease) Acquire(ctx context.Context, d digest.Digest) (func(), error) {
	release, err := g.InUse.Acquire(ctx, d)
	if err != nil || d != g.dgst {
		return release, err
	}
	return func() {
		release()
		if g.when() {
			g.once.Do(g.after)
		}
	}, nil
}

// A prefetch with "pin": true keeps its image out of eviction from the
// moment the image is recorded: a pass that ran when the copy had let go
// of the image and before the pin was recorded (the store over max_size
// with the image just written) evicted it, and the job said done and
// pinned, the image gone (its tag pin naming nothing).
func TestPrefetchPinnedImageNeverEvictable(t *testing.T) {
	up := fixture.StartUpstream(t)
	app := single("library/app", "v1", up.SeedImage(t, "library/app", "v1", 2, 8<<10))
	app.repo = "app"
	var col *lifecycle.Collector
	var m *servertest.Server
	evicted := make(chan lifecycle.Report, 1)
	guard := &hookedRelease{InUse: lifecycle.NewInUse(), dgst: digest.Digest(app.digest)}
	guard.when = func() bool {
		rec, ok, err := m.Index.Fill("docker.io", "library/app", digest.Digest(app.digest))
		return err == nil && ok && rec.State == storage.FillComplete
	}
	guard.after = func() {
		r, err := col.Evict(t.Context(), 1, 0, m.Clock.Now())
		if err != nil {
			t.Error(err)
		}
		evicted <- r
	}
	m = servertest.StartWithStore(t, up.URL(), openStore, proxy.WithContentGuard(guard))
	e := &env{up: up, m: m, store: m.Store.(*storage.DriverStore)}
	col = e.collector(lifecycle.Options{Guard: guard.InUse})

	job, err := m.Proxy.StartPrefetch(t.Context(), proxy.PrefetchRequest{Images: []string{"library/app:v1"}, Pin: true}, "test")
	if err != nil {
		t.Fatal(err)
	}
	m.WaitIdle()
	if job, err = m.Proxy.Job(job.ID); err != nil || job.State != storage.JobDone {
		t.Fatalf("job %+v, %v", job, err)
	}
	select {
	case r := <-evicted:
		if r.ImagesEvicted != 0 {
			t.Errorf("a pass as the prefetch let go of its pinned image evicted %+v", r.Evicted)
		}
	default:
		t.Fatal("no eviction ran once the prefetch had stored its image")
	}
	e.wantStored(t, true, app.content()...)

	// A prefetch that fails takes back the pin it made.
	if job, err = m.Proxy.StartPrefetch(t.Context(), proxy.PrefetchRequest{Images: []string{"library/nope:v1"}, Pin: true}, "test"); err != nil {
		t.Fatal(err)
	}
	m.WaitIdle()
	if job, err = m.Proxy.Job(job.ID); err != nil || job.State == storage.JobDone {
		t.Fatalf("job %+v, %v; want it failed", job, err)
	}
	pins, err := m.Index.Pins()
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := pins[storage.TagKey("docker.io", "library/nope", "v1")]; ok || len(pins) != 1 {
		t.Errorf("pins %v, want library/app:v1's alone", pins)
	}
	up.Stop()
	e.wantPull(t, app)
}

// A prefetch with "pin": true whose copy fails takes back only the pin it
// made: a pin recorded meanwhile by someone else (an admin pinning the
// image, a sync with pin) is theirs, and stays. The prefetch took back
// the pin whoever had recorded it since, and the image, pinned by the
// admin, was evictable.
func TestPrefetchFailingKeepsAPinMadeMeanwhile(t *testing.T) {
	up := fixture.StartUpstream(t)
	im := up.SeedImage(t, "library/app", "v1", 1, 64<<10)
	m := servertest.StartWithStore(t, up.URL(), openStore)
	layer := im.Layers[0]
	// Every answer of the layer is corrupt, so the copy fails; the first
	// is held until the other pin is recorded.
	up.SetFault(fixture.Fault{Method: http.MethodGet, Kind: fixture.KindBlob, PathContains: layer, Corrupt: true})
	gate := up.GateBlob(layer, 1<<10)
	ref := "library/app@" + im.Digest
	job, err := m.Proxy.StartPrefetch(t.Context(), proxy.PrefetchRequest{Images: []string{ref}, Pin: true}, "prefetch")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	select {
	case <-gate.Reached():
	case <-ctx.Done():
		t.Fatal("the prefetch never reached the layer")
	}
	pins, err := m.Index.Pins()
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := pins[im.Digest]; !ok {
		t.Fatalf("pins %v while the prefetch copies; want %s pinned before the copy", pins, im.Digest)
	}
	// The admin pins the image (POST /api/v1/actions/pin).
	if err := m.Index.Pin(t.Context(), im.Digest, storage.PinRecord{PinnedAt: m.Clock.Now(), Reason: "admin"}); err != nil {
		t.Fatal(err)
	}
	gate.Open()
	m.WaitIdle()
	if job, err = m.Proxy.Job(job.ID); err != nil || job.State != storage.JobFailed {
		t.Fatalf("job %+v, %v; want it failed", job, err)
	}
	if pins, err = m.Index.Pins(); err != nil {
		t.Fatal(err)
	}
	if rec, ok := pins[im.Digest]; !ok || rec.Reason != "admin" {
		t.Errorf("pins %v after the prefetch failed; want the admin's pin of %s kept", pins, im.Digest)
	}
}
