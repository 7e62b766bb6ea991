package bench

import (
	"bytes"
	"context"
	"crypto/tls"
	"io"
	"net/http"
	"testing"
)

// TestNginxServesTheBlob checks the nginx the benchmarks compare the
// mirror with (skipped without nginx): it serves the bytes put under www
// with X-Cache: hit, over plain HTTP and over TLS 1.3 with
// TLS_AES_128_GCM_SHA256 and the test certificate, and its master and two
// workers are measurable.
func TestNginxServesTheBlob(t *testing.T) {
	bin := nginxBinary()
	if bin == "" {
		t.Skip(noNginx)
	}
	cert := newTestCert(t)
	n := startNginx(t, bin, cert)
	data := randomBytes(1 << 20)
	path := "/v2/library/bench/blobs/sha256:0123"
	n.put(t, path, data)
	tr := NewTransport(1)
	tr.TLSClientConfig = cert.clientConfig()
	defer tr.CloseIdleConnections()
	hc := &http.Client{Transport: tr}
	for _, base := range []string{n.url, n.tlsURL} {
		req, err := http.NewRequestWithContext(context.Background(), http.MethodGet, base+path, nil)
		if err != nil {
			t.Fatal(err)
		}
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil || resp.StatusCode != http.StatusOK || !bytes.Equal(body, data) {
			t.Fatalf("GET %s: %s, %d bytes, %v", base+path, resp.Status, len(body), err)
		}
		if c := resp.Header.Get("X-Cache"); c != "hit" {
			t.Errorf("GET %s: X-Cache %q", base+path, c)
		}
		if base == n.tlsURL {
			if resp.TLS == nil || resp.TLS.Version != tls.VersionTLS13 || resp.TLS.CipherSuite != tls.TLS_AES_128_GCM_SHA256 {
				t.Errorf("GET %s: TLS %+v", base+path, resp.TLS)
			}
		}
	}
	s := n.procs("nginx", n.url)
	if got := len(s.pids()); got != 3 {
		t.Errorf("nginx runs %d processes, want a master and 2 workers", got)
	}
	if rss := s.memMiB("VmRSS"); rss <= 0 {
		t.Errorf("nginx's RSS: %v MiB", rss)
	}
}
