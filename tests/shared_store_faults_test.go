package tests

import (
	"bytes"
	"context"
	"maps"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go/aws"
	"github.com/aws/aws-sdk-go/service/s3"
	"github.com/opencontainers/go-digest"

	"github.com/docker-mirror/docker-mirror/config"
	"github.com/docker-mirror/docker-mirror/lifecycle"
	"github.com/docker-mirror/docker-mirror/proxy"
	"github.com/docker-mirror/docker-mirror/storage/s3test"
	"github.com/docker-mirror/docker-mirror/tests/fixture"
	"github.com/docker-mirror/docker-mirror/tests/servertest"
)

// slowDownS3 is an S3 endpoint in front of a real one that, while
// failing is set, answers the writes (PUTs) of the mirror's records with
// S3's 503 SlowDown, as S3 does when a prefix gets more writes than it
// takes; every other request passes. written, if set, is told the path
// of each record write that passed, once S3 has answered it; requested,
// if set, is told of every request before it passes (and holds it while
// it runs). While throttling is set, it answers every request so (a
// bucket throttling all its prefixes).
type slowDownS3 struct {
	next       http.Handler
	failing    atomic.Bool
	throttling atomic.Bool
	written    atomic.Pointer[func(path string)]
	requested  atomic.Pointer[func(r *http.Request)]
}

// startSlowDownS3 starts a slowDownS3 before s3srv, and returns it with
// the configuration of a replica on bucket that reaches it through it.
func startSlowDownS3(t *testing.T, s3srv *s3test.Server, bucket string) (*slowDownS3, func(*config.Config)) {
	t.Helper()
	f := &slowDownS3{next: s3srv.Next()}
	params := s3srv.Front(t, bucket, f)
	return f, func(c *config.Config) { c.Storage = map[string]map[string]any{"s3": maps.Clone(params)} }
}

func (f *slowDownS3) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	record := r.Method == http.MethodPut && strings.Contains(r.URL.Path, "/records/")
	if f.failing.Load() && record || f.throttling.Load() {
		s3test.WriteError(w, http.StatusServiceUnavailable, "SlowDown", "Please reduce your request rate.")
		return
	}
	if requested := f.requested.Load(); requested != nil {
		(*requested)(r)
	}
	f.next.ServeHTTP(w, r)
	if written := f.written.Load(); written != nil && record {
		(*written)(r.URL.Path)
	}
}

// A bucket that throttles (503 SlowDown) answers: the replica is ready,
// as it is while its store is full. /readyz failed, on every replica of
// the bucket at once, and the load balancer and the others' probes took
// the whole cluster out, although the bucket still serves (S3 throttles
// a prefix for a while, at a rate) and the peers' hits and forwarded
// misses went through. Its answer comes after the S3 client's retries
// (about 10 seconds, longer than a probe waits): a check that follows
// takes it, without waiting for the next lookup (held here). The bucket
// down still fails it.
func TestSharedBucketThrottlingStaysReady(t *testing.T) {
	s3srv, bucket, _ := sharedBucket(t)
	faults, onFront := startSlowDownS3(t, s3srv, bucket)
	up := fixture.StartUpstream(t)
	img := up.SeedImage(t, "library/app", "v1", 1, 4<<10)
	m := servertest.StartConfigured(t, []servertest.Upstream{{Host: proxy.DefaultHost, URL: up.URL()}}, onFront)
	wantManifest(t, get(t, m.URL()+"/v2/library/app/manifests/v1"), img.Manifest, img.MediaType)
	m.WaitIdle()
	faults.throttling.Store(true)
	if r := get(t, m.URL()+"/readyz"); r.status != http.StatusOK {
		t.Errorf("/readyz with the bucket throttling: %d %q; want 200", r.status, r.body)
	}

	// The next check's lookup is held at the bucket: the check is
	// answered all the same.
	held, release := make(chan struct{}, 1), make(chan struct{})
	hold := func(*http.Request) {
		select {
		case held <- struct{}{}:
		default:
		}
		<-release
	}
	faults.requested.Store(&hold)
	faults.throttling.Store(false)
	answered := make(chan response, 1)
	go func() { answered <- get(t, m.URL()+"/readyz") }()
	ctx, cancel := context.WithTimeout(t.Context(), watchdog)
	defer cancel()
	select {
	case r := <-answered:
		if r.status != http.StatusOK {
			t.Errorf("/readyz while its lookup is held, after the bucket answered throttling: %d %q; want 200", r.status, r.body)
		}
	case <-ctx.Done():
		close(release)
		<-answered
		t.Fatal("/readyz waited for its lookup of the bucket, held: a probe would have given up")
	}
	select {
	case <-held:
	case <-ctx.Done():
		t.Fatal("the check looked nothing up")
	}
	close(release)
	faults.requested.Store(nil)
	m.WaitIdle()

	m.Clock.Advance(time.Minute)
	s3srv.Stop()
	if r := get(t, m.URL()+"/readyz"); r.status != http.StatusServiceUnavailable {
		t.Errorf("/readyz with S3 down: %d; want 503", r.status)
	}
}

