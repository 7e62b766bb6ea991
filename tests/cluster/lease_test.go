package cluster_test

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/docker-mirror/docker-mirror/lease"
	"github.com/docker-mirror/docker-mirror/lease/leasetest"
	"github.com/docker-mirror/docker-mirror/server"
	"github.com/docker-mirror/docker-mirror/tests/fixture"
	"github.com/docker-mirror/docker-mirror/tests/servertest"
)

// heldSignal wraps lease objects: a create of a blob's lease that another
// replica holds is reported on held (the replica now waits for it).
type heldSignal struct {
	lease.Objects
	held chan string
}

func (h heldSignal) Create(ctx context.Context, key string, body []byte) (string, error) {
	etag, err := h.Objects.Create(ctx, key, body)
	if errors.Is(err, lease.ErrExists) && !strings.Contains(key, "/probe/") {
		select {
		case h.held <- key:
		default:
		}
	}
	return etag, err
}

// selfOnly configures each replica with itself as its only peer: each
// thinks it owns every key, the worst disagreement on membership.
func selfOnly(i int, urls []string) (string, []string) { return urls[i], []string{urls[i]} }

// TestLeasesHerdOnReplicasThatDisagree: two replicas that each think they
// own every key, on a store with conditional writes (an in-process fake
// S3 for the leases), serve a 16-client herd and their background
// mirroring while the largest layer is held at the upstream until one
// replica waits on the other's lease: each blob leaves the upstream once.
func TestLeasesHerdOnReplicasThatDisagree(t *testing.T) {
	s3 := leasetest.Start(t, true)
	testLeasesHerd(t, sharedDir, func(map[string]map[string]any) lease.Objects { return s3.Objects("leases") })
	if keys := s3.Keys(); len(keys) != 0 {
		t.Errorf("leases left after every fetch ended: %v", keys)
	}
}

