package cluster_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"io"
	"math/big"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/docker-mirror/docker-mirror/config"
	"github.com/docker-mirror/docker-mirror/tests/fixture"
)

// serviceCert writes a certificate for the name clients reach the
// replicas by (a load balancer's, a Service's), signed by an authority
// of its own as an internal mirror's is, and returns the pool that
// trusts it. It names no address: replicas reach each other by theirs.
func serviceCert(t *testing.T, dir, name string) (certFile, keyFile string, pool *x509.CertPool) {
	t.Helper()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	ca := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "internal CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, ca, ca, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, _ := x509.ParseCertificate(caDER)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	leaf := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: name}, DNSNames: []string{name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, leaf, caCert, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	kb, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	chain := append(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER})...)
	if err := os.WriteFile(certFile, chain, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}), 0o600); err != nil {
		t.Fatal(err)
	}
	pool = x509.NewCertPool()
	pool.AddCert(caCert)
	return certFile, keyFile, pool
}

// Replicas serving HTTPS (tls_cert) with the certificate clients trust
// them by, from an internal authority and for the name clients use, reach
// each other by their addresses: a miss goes to its owner, as over plain
// HTTP, instead of every peer being marked down (the system's authorities
// do not know the certificate, which names no address) and every replica
// fetching every miss itself.
func TestReplicasServingTLSReachEachOther(t *testing.T) {
	up := fixture.StartUpstream(t)
	dgst := up.PushBlob(t, "library/x", []byte(strings.Repeat("layer ", 10000)))
	certFile, keyFile, pool := serviceCert(t, t.TempDir(), "mirror.test")
	https := func(u string) string { return "https://" + strings.TrimPrefix(u, "http://") }
	rs := startCluster(t, 2, up, sharedDir, func(i int, urls []string) (string, []string) {
		return https(urls[i]), []string{https(urls[0]), https(urls[1])}
	}, func(c *config.Config) { c.TLSCert, c.TLSKey = certFile, keyFile })
	for _, r := range rs {
		r.url = https(r.url)
	}
	o := owner(rs, dgst)
	other := rs[0]
	if other == o {
		other = rs[1]
	}
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, ServerName: "mirror.test"}}}
	defer client.CloseIdleConnections()
	resp, err := client.Get(other.url + "/v2/library/x/blobs/" + dgst)
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || resp.StatusCode != http.StatusOK || sha(body) != dgst {
		t.Fatalf("blob from the replica that does not own it: %d, %v", resp.StatusCode, err)
	}
	if ok, fallback := other.metric(t, "docker_mirror_cluster_forwarded_total", map[string]string{"kind": "blob", "result": "ok"}),
		other.metric(t, "docker_mirror_cluster_forwarded_total", map[string]string{"kind": "blob", "result": "fallback"}); ok != 1 || fallback != 0 {
		for _, p := range other.srv.Cluster.Peers() {
			t.Logf("peer %s up=%v: %s", p.URL, p.Up, p.Error)
		}
		t.Fatalf("blob misses sent to the owner: ok %v, fallback %v; want the owner to answer", ok, fallback)
	}
}