// A blob stored for one repository and asked for by another that the
// upstream confirms has it is linked to that one too, a record written to
// the bucket. When S3 refuses that write (503 SlowDown), the client is
// answered 503 UNAVAILABLE, as for any failure of the bucket (clients retry
// or fall back), never 500 as if the mirror were broken.
func TestSharedBucketRecordWriteRefusedIsUnavailable(t *testing.T) {
	s3srv, bucket, _ := sharedBucket(t)
	faults, onFront := startSlowDownS3(t, s3srv, bucket)
	up := fixture.StartUpstream(t)
	img := up.SeedImage(t, "library/app", "v1", 1, 4<<10)
	layer := img.Layers[0]
	up.PushBlob(t, "library/other", blobOf(t, up, "library/app", layer))
	m := servertest.StartConfigured(t, []servertest.Upstream{{Host: proxy.DefaultHost, URL: up.URL()}}, onFront)
	wantManifest(t, get(t, m.URL()+"/v2/library/app/manifests/v1"), img.Manifest, img.MediaType)
	m.WaitIdle()
	if r := get(t, m.URL()+"/v2/library/app/blobs/"+layer); r.status != http.StatusOK || sha(r.body) != layer {
		t.Fatalf("stored blob: status %d", r.status)
	}

	faults.failing.Store(true)
	wantError(t, get(t, m.URL()+"/v2/library/other/blobs/"+layer), http.StatusServiceUnavailable, "UNAVAILABLE")

	faults.failing.Store(false)
	if r := get(t, m.URL()+"/v2/library/other/blobs/"+layer); r.status != http.StatusOK || sha(r.body) != layer {
		t.Errorf("once S3 takes writes again: status %d", r.status)
	}
}

// A pull whose time S3 refused to take (503 SlowDown when the replica
// flushed it) is still a pull: the replica that served it keeps it in its
// index through the reading of the bucket's records that every eviction
// begins with, and writes it to the bucket then, so that the other
// replicas count it too. Before, the bucket's older time replaced it: an
// image pulled a minute before was evicted as not pulled for an hour, by
// both replicas.
func TestSharedBucketPullTimeRefusedNotLost(t *testing.T) {
	s3srv, bucket, onBucket := sharedBucket(t)
	faults, onFront := startSlowDownS3(t, s3srv, bucket)
	up := fixture.StartUpstream(t)
	img := up.SeedImage(t, "library/app", "v1", 1, 4<<10)
	ups := []servertest.Upstream{{Host: proxy.DefaultHost, URL: up.URL()}}
	a := servertest.StartConfigured(t, ups, onFront)
	b := servertest.StartConfigured(t, ups, onBucket)
	wantManifest(t, get(t, a.URL()+"/v2/library/app/manifests/v1"), img.Manifest, img.MediaType)
	a.WaitIdle()
	if err := a.Index.Flush(); err != nil { // the first pull's time, in the bucket
		t.Fatal(err)
	}

	// Two hours later, a pull (by digest: no tag revalidated) that S3
	// refuses to record.
	a.Clock.Advance(2 * time.Hour)
	b.Clock.Advance(2 * time.Hour)
	faults.failing.Store(true)
	wantManifest(t, get(t, a.URL()+"/v2/library/app/manifests/"+img.Digest), img.Manifest, img.MediaType)
	if err := a.Index.Flush(); err != nil {
		t.Fatal(err)
	}
	faults.failing.Store(false)

	// a first: its eviction's reading of the bucket writes the time there.
	for _, r := range []struct {
		name string
		m    *servertest.Server
	}{{"a, which served the pull,", a}, {"b", b}} {
		name, m := r.name, r.m
		rep, err := m.Server.Collector.Evict(t.Context(), 0, time.Hour, m.Clock.Now())
		if err != nil {
			t.Fatal(err)
		}
		if rep.ImagesEvicted != 0 {
			t.Errorf("replica %s evicted %d images; the image was pulled just now", name, rep.ImagesEvicted)
		}
	}
}