// testLeasesHerd runs the herd on two replicas that each think they own
// every key, on the store store makes, with the leases in objects(the
// store's configuration).
func testLeasesHerd(t *testing.T, store storeFor, objects func(map[string]map[string]any) lease.Objects) {
	up := fixture.StartUpstream(t)
	img := up.SeedMultiArch(t, "library/herd", "v1", fixture.OCI, fixture.WithLayerSize(512<<10), fixture.WithLayers(2))
	storage := store(t)
	objs := objects(storage)
	held := make(chan string, 1)
	rs := startClusterWith(t, 2, up, func(*testing.T) map[string]map[string]any { return storage }, selfOnly, func(int) []server.Option {
		return []server.Option{server.WithLeaseObjects(heldSignal{objs, held})}
	})
	amd := img.Platforms["linux/amd64"]
	big := amd.Layers[len(amd.Layers)-1]
	gate := up.GateBlob(big, 64<<10)

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	const clients = 16
	errs := make(chan error, clients)
	for i := range clients {
		go func() { errs <- pull(ctx, rs[i%len(rs)].url, "library/herd", "v1", "linux/amd64", big, nil) }()
	}
	select {
	case <-gate.Reached():
	case <-ctx.Done():
		t.Fatal("the held layer was never asked of the upstream")
	}
	// Both replicas want the layer (each has clients pulling it); the one
	// not fetching it waits on the fetcher's lease.
	for key := ""; !strings.HasSuffix(key, strings.TrimPrefix(big, "sha256:")); {
		select {
		case key = <-held:
		case <-ctx.Done():
			t.Fatal("no replica waited on another's lease of the held layer")
		}
	}
	gate.Open()
	for range clients {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
	for _, r := range rs {
		r.waitIdle(t)
	}
	for _, p := range []string{"linux/amd64", "linux/arm64", "linux/arm/v7"} {
		for _, b := range img.BlobsFor(p) {
			if n := blobGets(up, b); n != 1 {
				t.Errorf("%s blob %s: %d upstream GETs, want 1", p, b, n)
			}
		}
	}
	for _, r := range rs {
		if v := r.metric(t, "docker_mirror_cluster_leases_supported", nil); v != 1 {
			t.Errorf("%s: docker_mirror_cluster_leases_supported %v, want 1", r.url, v)
		}
	}
}

// TestWithoutConditionalWrites: on a store that ignores conditional
// writes, the probe says so (the gauge is 0), no lease is taken, and
// replicas fetch as they do without leases.
func TestWithoutConditionalWrites(t *testing.T) {
	up := fixture.StartUpstream(t)
	blob := pushRandomBlob(t, up, "library/plain", 64<<10)
	s3 := leasetest.Start(t, false)
	rs := startClusterWith(t, 2, up, sharedDir, nil, func(int) []server.Option {
		return []server.Option{server.WithLeaseObjects(s3.Objects("leases"))}
	})
	for _, r := range rs {
		wantBlob(t, r.url, "library/plain", blob)
		if v := r.metric(t, "docker_mirror_cluster_leases_supported", nil); v != 0 {
			t.Errorf("%s: docker_mirror_cluster_leases_supported %v, want 0", r.url, v)
		}
		if v := r.metric(t, "docker_mirror_cluster_leases_total", nil); v != 0 {
			t.Errorf("%s: %v lease attempts without conditional writes, want 0", r.url, v)
		}
	}
	if n := blobGets(up, blob); n != 1 {
		t.Errorf("blob fetched %d times upstream, want 1 (through its owner)", n)
	}
	if keys := s3.Keys(); len(keys) != 0 {
		t.Errorf("objects left: %v", keys)
	}
}

// TestDeadLeaseHolderTakenOver: a replica that died while holding the
// lease of a blob (its lease object stays) keeps the others waiting until
// the lease expires, then one takes it over and fetches the blob.
func TestDeadLeaseHolderTakenOver(t *testing.T) {
	up := fixture.StartUpstream(t)
	blob := pushRandomBlob(t, up, "library/dead", 128<<10)
	s3 := leasetest.Start(t, true)
	clock := servertest.NewClock()
	held := make(chan string, 1)
	rs := startClusterWith(t, 2, up, sharedDir, selfOnly, func(int) []server.Option {
		return []server.Option{server.WithClock(clock.Now), server.WithLeaseObjects(heldSignal{s3.Objects("leases"), held})}
	})
	putLease(t, s3, blob, "http://127.0.0.1:1", clock.Now().Add(lease.DefaultTTL))

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	done := getAsync(ctx, rs[0].url+"/v2/library/dead/blobs/"+blob)
	// Found twice: the first look is done, and the lease's age counts
	// from it, by the replica's clock.
	for range 2 {
		select {
		case <-held:
		case <-ctx.Done():
			t.Fatal("the replica did not find the dead replica's lease")
		}
	}
	if n := blobGets(up, blob); n != 0 {
		t.Fatalf("blob fetched %d times while another replica's lease was live, want 0", n)
	}
	clock.Advance(lease.DefaultTTL + time.Second)
	a := <-done
	if a.err != nil || a.status != http.StatusOK || sha(a.body) != blob {
		t.Fatalf("blob after the lease expired: status %d, err %v, digest %s", a.status, a.err, sha(a.body))
	}
	if n := blobGets(up, blob); n != 1 {
		t.Errorf("blob fetched %d times upstream, want 1", n)
	}
	if v := rs[0].metric(t, "docker_mirror_cluster_leases_total", map[string]string{"result": "took_over"}); v != 1 {
		t.Errorf("leases taken over: %v, want 1", v)
	}
	rs[0].waitIdle(t)
	if keys := s3.Keys(); len(keys) != 0 {
		t.Errorf("leases left after the fetch ended: %v", keys)
	}
}

// TestFailedHolderReleasesLease: a replica whose fetch fails (its only
// client left) releases its lease, and the replica waiting on it takes
// the lease and fetches the blob at once, not after the lease's expiry.
func TestFailedHolderReleasesLease(t *testing.T) {
	up := fixture.StartUpstream(t)
	blob := pushRandomBlob(t, up, "library/fail", 128<<10)
	s3 := leasetest.Start(t, true)
	held := make(chan string, 1)
	rs := startClusterWith(t, 2, up, sharedDir, selfOnly, func(int) []server.Option {
		return []server.Option{server.WithLeaseObjects(heldSignal{s3.Objects("leases"), held})}
	})
	gate := up.GateBlob(blob, 16<<10)
	defer gate.Open()

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	ctxA, cancelA := context.WithCancel(ctx)
	go func() { _, _, _, _ = get(ctxA, rs[0].url+"/v2/library/fail/blobs/"+blob, nil) }()
	select {
	case <-gate.Reached():
	case <-ctx.Done():
		t.Fatal("the first replica never asked the upstream")
	}
	done := getAsync(ctx, rs[1].url+"/v2/library/fail/blobs/"+blob)
	select {
	case <-held:
	case <-ctx.Done():
		t.Fatal("the second replica did not wait on the first one's lease")
	}
	cancelA() // the holder's only client leaves: its fetch is cancelled
	a := <-done
	if a.err != nil || a.status != http.StatusOK || sha(a.body) != blob {
		t.Fatalf("blob after the holder failed: status %d, err %v, digest %s", a.status, a.err, sha(a.body))
	}
	if v := rs[1].metric(t, "docker_mirror_cluster_leases_total", map[string]string{"result": "taken"}); v != 1 {
		t.Errorf("second replica took %v leases, want 1 (released, not expired)", v)
	}
	if v := rs[1].metric(t, "docker_mirror_cluster_leases_total", map[string]string{"result": "took_over"}); v != 0 {
		t.Errorf("second replica took over %v leases, want 0", v)
	}
	gate.Open()
	for _, r := range rs {
		r.waitIdle(t)
	}
	if keys := s3.Keys(); len(keys) != 0 {
		t.Errorf("leases left after every fetch ended: %v", keys)
	}
}

// pushRandomBlob pushes size random bytes to repo upstream and returns
// their digest.
func pushRandomBlob(t *testing.T, up *fixture.Upstream, repo string, size int) string {
	t.Helper()
	data := make([]byte, size)
	rand.Read(data)
	return up.PushBlob(t, repo, data)
}

// TestRestartedHolderLeavesNoLease: a replica killed while it held the
// lease of a blob, and started again at its address before the others'
// probes saw it down (a container restarted in place: killed for its
// memory, or by its liveness probe), leaves no lease for the others to
// wait out: the lease of its former run was live for them (its holder
// up), and the owner's clients waited for its whole expiry (2 minutes)
// for a blob nobody fetched.
func TestRestartedHolderLeavesNoLease(t *testing.T) {
	up := fixture.StartUpstream(t)
	s3 := leasetest.Start(t, true)
	held := make(chan string, 1)
	rs := startClusterWith(t, 2, up, sharedDir, nil, func(int) []server.Option {
		return []server.Option{server.WithLeaseObjects(heldSignal{s3.Objects("leases"), held})}
	})
	restarted, waiter := rs[0], rs[1]
	blob := pushRandomBlob(t, up, "library/restart", 64<<10)
	for owner(rs, blob) != waiter {
		blob = pushRandomBlob(t, up, "library/restart", 64<<10)
	}
	// The lease its former run held when it was killed.
	putLease(t, s3, blob, restarted.url, time.Now().Add(lease.DefaultTTL))
	restarted.restart(t)

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	done := getAsync(ctx, waiter.url+"/v2/library/restart/blobs/"+blob)
	select {
	case key := <-held:
		cancel()
		<-done
		t.Fatalf("the owner waited on lease %s of a replica's former run, the replica up again since", key)
	case a := <-done:
		if a.err != nil || a.status != http.StatusOK || sha(a.body) != blob {
			t.Fatalf("blob: status %d, err %v, digest %s", a.status, a.err, sha(a.body))
		}
	}
	if n := blobGets(up, blob); n != 1 {
		t.Errorf("blob fetched %d times upstream, want 1", n)
	}
}

// unreachableObjects are lease objects that fail every request while
// down is set: the bucket unreachable (S3 down, a network partition).
type unreachableObjects struct {
	lease.Objects
	down *atomic.Bool
}

var errUnreachable = errors.New("dial tcp: connect: connection refused")

func (u unreachableObjects) Create(ctx context.Context, key string, body []byte) (string, error) {
	if u.down.Load() {
		return "", errUnreachable
	}
	return u.Objects.Create(ctx, key, body)
}

func (u unreachableObjects) Replace(ctx context.Context, key, etag string, body []byte) (string, error) {
	if u.down.Load() {
		return "", errUnreachable
	}
	return u.Objects.Replace(ctx, key, etag, body)
}

func (u unreachableObjects) Get(ctx context.Context, key string) ([]byte, string, error) {
	if u.down.Load() {
		return nil, "", errUnreachable
	}
	return u.Objects.Get(ctx, key)
}

func (u unreachableObjects) Delete(ctx context.Context, key string) error {
	if u.down.Load() {
		return errUnreachable
	}
	return u.Objects.Delete(ctx, key)
}

func (u unreachableObjects) DeleteIf(ctx context.Context, key, etag string) error {
	if u.down.Load() {
		return errUnreachable
	}
	return u.Objects.DeleteIf(ctx, key, etag)
}

func (u unreachableObjects) List(ctx context.Context, prefix string) ([]string, error) {
	if u.down.Load() {
		return nil, errUnreachable
	}
	return u.Objects.List(ctx, prefix)
}

// TestLeasesAfterBucketUnreachableAtStart: replicas started while the
// bucket could not be reached (the check of conditional writes failed)
// take leases once it is back. They ran without leases until restarted,
// for days maybe: every membership change in the middle of a fill a
// duplicate upstream fetch, the gauge saying 0 on a store that has them.
func TestLeasesAfterBucketUnreachableAtStart(t *testing.T) {
	up := fixture.StartUpstream(t)
	s3 := leasetest.Start(t, true)
	var down atomic.Bool
	down.Store(true)
	rs := startClusterWith(t, 2, up, sharedDir, selfOnly, func(int) []server.Option {
		return []server.Option{server.WithLeaseObjects(unreachableObjects{s3.Objects("leases"), &down})}
	})
	down.Store(false)
	// A blob of its own for each replica: one the other stored already
	// would be a hit there, fetched with no lease to take.
	for i, r := range rs {
		// The first fetch probes the bucket again, in the background
		// (TestLateLeaseProbeNotWaitedForByAFetch), without a lease.
		wantBlob(t, r.url, "library/late", pushRandomBlob(t, up, "library/late", 64<<10))
		r.waitIdle(t) // the probe ended
		blob := pushRandomBlob(t, up, "library/late", 64<<10)
		wantBlob(t, r.url, "library/late", blob)
		r.waitIdle(t) // its download stored, its lease released
		if v := r.metric(t, "docker_mirror_cluster_leases_supported", nil); v != 1 {
			t.Errorf("replica %d: docker_mirror_cluster_leases_supported %v once the bucket is back, want 1", i, v)
		}
		if n := r.metric(t, "docker_mirror_cluster_leases_total", map[string]string{"result": "taken"}); n != 1 {
			t.Errorf("replica %d fetched its blob with %v leases taken, want 1", i, n)
		}
		if n := blobGets(up, blob); n != 1 {
			t.Errorf("replica %d's blob fetched %d times upstream, want 1", i, n)
		}
	}
	if keys := s3.Keys(); len(keys) != 0 {
		t.Errorf("objects left: %v", keys)
	}
}

// blobAnswer is the answer to a blob GET made in the background.
type blobAnswer struct {
	status int
	body   []byte
	err    error
}

// getAsync GETs url in the background; its answer comes on the channel.
func getAsync(ctx context.Context, url string) <-chan blobAnswer {
	done := make(chan blobAnswer, 1)
	go func() {
		st, _, body, err := get(ctx, url, nil)
		done <- blobAnswer{st, body, err}
	}()
	return done
}

// putLease writes the lease of fetching blob into the bucket, as holder
// would have taken it, valid until until.
func putLease(t *testing.T, s3 *leasetest.Server, blob, holder string, until time.Time) {
	t.Helper()
	rec, err := json.Marshal(map[string]any{"holder": holder, "until": until})
	if err != nil {
		t.Fatal(err)
	}
	s3.Put("leases", "records/leases/"+strings.Replace(blob, ":", "/", 1), rec)
}

// probeHeld wraps lease objects: while hold is set, the probe of
// conditional writes hangs at its first create, reported on reached,
// until release is closed (a bucket that hangs); gaveUp is set if the
// probe gave up meanwhile (its context ended).
type probeHeld struct {
	lease.Objects
	hold    *atomic.Bool
	gaveUp  *atomic.Bool
	reached chan struct{}
	release chan struct{}
}

func (p probeHeld) Create(ctx context.Context, key string, body []byte) (string, error) {
	if p.hold.Load() && strings.Contains(key, "/probe/") {
		select {
		case p.reached <- struct{}{}:
		default:
		}
		select {
		case <-p.release:
		case <-ctx.Done():
			p.gaveUp.Store(true)
			return "", ctx.Err()
		}
	}
	return p.Objects.Create(ctx, key, body)
}

// TestLateLeaseProbeNotWaitedForByAFetch: a replica started while the
// bucket was unreachable probes conditional writes again at a blob fetch;
// a client's blob does not wait for that probe. It ran inside the
// client's download, which waited for it up to 30 seconds when the
// bucket hung. Once the probe tells, fetches take leases.
func TestLateLeaseProbeNotWaitedForByAFetch(t *testing.T) {
	up := fixture.StartUpstream(t)
	s3 := leasetest.Start(t, true)
	var down, hold, gaveUp atomic.Bool
	down.Store(true)
	held := probeHeld{hold: &hold, gaveUp: &gaveUp, reached: make(chan struct{}, 1), release: make(chan struct{})}
	rs := startClusterWith(t, 1, up, sharedDir, selfOnly, func(int) []server.Option {
		held.Objects = unreachableObjects{s3.Objects("leases"), &down}
		return []server.Option{server.WithLeaseObjects(held)}
	})
	r := rs[0]
	down.Store(false)
	hold.Store(true)

	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	first := pushRandomBlob(t, up, "library/late", 64<<10)
	answered := getAsync(ctx, r.url+"/v2/library/late/blobs/"+first)
	select {
	case <-held.reached:
	case <-ctx.Done():
		t.Fatal("the fetch probed nothing")
	}
	select {
	case a := <-answered:
		if a.err != nil || a.status != http.StatusOK || sha(a.body) != first {
			t.Errorf("blob while the probe hangs: status %d, err %v", a.status, a.err)
		}
		if gaveUp.Load() {
			t.Error("the client's blob came once the probe of conditional writes, held at the bucket, gave up (its 30 s): the fetch waited for it")
		}
	case <-ctx.Done():
		close(held.release)
		<-answered
		t.Fatal("the client's blob waited for the probe of conditional writes, held at the bucket")
	}
	close(held.release)
	r.waitIdle(t) // the probe ended

	second := pushRandomBlob(t, up, "library/late", 64<<10)
	wantBlob(t, r.url, "library/late", second)
	r.waitIdle(t)
	if v := r.metric(t, "docker_mirror_cluster_leases_supported", nil); v != 1 {
		t.Errorf("docker_mirror_cluster_leases_supported %v once the probe told, want 1", v)
	}
	if n := r.metric(t, "docker_mirror_cluster_leases_total", map[string]string{"result": "taken"}); n != 1 {
		t.Errorf("%v leases taken, want 1: the second blob's", n)
	}
}
