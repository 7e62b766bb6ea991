package server

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// writeCert writes a self-signed certificate for 127.0.0.1 with the given
// common name, and returns its pool.
func writeCert(t *testing.T, certFile, keyFile, cn string) *x509.CertPool {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kb, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600)
	os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}), 0o600)
	cert, _ := x509.ParseCertificate(der)
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return pool
}

// servedName connects to addr over HTTPS (a new connection, a new
// handshake), trusting pool, and returns the common name of the
// certificate served.
func servedName(addr string, pool *x509.CertPool) (string, error) {
	c := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}, DisableKeepAlives: true}}
	resp, err := c.Get("https://" + addr + "/v2/")
	if err != nil {
		return "", err
	}
	resp.Body.Close()
	return resp.TLS.PeerCertificates[0].Subject.CommonName, nil
}

// serve answers HTTPS with --tls-cert/--tls-key, and SIGHUP makes it pick
// up a renewed certificate.
func TestServeTLSAndReload(t *testing.T) {
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	pool := writeCert(t, certFile, keyFile, "first")
	cfg := testConfig(t)
	cfg.TLSCert, cfg.TLSKey = certFile, keyFile
	hup := make(chan os.Signal) // unbuffered: a send returns once serve takes it
	addr, stop := startServe(t, cfg, hup)
	defer func() {
		if err := stop(); err != nil {
			t.Error(err)
		}
	}()

	if cn, err := servedName(addr, pool); err != nil || cn != "first" {
		t.Fatalf("HTTPS: %q, %v", cn, err)
	}
	pool2 := writeCert(t, certFile, keyFile, "second")
	// serve's loop handles one signal at a time: once it has taken the
	// second, it has finished reloading for the first.
	hup <- syscall.SIGHUP
	hup <- syscall.SIGHUP
	if cn, err := servedName(addr, pool2); err != nil || cn != "second" {
		t.Fatalf("after SIGHUP: %q, %v; want the renewed certificate", cn, err)
	}
}

func TestCertReloaderKeepsCertOnBadFiles(t *testing.T) {
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "c.pem"), filepath.Join(dir, "k.pem")
	writeCert(t, certFile, keyFile, "ok")
	r, err := newCertReloader(certFile, keyFile, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(certFile, []byte("garbage"), 0o600)
	if err := r.reload(); err == nil {
		t.Fatal("garbage accepted")
	}
	c, _ := r.getCertificate(nil)
	if leaf, _ := x509.ParseCertificate(c.Certificate[0]); leaf.Subject.CommonName != "ok" {
		t.Fatal("the good certificate was dropped")
	}
	if _, err := newCertReloader(filepath.Join(dir, "none"), keyFile, slog.New(slog.DiscardHandler)); err == nil {
		t.Fatal("a missing certificate was accepted")
	}
}

// New loads the TLS pair, so that a server that cannot serve HTTPS fails
// before it listens: a key that does not match its certificate, or a
// missing file, is named in the error.
func TestNewFailsOnBadTLSPair(t *testing.T) {
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	otherCert, otherKey := filepath.Join(dir, "other-cert.pem"), filepath.Join(dir, "other-key.pem")
	writeCert(t, certFile, keyFile, "one")
	writeCert(t, otherCert, otherKey, "two")
	for _, c := range []struct {
		name, cert, key string
		want            []string
	}{
		{"mismatched key", certFile, otherKey, []string{"tls_cert", certFile, otherKey, "does not match"}},
		{"missing certificate", filepath.Join(dir, "none.pem"), keyFile, []string{"tls_cert", "none.pem"}},
		{"missing key", certFile, filepath.Join(dir, "nokey.pem"), []string{"tls_key", "nokey.pem"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			cfg := testConfig(t)
			cfg.TLSCert, cfg.TLSKey = c.cert, c.key
			s, err := New(t.Context(), cfg)
			if err == nil {
				s.Close()
				t.Fatal("New accepted a TLS pair that cannot serve")
			}
			for _, w := range c.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not name %q", err, w)
				}
			}
		})
	}
}