// A record in the bucket that no replica can read (truncated, or written
// otherwise by another version) is one record lost, not the cluster's
// collection: every replica reads the bucket's records before it collects
// or evicts, and one unreadable tag, mirror state, pull time or referrers
// answer stopped them all, on every run, the bucket growing past max_size.
// The others' images are kept, content nobody records is removed, and a
// pin whose record cannot be read still keeps its image.
func TestSharedBucketUnreadableRecordStopsNoCollection(t *testing.T) {
	s3srv, bucket, onBucket := sharedBucket(t)
	up := fixture.StartUpstream(t)
	x := up.SeedImage(t, "library/x", "v1", 1, 4<<10)
	ups := []servertest.Upstream{{Host: proxy.DefaultHost, URL: up.URL()}}
	a := servertest.StartConfigured(t, ups, onBucket)
	b := servertest.StartConfigured(t, ups, onBucket)
	wantManifest(t, get(t, a.URL()+"/v2/library/x/manifests/v1"), x.Manifest, x.MediaType)
	a.WaitIdle()

	other := "sha256_3A" + strings.Repeat("ab", 32) // a digest, escaped as keys are
	for _, key := range []string{
		"tags/docker.io/library/y_3Av1",
		"mirrors/docker.io/library/y_40" + other,
		"access/" + other,
		"referrers/docker.io/library/y_40" + other + "_00",
		"pins/" + strings.ReplaceAll(strings.ReplaceAll(x.Digest, "_", "_5F"), ":", "_3A"),
	} {
		if _, err := s3srv.Client().PutObject(&s3.PutObjectInput{
			Bucket: aws.String(bucket), Key: aws.String("records/" + key), Body: strings.NewReader(`{"digest":"sha2`),
		}); err != nil {
			t.Fatal(err)
		}
	}
	stray := []byte("stray blob no replica recorded")
	strayDigest := digestOf(t, sha(stray))
	if err := b.Store.Put(t.Context(), "", strayDigest, int64(len(stray)), bytes.NewReader(stray)); err != nil {
		t.Fatal(err)
	}

	b.Clock.Advance(time.Hour) // past the grace period
	rep, err := b.Server.Collector.Collect(t.Context())
	if err != nil {
		t.Fatalf("collection beside an unreadable record: %v", err)
	}
	if rep.BlobsRemoved != 1 || rep.ManifestsRemoved != 0 {
		t.Errorf("collection removed %d blobs and %d manifests; want the stray blob only", rep.BlobsRemoved, rep.ManifestsRemoved)
	}
	// Past every image's last pull and over any size: only the pin keeps x.
	if rep, err := b.Server.Collector.Evict(t.Context(), 1, time.Minute, b.Clock.Now()); err != nil || rep.ImagesEvicted != 0 {
		t.Fatalf("eviction beside an unreadable record: %d images evicted, %v; want the pinned image kept", rep.ImagesEvicted, err)
	}
	up.Stop()
	for _, m := range []*servertest.Server{a, b} {
		wantManifest(t, get(t, m.URL()+"/v2/library/x/manifests/v1"), x.Manifest, x.MediaType)
		wantImage(t, m, "library/x", x)
	}
}

// A tag whose record in the bucket no replica can read is a miss on a
// replica that has no record of its own (one started with an empty data
// directory): fetched from the upstream and recorded again, where it
// answered 500 (Docker then pulled from Docker Hub) on every such replica
// for as long as the record was there.
func TestSharedBucketUnreadableTagRecordIsAMiss(t *testing.T) {
	s3srv, bucket, onBucket := sharedBucket(t)
	up := fixture.StartUpstream(t)
	x := up.SeedImage(t, "library/x", "v1", 1, 4<<10)
	ups := []servertest.Upstream{{Host: proxy.DefaultHost, URL: up.URL()}}
	a := servertest.StartConfigured(t, ups, onBucket)
	wantManifest(t, get(t, a.URL()+"/v2/library/x/manifests/v1"), x.Manifest, x.MediaType)
	a.WaitIdle()
	if _, err := s3srv.Client().PutObject(&s3.PutObjectInput{
		Bucket: aws.String(bucket), Key: aws.String("records/tags/docker.io/library/x_3Av1"), Body: strings.NewReader(`{"digest":"sha2`),
	}); err != nil {
		t.Fatal(err)
	}

	b := servertest.StartConfigured(t, ups, onBucket)
	wantManifest(t, get(t, b.URL()+"/v2/library/x/manifests/v1"), x.Manifest, x.MediaType)
	b.WaitIdle()
	c := servertest.StartConfigured(t, ups, onBucket)
	up.Stop()
	wantManifest(t, get(t, c.URL()+"/v2/library/x/manifests/v1"), x.Manifest, x.MediaType)
}

