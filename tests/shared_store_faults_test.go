package tests

import (
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/docker-mirror/docker-mirror/config"
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
// it runs).
type slowDownS3 struct {
	next      http.Handler
	failing   atomic.Bool
	written   atomic.Pointer[func(path string)]
	requested atomic.Pointer[func(r *http.Request)]
}

func startSlowDownS3(t *testing.T, s3srv *s3test.Server) (*slowDownS3, string) {
	t.Helper()
	u, err := url.Parse(s3srv.Endpoint)
	if err != nil {
		t.Fatal(err)
	}
	f := &slowDownS3{next: httputil.NewSingleHostReverseProxy(u)}
	srv := httptest.NewServer(f)
	t.Cleanup(srv.Close)
	return f, srv.URL
}

func (f *slowDownS3) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	record := r.Method == http.MethodPut && strings.Contains(r.URL.Path, "/records/")
	if f.failing.Load() && record {
		w.Header().Set("Content-Type", "application/xml")
		w.WriteHeader(http.StatusServiceUnavailable)
		_, _ = w.Write([]byte(`<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>`))
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

// A blob stored for one repository and asked for by another that the
// upstream confirms has it is linked to that one too, a record written to
// the bucket. When S3 refuses that write (503 SlowDown), the client is
// answered 503 UNAVAILABLE, as for any failure of the bucket (clients retry
// or fall back), never 500 as if the mirror were broken.
func TestSharedBucketRecordWriteRefusedIsUnavailable(t *testing.T) {
	s3srv, bucket, _ := sharedBucket(t)
	faults, endpoint := startSlowDownS3(t, s3srv)
	up := fixture.StartUpstream(t)
	img := up.SeedImage(t, "library/app", "v1", 1, 4<<10)
	layer := img.Layers[0]
	up.PushBlob(t, "library/other", blobOf(t, up, "library/app", layer))
	m := servertest.StartConfigured(t, []servertest.Upstream{{Host: proxy.DefaultHost, URL: up.URL()}}, func(c *config.Config) {
		c.Storage = s3srv.Storage(bucket)
		c.Storage["s3"]["regionendpoint"] = endpoint
	})
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
	faults, endpoint := startSlowDownS3(t, s3srv)
	up := fixture.StartUpstream(t)
	img := up.SeedImage(t, "library/app", "v1", 1, 4<<10)
	ups := []servertest.Upstream{{Host: proxy.DefaultHost, URL: up.URL()}}
	a := servertest.StartConfigured(t, ups, func(c *config.Config) {
		c.Storage = s3srv.Storage(bucket)
		c.Storage["s3"]["regionendpoint"] = endpoint
	})
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
