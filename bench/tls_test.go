package bench

import (
	"context"
	"crypto/tls"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/docker-mirror/docker-mirror/tests/fixture"
	"github.com/docker-mirror/docker-mirror/tests/servertest"
)

// BenchmarkWarmBlobTLS: the warm 64 MiB blob, 8 clients at once, from the
// mirror's handler served over TLS (Go's crypto/tls, as --tls-cert serves
// it; an ECDSA P-256 test certificate, TLS 1.3, AES-GCM) and, in the same
// iteration in alternating order, over plain HTTP. x-plain is the paired
// throughput ratio TLS / plain.
func BenchmarkWarmBlobTLS(b *testing.B) {
	data := randomBytes(blobSize)
	up := fixture.StartUpstream(b)
	dgst := up.PushBlob(b, benchRepo, data)
	m := servertest.Start(b, up.URL())
	path := "/v2/" + benchRepo + "/blobs/" + dgst
	hc := &http.Client{Transport: NewTransport(1)}
	if _, _, err := Fetch(context.Background(), hc, m.URL()+path, dgst); err != nil {
		b.Fatal(err)
	}
	deadline := time.Now().Add(time.Minute)
	for {
		if _, err := m.Store.Stat(context.Background(), benchRepo, digest.Digest(dgst)); err == nil {
			break
		}
		if time.Now().After(deadline) {
			b.Fatal("the blob was not stored")
		}
		time.Sleep(10 * time.Millisecond)
	}
	ts := httptest.NewUnstartedServer(m.Server.Handler())
	ts.StartTLS()
	b.Cleanup(ts.Close)
	plain := newFlood(b, m.URL()+path, blobClients, blobSize)
	secure := newFlood(b, ts.URL+path, blobClients, blobSize)
	// The TLS clients dial 127.0.0.1 too, trusting the test certificate.
	secure.tr.TLSClientConfig = &tls.Config{RootCAs: ts.Client().Transport.(*http.Transport).TLSClientConfig.RootCAs}
	plain.round(b)
	secure.round(b)
	var pt, st time.Duration
	n := 0
	for b.Loop() {
		if n%2 == 0 {
			pt += plain.round(b)
			st += secure.round(b)
		} else {
			st += secure.round(b)
			pt += plain.round(b)
		}
		n++
	}
	b.ReportMetric(mbps(secure.bytes(n), st), "tls-MB/s")
	b.ReportMetric(mbps(plain.bytes(n), pt), "plain-MB/s")
	b.ReportMetric(float64(pt)/float64(st), "x-plain")
}
