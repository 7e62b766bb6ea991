package lease_test

import (
	"context"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/docker-mirror/docker-mirror/lease"
	"github.com/docker-mirror/docker-mirror/lease/leasetest"
	"github.com/docker-mirror/docker-mirror/storage/s3test"
)

func TestProbe(t *testing.T) {
	ctx := context.Background()
	for _, conditional := range []bool{true, false} {
		srv := leasetest.Start(t, conditional)
		ok, err := lease.Probe(ctx, srv.Objects("b"), "records/leases/probe")
		if err != nil || ok != conditional {
			t.Errorf("conditional server %v: probe = %v, %v", conditional, ok, err)
		}
		if keys := srv.Keys(); len(keys) != 0 {
			t.Errorf("probe left %v", keys)
		}
	}
}

// An S3-compatible server behind a certificate the system does not trust
// (a MinIO with a self-signed one), which the storage reaches with the s3
// driver's skipverify: the leases reach it too. They did not (the probe
// failed on the certificate), and the cluster ran without leases.
func TestProbeSkipVerify(t *testing.T) {
	srv := leasetest.Start(t, true)
	front := httptest.NewTLSServer(srv)
	t.Cleanup(front.Close)
	objs, err := lease.NewS3(map[string]any{
		"accesskey": "test", "secretkey": "test", "region": "us-east-1", "bucket": "b",
		"regionendpoint": front.URL, "forcepathstyle": true, "skipverify": true,
	})
	if err != nil {
		t.Fatal(err)
	}
	if ok, err := lease.Probe(context.Background(), objs, "records/leases/probe"); err != nil || !ok {
		t.Fatalf("probe with skipverify = %v, %v; want conditional writes found", ok, err)
	}
}

// TestProbeVersitygw tells whether the real S3 server the e2e suite runs
// honours If-None-Match on PUT.
func TestProbeVersitygw(t *testing.T) {
	srv := s3test.Start(t)
	bucket := srv.NewBucket(t)
	objs, err := lease.NewS3(srv.Params(bucket))
	if err != nil {
		t.Fatal(err)
	}
	ok, err := lease.Probe(context.Background(), objs, "records/leases/probe")
	if err != nil {
		t.Fatal(err)
	}
	if !ok {
		t.Fatal("versitygw v1.8.0 honours If-None-Match and If-Match on PUT; the probe says it does not")
	}
	if keys := srv.Keys(t, bucket); len(keys) != 0 {
		t.Errorf("probe left %v", keys)
	}
}

// fakeClock is a clock tests move by hand.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *fakeClock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

func TestOneHolderThenTakeOver(t *testing.T) {
	srv := leasetest.Start(t, true)
	testTakeOver(t, srv.Objects("b"), func() int { return len(srv.Keys()) })
}

// TestTakeOverVersitygw runs the same on the real S3 server: If-Match on
// PUT must be honoured too for a takeover to be safe.
func TestTakeOverVersitygw(t *testing.T) {
	srv := s3test.Start(t)
	bucket := srv.NewBucket(t)
	objs, err := lease.NewS3(srv.Params(bucket))
	if err != nil {
		t.Fatal(err)
	}
	testTakeOver(t, objs, func() int { return len(srv.Keys(t, bucket)) })
}

