package bench

import (
	"context"
	"crypto/tls"
	"fmt"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/docker-mirror/docker-mirror/tests/fixture"
)

// BenchmarkWarmBlobTLS: the warm 64 MiB blob, 8 clients at once over
// kept-alive connections, from the docker-mirror binary serving HTTPS
// (--tls-cert: Go's crypto/tls, an ECDSA P-256 certificate, TLS 1.3,
// AES-128-GCM) and from a second one serving plain HTTP (sendfile), and
// from nginx serving the same bytes as a static file over TLS (the same
// certificate, TLS 1.3, AES-128-GCM; checked) and plain HTTP (sendfile);
// the nginx side is skipped, with a message, if nginx is not installed.
// All four rounds run in each iteration, in rotating order, with the same
// client code; the servers are child processes, so CPU time and RSS are
// each server's own. x-plain is the mirror's TLS / plain throughput,
// x-nginx-tls and x-nginx-plain the mirror's / nginx's.
func BenchmarkWarmBlobTLS(b *testing.B) {
	data := randomBytes(blobSize)
	up := fixture.StartUpstream(b)
	dgst := up.PushBlob(b, benchRepo, data)
	path := "/v2/" + benchRepo + "/blobs/" + dgst
	bin := buildMirror(b)
	cert := newTestCert(b)
	type side struct {
		s      *serverProc
		prefix string
		hc     *http.Client
		r      round
	}
	client := func() *http.Client {
		tr := NewTransport(blobClients)
		tr.TLSClientConfig = cert.clientConfig()
		b.Cleanup(tr.CloseIdleConnections)
		return &http.Client{Transport: tr}
	}
	secure := startMirror(b, bin, up.URL(), cert)
	secure.name = "docker-mirror-tls"
	plain := startMirror(b, bin, up.URL(), nil)
	plain.name = "docker-mirror-plain"
	sides := []*side{{s: secure, prefix: "tls-"}, {s: plain, prefix: "plain-"}}
	if ng := nginxBinary(); ng != "" {
		n := startNginx(b, ng, cert)
		n.put(b, path, data)
		sides = append(sides, &side{s: n.procs("nginx-tls", n.tlsURL), prefix: "nginx-tls-"},
			&side{s: n.procs("nginx-plain", n.url), prefix: "nginx-plain-"})
	} else {
		b.Log(noNginx)
	}
	suites := map[string]string{} // server: what its TLS connections use
	for _, sd := range sides {
		sd.hc = client()
		if suite := warmBlob(b, sd.hc, sd.s.url+path, dgst); suite != "" {
			suites[sd.s.name] = suite
		}
		gets(sd.hc, sd.s.url+path) // open the connections
	}
	if len(suites) > 1 && suites["docker-mirror-tls"] != suites["nginx-tls"] {
		b.Fatalf("the TLS servers negotiated different protocols or suites: %v", suites)
	}
	b.Logf("TLS: %v", suites)
	n := 0
	for b.Loop() {
		for i := range sides {
			sd := sides[(i+n)%len(sides)]
			sd.r.add(measureServer(sd.s, func() round { return gets(sd.hc, sd.s.url+path) }))
		}
		n++
	}
	for _, sd := range sides {
		sd.r.report(b, sd.s.name, sd.prefix)
	}
	ratio := func(x, y *side) float64 { return float64(y.r.wall) / float64(x.r.wall) }
	b.ReportMetric(ratio(sides[0], sides[1]), "x-plain")
	if len(sides) == 4 {
		b.ReportMetric(ratio(sides[0], sides[2]), "x-nginx-tls")
		b.ReportMetric(ratio(sides[1], sides[3]), "x-nginx-plain")
	}
}

// warmBlob GETs the blob at url (verifying its digest) until the answer
// is a hit: the mirror has stored it (nginx always says hit). It returns
// the TLS version and cipher suite negotiated ("" over plain HTTP).
func warmBlob(b *testing.B, hc *http.Client, url, dgst string) string {
	b.Helper()
	ctx := context.Background()
	deadline := time.Now().Add(time.Minute)
	for {
		if _, cache, err := Fetch(ctx, hc, url, dgst); err != nil {
			b.Fatal(err)
		} else if cache == "hit" {
			break
		}
		if time.Now().After(deadline) {
			b.Fatalf("%s: not a hit after a minute", url)
		}
		time.Sleep(20 * time.Millisecond)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodHead, url, nil)
	if err != nil {
		b.Fatal(err)
	}
	resp, err := hc.Do(req)
	if err != nil {
		b.Fatal(err)
	}
	resp.Body.Close()
	if resp.TLS == nil {
		return ""
	}
	return fmt.Sprintf("HTTP/%d.%d %s %s", resp.ProtoMajor, resp.ProtoMinor,
		tls.VersionName(resp.TLS.Version), tls.CipherSuiteName(resp.TLS.CipherSuite))
}

// gets has blobClients clients GET url at once with hc, each reading the
// whole blob.
func gets(hc *http.Client, url string) round {
	var (
		mu sync.Mutex
		wg sync.WaitGroup
		r  round
	)
	for range blobClients {
		wg.Go(func() {
			start := time.Now()
			n, _, err := Fetch(context.Background(), hc, url, "")
			d := time.Since(start)
			if err == nil && n != blobSize {
				err = fmt.Errorf("GET %s: %d bytes, want %d", url, n, blobSize)
			}
			mu.Lock()
			defer mu.Unlock()
			r.bytes += n
			r.lat = append(r.lat, d)
			if err != nil {
				r.errs++
				if r.firstErr == nil {
					r.firstErr = err
				}
			}
		})
	}
	wg.Wait()
	return r
}
