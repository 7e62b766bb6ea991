package bench

import (
	"context"
	"net/http"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/docker-mirror/docker-mirror/config"
	"github.com/docker-mirror/docker-mirror/proxy"
	"github.com/docker-mirror/docker-mirror/storage/s3test"
	"github.com/docker-mirror/docker-mirror/tests/fixture"
	"github.com/docker-mirror/docker-mirror/tests/servertest"
)

// BenchmarkWarmBlobS3: 8 clients at once GET one stored 64 MiB blob whose
// store is an S3 bucket (versitygw with its posix backend on loopback;
// skipped without it), three ways:
//
//   - replica: the mirror reads the blob from S3 and streams it;
//   - redirect: the mirror answers 307 to a presigned URL (storage.redirect)
//     and the client fetches from S3 (the 307 is in the time);
//   - s3: the clients GET the presigned URL straight from the S3 server, the
//     ceiling of the other two.
//
// Each iteration runs the three floods in turn (the order rotating), so the
// ratios x-s3 are paired.
func BenchmarkWarmBlobS3(b *testing.B) {
	s3srv := s3test.Start(b)
	bucket := s3srv.NewBucket(b)
	onBucket := func(redirect bool) func(*config.Config) {
		return func(c *config.Config) {
			c.Storage = s3srv.Storage(bucket)
			c.StorageRedirect = redirect
		}
	}
	data := randomBytes(blobSize)
	up := fixture.StartUpstream(b)
	dgst := up.PushBlob(b, benchRepo, data)
	ups := []servertest.Upstream{{Host: proxy.DefaultHost, URL: up.URL()}}
	replica := servertest.StartConfigured(b, ups, onBucket(false))
	redirecting := servertest.StartConfigured(b, ups, onBucket(true))
	path := "/v2/" + benchRepo + "/blobs/" + dgst

	ctx := context.Background()
	hc := &http.Client{Transport: NewTransport(1)}
	if _, _, err := Fetch(ctx, hc, replica.URL()+path, dgst); err != nil {
		b.Fatal(err)
	}
	// The download is stored once the response is complete: wait for it.
	deadline := time.Now().Add(time.Minute)
	for {
		if _, err := replica.Store.Stat(ctx, benchRepo, digest.Digest(dgst)); err == nil {
			break
		}
		if time.Now().After(deadline) {
			b.Fatal("the blob was not stored")
		}
		time.Sleep(10 * time.Millisecond)
	}
	// The redirecting replica links the blob to the repository (it has
	// its own index) and then redirects: its presigned URL is the s3 flood's.
	if _, _, err := Fetch(ctx, hc, redirecting.URL()+path, dgst); err != nil {
		b.Fatal(err)
	}
	noFollow := &http.Client{Transport: NewTransport(1), CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := noFollow.Get(redirecting.URL() + path)
	if err != nil {
		b.Fatal(err)
	}
	resp.Body.Close()
	presigned := resp.Header.Get("Location")
	if resp.StatusCode != http.StatusTemporaryRedirect || presigned == "" {
		b.Fatalf("redirecting replica: %s, Location %q", resp.Status, presigned)
	}
	reqs := len(up.Requests())

	floods := []*flood{
		newFlood(b, replica.URL()+path, blobClients, blobSize),
		newFlood(b, redirecting.URL()+path, blobClients, blobSize),
		newFlood(b, presigned, blobClients, blobSize),
	}
	for _, f := range floods {
		f.round(b) // open the connections
	}
	var took [3]time.Duration
	n := 0
	for b.Loop() {
		for i := range floods {
			k := (i + n) % len(floods)
			took[k] += floods[k].round(b)
		}
		n++
	}
	bytes := floods[0].bytes(n)
	b.ReportMetric(mbps(bytes, took[0]), "replica-MB/s")
	b.ReportMetric(mbps(bytes, took[1]), "redirect-MB/s")
	b.ReportMetric(mbps(bytes, took[2]), "s3-MB/s")
	b.ReportMetric(float64(took[2])/float64(took[0]), "replica-x-s3")
	b.ReportMetric(float64(took[2])/float64(took[1]), "redirect-x-s3")
	if d := len(up.Requests()) - reqs; d != 0 {
		b.Errorf("the warm blob cost %d upstream requests", d)
	}
}