func testTakeOver(t *testing.T, objs lease.Objects, count func() int) {
	ctx := context.Background()
	clock := &fakeClock{now: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	a := lease.New(objs, "http://a", lease.WithClock(clock.Now))
	b := lease.New(objs, "http://b", lease.WithClock(clock.Now))

	ha, _, _, err := a.Take(ctx, "sha256:x")
	if err != nil || ha == nil {
		t.Fatalf("a: %v, %v", ha, err)
	}
	hb, holder, until, err := b.Take(ctx, "sha256:x")
	if err != nil || hb != nil || holder != "http://a" || !until.Equal(clock.Now().Add(lease.DefaultTTL)) {
		t.Fatalf("b while a holds it: %v %q %v %v", hb, holder, until, err)
	}
	// a dies: its lease expires and b takes it over; a's late release
	// does not delete b's lease.
	clock.Add(lease.DefaultTTL + time.Second)
	hb, _, _, err = b.Take(ctx, "sha256:x")
	if err != nil || hb == nil {
		t.Fatalf("b after expiry: %v, %v", hb, err)
	}
	ha.Release()
	raw, _, err := objs.Get(ctx, "records/leases/sha256/x")
	if err != nil {
		t.Fatalf("b's lease gone after a's release: %v", err)
	}
	var rec struct{ Holder string }
	if json.Unmarshal(raw, &rec); rec.Holder != "http://b" {
		t.Fatalf("lease holder %q, want http://b", rec.Holder)
	}
	hb.Release()
	if n := count(); n != 0 {
		t.Fatalf("released lease left %d objects", n)
	}
	// Released: the next taker gets it at once.
	if h, _, _, err := a.Take(ctx, "sha256:x"); err != nil || h == nil {
		t.Fatalf("a after release: %v, %v", h, err)
	}
}

// TestHolderDownTakenOverAtOnce: the lease of a holder the cluster marked
// down is taken over before it expires.
func TestHolderDownTakenOverAtOnce(t *testing.T) {
	ctx := context.Background()
	srv := leasetest.Start(t, true)
	clock := &fakeClock{now: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	down := map[string]bool{}
	var mu sync.Mutex
	isDown := func(h string) bool { mu.Lock(); defer mu.Unlock(); return down[h] }
	a := lease.New(srv.Objects("b"), "http://a", lease.WithClock(clock.Now))
	b := lease.New(srv.Objects("b"), "http://b", lease.WithClock(clock.Now), lease.WithHolderDown(isDown))
	if h, _, _, err := a.Take(ctx, "sha256:y"); err != nil || h == nil {
		t.Fatalf("a: %v, %v", h, err)
	}
	if h, holder, _, err := b.Take(ctx, "sha256:y"); err != nil || h != nil || holder != "http://a" {
		t.Fatalf("b while a is up: %v %q %v", h, holder, err)
	}
	mu.Lock()
	down["http://a"] = true
	mu.Unlock()
	h, _, _, err := b.Take(ctx, "sha256:y")
	if err != nil || h == nil {
		t.Fatalf("b once a is down: %v, %v", h, err)
	}
	h.Release()
}

// TestSkewedClocksKeepALiveLease: replicas whose clocks are minutes apart
// (one ahead of the holder, one behind it) do not take a live lease over
// at once, fetching the blob a second time: a lease's age is told by the
// taker's own clock, from when it first saw the lease as it is. Once its
// holder stops renewing it, it is taken over a TTL later.
func TestSkewedClocksKeepALiveLease(t *testing.T) {
	ctx := context.Background()
	srv := leasetest.Start(t, true)
	clock := &fakeClock{now: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	skewed := func(d time.Duration) func() time.Time { return func() time.Time { return clock.Now().Add(d) } }
	a := lease.New(srv.Objects("b"), "http://a", lease.WithClock(clock.Now))
	ahead := lease.New(srv.Objects("b"), "http://ahead", lease.WithClock(skewed(5*time.Minute)))
	behind := lease.New(srv.Objects("b"), "http://behind", lease.WithClock(skewed(-5*time.Minute)))
	ha, _, _, err := a.Take(ctx, "sha256:z")
	if err != nil || ha == nil {
		t.Fatalf("a: %v, %v", ha, err)
	}
	defer ha.Release()
	for _, l := range []*lease.Leases{ahead, behind} {
		if h, holder, _, err := l.Take(ctx, "sha256:z"); err != nil || h != nil || holder != "http://a" {
			t.Fatalf("a replica whose clock is off by 5 minutes, while a holds the lease: %v %q %v; want it held by a", h, holder, err)
		}
	}
	// a dies (its lease is no longer renewed): a TTL later, it is taken over.
	clock.Add(lease.DefaultTTL + time.Second)
	h, _, _, err := ahead.Take(ctx, "sha256:z")
	if err != nil || h == nil {
		t.Fatalf("after a TTL unrenewed: %v, %v; want it taken over", h, err)
	}
	h.Release()
}

// TestLongDeadLeaseTakenOverAtOnce: a lease whose holder's expiry is long
// past (a replica gone in a rolling update, its address unknown to the
// replicas started since) is taken over at once by a replica that never
// saw it before, not waited out for a TTL more: its clients would wait
// minutes for a blob nobody fetches.
func TestLongDeadLeaseTakenOverAtOnce(t *testing.T) {
	ctx := context.Background()
	srv := leasetest.Start(t, true)
	clock := &fakeClock{now: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	gone := lease.New(srv.Objects("b"), "http://gone", lease.WithClock(clock.Now))
	hg, _, _, err := gone.Take(ctx, "sha256:w")
	if err != nil || hg == nil {
		t.Fatalf("gone: %v, %v", hg, err)
	}
	defer hg.Release()
	clock.Add(time.Hour)
	fresh := lease.New(srv.Objects("b"), "http://fresh", lease.WithClock(clock.Now))
	h, holder, _, err := fresh.Take(ctx, "sha256:w")
	if err != nil || h == nil {
		t.Fatalf("a lease expired an hour ago, seen first: %v %q %v; want it taken over at once", h, holder, err)
	}
	h.Release()
}

// TestUnrenewedLeaseNotForgotten: a lease seen unrenewed, looked at again
// after a pause (its waiting client gave up, and another pulled the blob
// later) while the replica looked at other leases, is taken over: it has
// been unrenewed for more than a TTL by this replica's clock. Its first
// sighting was forgotten after two TTLs, and the lease waited out for a
// TTL more, as if just written.
func TestUnrenewedLeaseNotForgotten(t *testing.T) {
	ctx := context.Background()
	srv := leasetest.Start(t, true)
	clock := &fakeClock{now: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	a := lease.New(srv.Objects("b"), "http://a", lease.WithClock(clock.Now))
	b := lease.New(srv.Objects("b"), "http://b", lease.WithClock(clock.Now))
	for _, name := range []string{"sha256:v", "sha256:other"} {
		ha, _, _, err := a.Take(ctx, name)
		if err != nil || ha == nil {
			t.Fatalf("a, %s: %v, %v", name, ha, err)
		}
		defer ha.Release()
	}
	if h, holder, _, err := b.Take(ctx, "sha256:v"); err != nil || h != nil || holder != "http://a" {
		t.Fatalf("b while a holds it: %v %q %v", h, holder, err)
	}
	// a dies; b looks at a's other lease, then at the first again.
	clock.Add(2*lease.DefaultTTL + time.Second)
	if _, _, _, err := b.Take(ctx, "sha256:other"); err != nil {
		t.Fatal(err)
	}
	h, holder, until, err := b.Take(ctx, "sha256:v")
	if err != nil || h == nil {
		t.Fatalf("a lease unrenewed for two TTLs by b's clock: %v %q until %v, %v; want it taken over", h, holder, until, err)
	}
	h.Release()
}

func TestDropLeftovers(t *testing.T) {
	srv := leasetest.Start(t, true)
	testDropLeftovers(t, srv.Objects("b"))
}

// TestDropLeftoversVersitygw runs the same on the real S3 server: its
// listing of the leases is the one a replica reads at start.
func TestDropLeftoversVersitygw(t *testing.T) {
	srv := s3test.Start(t)
	objs, err := lease.NewS3(srv.Params(srv.NewBucket(t)))
	if err != nil {
		t.Fatal(err)
	}
	testDropLeftovers(t, objs)
}

// testDropLeftovers: a replica started again drops the leases its former
// run held (killed, it never released them), and those of replicas long
// dead (killed, never started again under their name: in Kubernetes, a
// pod's new address), which nothing else removes; no live one.
func testDropLeftovers(t *testing.T, objs lease.Objects) {
	ctx := context.Background()
	clock := &fakeClock{now: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	gone := lease.New(objs, "http://gone", lease.WithClock(clock.Now))
	hg, _, _, err := gone.Take(ctx, "sha256:0")
	if err != nil || hg == nil {
		t.Fatalf("gone: %v, %v", hg, err)
	}
	defer hg.Release()
	clock.Add(time.Hour)
	former := lease.New(objs, "http://a", lease.WithClock(clock.Now))
	other := lease.New(objs, "http://b", lease.WithClock(clock.Now))
	for _, name := range []string{"sha256:1", "sha256:2"} {
		h, _, _, err := former.Take(ctx, name)
		if err != nil || h == nil {
			t.Fatalf("a, %s: %v, %v", name, h, err)
		}
		defer h.Release() // ends its renewal: the lease is gone by then
	}
	hb, _, _, err := other.Take(ctx, "sha256:3")
	if err != nil || hb == nil {
		t.Fatalf("b: %v, %v", hb, err)
	}
	defer hb.Release()
	// a is killed (its leases are never released) and started again.
	again := lease.New(objs, "http://a", lease.WithClock(clock.Now))
	if err := again.DropLeftovers(ctx); err != nil {
		t.Fatal(err)
	}
	if keys, err := objs.List(ctx, "records/leases/"); err != nil || len(keys) != 1 || keys[0] != "records/leases/sha256/3" {
		t.Fatalf("leases after a's start: %v, %v; want b's live one only", keys, err)
	}
}

// releasedAfterRead are lease objects whose first read of a lease is
// followed at once by its release: its holder (a replica that took an
// expired lease over, fetched the blob and stored it) deleted it between
// another's read of it and that one's takeover.
type releasedAfterRead struct {
	lease.Objects
	once sync.Once
}

func (r *releasedAfterRead) Get(ctx context.Context, key string) ([]byte, string, error) {
	raw, etag, err := r.Objects.Get(ctx, key)
	r.once.Do(func() { _ = r.Objects.Delete(ctx, key) })
	return raw, etag, err
}

func TestTakeOverOfALeaseReleasedMeanwhile(t *testing.T) {
	srv := leasetest.Start(t, true)
	testTakeOverReleasedMeanwhile(t, srv.Objects("b"))
}

// TestTakeOverOfALeaseReleasedMeanwhileVersitygw runs the same on the
// real S3 server, which answers a conditional write (If-Match) of a key
// that is gone 404 NoSuchKey, as AWS S3 does, not 412.
func TestTakeOverOfALeaseReleasedMeanwhileVersitygw(t *testing.T) {
	srv := s3test.Start(t)
	objs, err := lease.NewS3(srv.Params(srv.NewBucket(t)))
	if err != nil {
		t.Fatal(err)
	}
	testTakeOverReleasedMeanwhile(t, objs)
}

// testTakeOverReleasedMeanwhile: a replica taking over an expired lease
// that is released between its read and its takeover (another took it
// over first, and was done) takes the lease as a new one: it failed as if
// the store were unreachable, and the replica fetched the blob without a
// lease, beside another replica that took it.
func testTakeOverReleasedMeanwhile(t *testing.T, objs lease.Objects) {
	ctx := context.Background()
	clock := &fakeClock{now: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	dead := lease.New(objs, "http://dead", lease.WithClock(clock.Now))
	hd, _, _, err := dead.Take(ctx, "sha256:r")
	if err != nil || hd == nil {
		t.Fatalf("dead: %v, %v", hd, err)
	}
	defer hd.Release()
	clock.Add(time.Hour) // long expired
	b := lease.New(&releasedAfterRead{Objects: objs}, "http://b", lease.WithClock(clock.Now))
	h, holder, _, err := b.Take(ctx, "sha256:r")
	if err != nil || h == nil {
		t.Fatalf("a lease released while it was taken over: %v %q %v; want it taken", h, holder, err)
	}
	h.Release()
}

// A lease the start cannot read (an error of the store for that object
// alone) does not keep the start from removing the others: the removal
// stopped at the first such error, and the leases of this replica's
// former run listed after it stayed live for the others, who waited out
// their expiry (2 minutes) for blobs nobody fetched.
func TestDropLeftoversPastALeaseItCannotRead(t *testing.T) {
	srv := leasetest.Start(t, true)
	objs := srv.Objects("b")
	ctx := context.Background()
	other := lease.New(objs, "http://b")
	hb, _, _, err := other.Take(ctx, "sha256:0")
	if err != nil || hb == nil {
		t.Fatalf("b: %v, %v", hb, err)
	}
	defer hb.Release()
	former := lease.New(objs, "http://a")
	for _, name := range []string{"sha256:1", "sha256:2"} {
		h, _, _, err := former.Take(ctx, name)
		if err != nil || h == nil {
			t.Fatalf("a, %s: %v, %v", name, h, err)
		}
		defer h.Release()
	}
	// The store refuses the read of b's lease, listed first.
	front := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet && strings.HasSuffix(r.URL.Path, "/records/leases/sha256/0") {
			w.Header().Set("Content-Type", "application/xml")
			w.WriteHeader(http.StatusForbidden)
			fmt.Fprint(w, "<Error><Code>AccessDenied</Code><Message>Access Denied</Message></Error>")
			return
		}
		srv.ServeHTTP(w, r)
	}))
	t.Cleanup(front.Close)
	through, err := lease.NewS3(map[string]any{
		"accesskey": "test", "secretkey": "test", "region": "us-east-1", "bucket": "b",
		"regionendpoint": front.URL, "forcepathstyle": true, "secure": false,
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := lease.New(through, "http://a").DropLeftovers(ctx); err == nil {
		t.Error("DropLeftovers: no error; want the read it could not make")
	}
	if keys, err := objs.List(ctx, "records/leases/"); err != nil || len(keys) != 1 || keys[0] != "records/leases/sha256/0" {
		t.Fatalf("leases after a's start: %v, %v; want b's only", keys, err)
	}
}

// takenOverAfterRead are lease objects whose first read of a lease is
// followed at once by another replica taking it over: it saw the
// lease's holder down (killed, not yet back) and fetches the blob.
type takenOverAfterRead struct {
	lease.Objects
	once  sync.Once
	other *lease.Leases
	held  *lease.Held
}

func (r *takenOverAfterRead) Get(ctx context.Context, key string) ([]byte, string, error) {
	raw, etag, err := r.Objects.Get(ctx, key)
	r.once.Do(func() {
		r.held, _, _, _ = r.other.Take(ctx, strings.Replace(strings.TrimPrefix(key, "records/leases/"), "/", ":", 1))
	})
	return raw, etag, err
}

// A replica started again that reads a lease of its former run, which
// another replica takes over (it saw the holder down) before the start
// removes it, leaves it: the start removed it all the same, the other
// replica's fetch went on without a lease (its renewal found it gone),
// and a third replica missing the blob took a new lease and fetched it
// once more.
func TestDropLeftoversLeavesALeaseTakenOverMeanwhile(t *testing.T) {
	srv := leasetest.Start(t, true)
	testDropLeftoversTakenOverMeanwhile(t, srv.Objects("b"))
}

// TestDropLeftoversLeavesALeaseTakenOverMeanwhileVersitygw runs the same
// on the real S3 server, which honours If-Match on DELETE as AWS S3 does.
func TestDropLeftoversLeavesALeaseTakenOverMeanwhileVersitygw(t *testing.T) {
	srv := s3test.Start(t)
	objs, err := lease.NewS3(srv.Params(srv.NewBucket(t)))
	if err != nil {
		t.Fatal(err)
	}
	testDropLeftoversTakenOverMeanwhile(t, objs)
}

func testDropLeftoversTakenOverMeanwhile(t *testing.T, objs lease.Objects) {
	ctx := context.Background()
	former := lease.New(objs, "http://a")
	h, _, _, err := former.Take(ctx, "sha256:1")
	if err != nil || h == nil {
		t.Fatalf("a: %v, %v", h, err)
	}
	defer h.Release() // ends its renewal
	// a is killed, b sees it down, and a starts again.
	through := &takenOverAfterRead{Objects: objs, other: lease.New(objs, "http://b", lease.WithHolderDown(func(string) bool { return true }))}
	if err := lease.New(through, "http://a").DropLeftovers(ctx); err != nil {
		t.Fatal(err)
	}
	if through.held == nil {
		t.Fatal("b did not take a's lease over")
	}
	defer through.held.Release()
	raw, _, err := objs.Get(ctx, "records/leases/sha256/1")
	if err != nil || !strings.Contains(string(raw), `"http://b"`) {
		t.Fatalf("the lease b took over, after a's start: %s, %v; want b's", raw, err)
	}
	c := lease.New(objs, "http://c")
	if hc, holder, _, err := c.Take(ctx, "sha256:1"); err != nil || hc != nil || holder != "http://b" {
		if hc != nil {
			hc.Release()
		}
		t.Fatalf("c's take of the blob b fetches: %v %q, %v; want it held by b", hc, holder, err)
	}
}

// A store that refuses If-Match on DELETE (501 NotImplemented, as S3
// answers a header it does not implement; some S3-compatible servers do
// so rather than ignore it) still has a holder's lease released and a
// former run's lease removed at start, unconditionally as before: the
// release failed, every lease of a fetched blob stayed in the bucket for
// good (nobody takes the lease of a blob stored), and each start failed
// to remove its former run's.
func TestLeasesReleasedWhereDeleteIfMatchIsRefused(t *testing.T) {
	srv := leasetest.Start(t, true)
	front := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodDelete && r.Header.Get("If-Match") != "" {
			w.Header().Set("Content-Type", "application/xml")
			w.WriteHeader(http.StatusNotImplemented)
			fmt.Fprint(w, "<Error><Code>NotImplemented</Code><Message>A header you provided implies functionality that is not implemented</Message></Error>")
			return
		}
		srv.ServeHTTP(w, r)
	}))
	t.Cleanup(front.Close)
	objs, err := lease.NewS3(map[string]any{
		"accesskey": "test", "secretkey": "test", "region": "us-east-1", "bucket": "b",
		"regionendpoint": front.URL, "forcepathstyle": true, "secure": false,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	a := lease.New(objs, "http://a")
	h, _, _, err := a.Take(ctx, "sha256:1")
	if err != nil || h == nil {
		t.Fatalf("a: %v, %v", h, err)
	}
	h.Release()
	if keys, err := objs.List(ctx, "records/leases/"); err != nil || len(keys) != 0 {
		t.Fatalf("leases after a's release: %v, %v; want none", keys, err)
	}
	// a is killed holding a lease, and started again.
	if h, _, _, err = a.Take(ctx, "sha256:2"); err != nil || h == nil {
		t.Fatalf("a: %v, %v", h, err)
	}
	defer h.Release() // ends its renewal: the lease is gone by then
	if err := lease.New(objs, "http://a").DropLeftovers(ctx); err != nil {
		t.Fatalf("DropLeftovers: %v", err)
	}
	if keys, err := objs.List(ctx, "records/leases/"); err != nil || len(keys) != 0 {
		t.Fatalf("leases after a's start: %v, %v; want none", keys, err)
	}
}

// With AWS_CA_BUNDLE set (as on many CI machines and in corporate
// networks), the SDK loads the bundle into the transport of the session's
// client: given none, http.DefaultClient's, which it replaced for the
// whole process (a race with every other user of it). The leases have a
// client of their own, and reach a bucket behind a certificate the bundle
// names, as the storage does.
func TestNewS3LeavesTheDefaultClientAlone(t *testing.T) {
	srv := leasetest.Start(t, true)
	front := httptest.NewTLSServer(srv)
	t.Cleanup(front.Close)
	bundle := filepath.Join(t.TempDir(), "ca.pem")
	cert := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: front.Certificate().Raw})
	if err := os.WriteFile(bundle, cert, 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("AWS_CA_BUNDLE", bundle)
	was := http.DefaultClient.Transport
	t.Cleanup(func() { http.DefaultClient.Transport = was })

	objs, err := lease.NewS3(map[string]any{
		"accesskey": "test", "secretkey": "test", "region": "us-east-1", "bucket": "b",
		"regionendpoint": front.URL, "forcepathstyle": true,
	})
	if err != nil {
		t.Fatal(err)
	}
	if http.DefaultClient.Transport != was {
		t.Error("lease.NewS3 replaced http.DefaultClient's transport")
	}
	if ok, err := lease.Probe(context.Background(), objs, "records/leases/probe"); err != nil || !ok {
		t.Fatalf("probe through AWS_CA_BUNDLE = %v, %v; want conditional writes found", ok, err)
	}
}