// Replicas trust each other's certificate by their own (peerTLS), not by
// the address dialled: a peer serving the same certificate is trusted,
// one serving a certificate this replica's chain does not vouch for is
// not, whatever it names.
func TestPeerTLSTrustsOnlyTheReplicasCertificate(t *testing.T) {
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	otherCert, otherKey := filepath.Join(dir, "other-cert.pem"), filepath.Join(dir, "other-key.pem")
	writeCert(t, certFile, keyFile, "mirror")
	writeCert(t, otherCert, otherKey, "mirror")
	own, err := newCertReloader(certFile, keyFile, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	other, err := newCertReloader(otherCert, otherKey, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	state := func(r *certReloader) tls.ConnectionState {
		c, _ := r.getCertificate(nil)
		return tls.ConnectionState{PeerCertificates: []*x509.Certificate{c.Leaf}}
	}
	if err := own.verifyPeer(state(own)); err != nil {
		t.Errorf("a peer serving the same certificate was refused: %v", err)
	}
	if err := own.verifyPeer(state(other)); err == nil {
		t.Error("a peer serving a certificate of another authority was trusted")
	}
	if err := own.verifyPeer(tls.ConnectionState{}); err == nil {
		t.Error("a peer without a certificate was trusted")
	}
}

// TestRenewedCertificateServedWithoutSignal: a certificate renewed on disk
// (cert-manager writing a Kubernetes secret's new files, certbot's deploy
// of a renewal) is served from the next handshake on, with no SIGHUP,
// which nothing sends in a container; a pair caught half-written (the
// certificate new, the key still the old one's) keeps the current one
// until the key follows.
func TestRenewedCertificateServedWithoutSignal(t *testing.T) {
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	pool := writeCert(t, certFile, keyFile, "first")
	cfg := testConfig(t)
	cfg.TLSCert, cfg.TLSKey = certFile, keyFile
	addr, _ := startServe(t, cfg, nil)
	if cn, err := servedName(addr, pool); err != nil || cn != "first" {
		t.Fatalf("HTTPS: %q, %v", cn, err)
	}

	// Half-written: the new certificate beside the old key.
	next := t.TempDir()
	nextCert, nextKey := filepath.Join(next, "cert.pem"), filepath.Join(next, "key.pem")
	pool2 := writeCert(t, nextCert, nextKey, "second")
	copyFile(t, nextCert, certFile)
	if cn, err := servedName(addr, pool); err != nil || cn != "first" {
		t.Fatalf("with the key not yet renewed: %q, %v; want the current certificate kept", cn, err)
	}
	copyFile(t, nextKey, keyFile)
	if cn, err := servedName(addr, pool2); err != nil || cn != "second" {
		t.Fatalf("after the renewal on disk: %q, %v; want the renewed certificate, without a SIGHUP", cn, err)
	}
}

// copyFile writes the content of from over to, as a renewal rewrites a
// file in place.
func copyFile(t *testing.T, from, to string) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestPeerTLSFollowsARenewedCertificate: a replica checks its peers by
// its certificate as the files hold it now, not as it was last served: a
// renewal that changes the chain (cert-manager's self-signed issuer makes
// a new certificate each time, shared by every replica through one
// secret) would otherwise have the peers that renewed refused, as long as
// no client's handshake had made this replica load the new files, and
// every miss fetched here.
func TestPeerTLSFollowsARenewedCertificate(t *testing.T) {
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	writeCert(t, certFile, keyFile, "mirror")
	own, err := newCertReloader(certFile, keyFile, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	writeCert(t, certFile, keyFile, "mirror") // renewed: a new self-signed certificate
	renewed, err := newCertReloader(certFile, keyFile, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	c, _ := renewed.getCertificate(nil)
	if err := own.verifyPeer(tls.ConnectionState{PeerCertificates: []*x509.Certificate{c.Leaf}}); err != nil {
		t.Errorf("a peer serving the renewed certificate of the same files was refused: %v", err)
	}
}