// A replica with max_size on a bucket under it reads no records: every
// minute's pass, with nothing to evict, read every record in the bucket
// (one GET each: at 100k images, hundreds of thousands of requests a
// minute from each replica, billed), where a listing of the content tells
// the bucket is under its limit. The collection every ten minutes still
// reads them.
func TestSharedBucketUnderMaxSizeReadsNoRecords(t *testing.T) {
	s3srv, bucket, _ := sharedBucket(t)
	front, onFront := startSlowDownS3(t, s3srv, bucket)
	up := fixture.StartUpstream(t)
	img := up.SeedImage(t, "library/app", "v1", 2, 4<<10)
	m := servertest.StartConfigured(t, []servertest.Upstream{{Host: proxy.DefaultHost, URL: up.URL()}}, onFront)
	wantManifest(t, get(t, m.URL()+"/v2/library/app/manifests/v1"), img.Manifest, img.MediaType)
	m.WaitIdle()
	policy := lifecycle.Policy{MaxSize: 1 << 30, CollectEvery: lifecycle.DefaultCollectEvery}
	if _, err := m.Server.Collector.Pass(t.Context(), policy); err != nil { // the collection due at start
		t.Fatal(err)
	}

	var reads atomic.Int64
	count := func(r *http.Request) {
		if r.Method == http.MethodGet && strings.Contains(r.URL.Path, "/records/") {
			reads.Add(1)
		}
	}
	front.requested.Store(&count)
	m.Clock.Advance(time.Minute)
	rep, err := m.Server.Collector.Pass(t.Context(), policy)
	if err != nil {
		t.Fatal(err)
	}
	if n := reads.Load(); n != 0 {
		t.Errorf("a pass with the bucket under max_size read %d records; want none", n)
	}
	if rep.ImagesEvicted != 0 || rep.BlobsRemoved != 0 || rep.ManifestsRemoved != 0 {
		t.Errorf("a pass under max_size removed something: %+v", rep)
	}
}

// A replica reads the bucket's records (every collection, on every
// replica) several at once: each is a GET, and read one after another, a
// bucket of 100k images' records (hundreds of thousands) took longer than
// the ten minutes between collections. Here the first read is held until a
// second one runs beside it.
func TestSharedBucketRecordsReadInParallel(t *testing.T) {
	s3srv, bucket, _ := sharedBucket(t)
	front, onFront := startSlowDownS3(t, s3srv, bucket)
	up := fixture.StartUpstream(t)
	img := up.SeedImage(t, "library/app", "v1", 2, 4<<10)
	m := servertest.StartConfigured(t, []servertest.Upstream{{Host: proxy.DefaultHost, URL: up.URL()}}, onFront)
	wantManifest(t, get(t, m.URL()+"/v2/library/app/manifests/v1"), img.Manifest, img.MediaType)
	m.WaitIdle()

	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	var reads atomic.Int64
	second := make(chan struct{})
	held := func(r *http.Request) {
		if r.Method != http.MethodGet || !strings.Contains(r.URL.Path, "/records/blobs/") {
			return
		}
		switch reads.Add(1) {
		case 1:
			select {
			case <-second:
			case <-ctx.Done():
			}
		case 2:
			close(second)
		}
	}
	front.requested.Store(&held)
	if err := m.Index.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	select {
	case <-second:
	default:
		t.Fatal("the blobs' records were read one at a time: a second read never ran while the first was held")
	}
}

// A layer served as a hit from the bucket, whose GET of it S3 cuts
// mid-body, reaches its client whole, in one answer, with the upstream
// down: the read goes on from the bucket where it broke.
func TestSharedBucketHitReadCutResumes(t *testing.T) {
	s3srv, bucket, _ := sharedBucket(t)
	cut := &s3test.CutGets{Next: s3srv.Next()}
	params := s3srv.Front(t, bucket, cut)
	up := fixture.StartUpstream(t)
	img := up.SeedImage(t, "library/cut", "v1", 1, 256<<10)
	m := servertest.StartConfigured(t, []servertest.Upstream{{Host: proxy.DefaultHost, URL: up.URL()}}, func(c *config.Config) {
		c.Storage = map[string]map[string]any{"s3": params}
	})
	wantImage(t, m, "library/cut", img)
	m.WaitIdle()
	up.Stop()
	cut.Left.Store(1)
	layer := img.Layers[0]
	r := get(t, m.URL()+"/v2/library/cut/blobs/"+layer)
	if r.err != nil || r.status != http.StatusOK || r.header.Get("X-Cache") != "hit" || digest.FromBytes(r.body).String() != layer {
		t.Fatalf("layer whose read from the bucket was cut: status %d (X-Cache %q), %d bytes, err %v; want the whole layer, a hit", r.status, r.header.Get("X-Cache"), len(r.body), r.err)
	}
	if cut.Left.Load() != 0 {
		t.Fatal("the bucket's GET of the layer was not cut: nothing tested")
	}
}
