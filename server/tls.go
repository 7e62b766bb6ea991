package server

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"slices"
	"sync"
)

// certReloader serves a certificate it can reload from its files, so a
// renewed certificate takes effect on SIGHUP without a restart.
type certReloader struct {
	certFile, keyFile string
	mu                sync.RWMutex
	cert              *tls.Certificate
}

func newCertReloader(certFile, keyFile string) (*certReloader, error) {
	c := &certReloader{certFile: certFile, keyFile: keyFile}
	return c, c.reload()
}

// reload reads the files again; on error the current certificate stays.
// Errors name the key and the file at fault.
func (c *certReloader) reload() error {
	certPEM, err := os.ReadFile(c.certFile)
	if err != nil {
		return fmt.Errorf("tls_cert: %w", err)
	}
	keyPEM, err := os.ReadFile(c.keyFile)
	if err != nil {
		return fmt.Errorf("tls_key: %w", err)
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return fmt.Errorf("tls_cert %s, tls_key %s: %w", c.certFile, c.keyFile, err)
	}
	c.mu.Lock()
	c.cert = &cert
	c.mu.Unlock()
	return nil
}

func (c *certReloader) getCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.cert, nil
}

// peerTLS is the TLS configuration a replica serving HTTPS reaches the
// others with. They serve the certificate clients trust them by, which
// names the service (a load balancer's or a Kubernetes Service's name),
// not each replica's address, and is often an internal authority's,
// which the system does not trust: checked as a client checks it, every
// peer would be marked down, and every replica would fetch every miss
// itself. A peer is trusted instead if its chain leads to the system's
// authorities or to one in this replica's own chain, and its certificate
// is valid for a name this replica's is (a renewed one names the same).
func (c *certReloader) peerTLS() *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		// Not skipped: VerifyConnection checks the chain and the names,
		// which are not the address dialled.
		InsecureSkipVerify: true,
		VerifyConnection:   c.verifyPeer,
	}
}

// verifyPeer checks a peer's certificate as peerTLS says.
func (c *certReloader) verifyPeer(cs tls.ConnectionState) error {
	if len(cs.PeerCertificates) == 0 {
		return errors.New("the peer sent no certificate")
	}
	c.mu.RLock()
	own := c.cert
	c.mu.RUnlock()
	roots, err := x509.SystemCertPool()
	if err != nil {
		roots = x509.NewCertPool()
	}
	var ownLeaf *x509.Certificate
	for _, der := range own.Certificate {
		cert, err := x509.ParseCertificate(der)
		if err != nil {
			return fmt.Errorf("tls_cert: %w", err)
		}
		roots.AddCert(cert)
		if ownLeaf == nil {
			ownLeaf = cert
		}
	}
	peer := cs.PeerCertificates[0]
	intermediates := x509.NewCertPool()
	for _, cert := range cs.PeerCertificates[1:] {
		intermediates.AddCert(cert)
	}
	if _, err := peer.Verify(x509.VerifyOptions{Roots: roots, Intermediates: intermediates,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err != nil {
		return fmt.Errorf("peer certificate: %w", err)
	}
	names := slices.Clone(ownLeaf.DNSNames)
	for _, ip := range ownLeaf.IPAddresses {
		names = append(names, ip.String())
	}
	for _, name := range names {
		if peer.VerifyHostname(name) == nil {
			return nil
		}
	}
	if len(names) == 0 && bytes.Equal(peer.Raw, ownLeaf.Raw) {
		return nil
	}
	return fmt.Errorf("peer certificate: valid for none of this replica's names %v", names)
}
