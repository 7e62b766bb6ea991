package server

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"sync"
)

// certReloader serves a certificate it reloads from its files when they
// change (checked at each TLS handshake: cert-manager and certbot renew
// the files in place, and nothing sends a container a SIGHUP), and on
// SIGHUP, without a restart.
type certReloader struct {
	certFile, keyFile string
	log               *slog.Logger
	mu                sync.RWMutex
	cert              *tls.Certificate

	// checkMu serialises reloads; seen is the files as last loaded or
	// tried (nil: missing), so that a change is acted on, and a pair
	// that fails to load is reported, once.
	checkMu sync.Mutex
	seen    [2]os.FileInfo
}

func newCertReloader(certFile, keyFile string, log *slog.Logger) (*certReloader, error) {
	c := &certReloader{certFile: certFile, keyFile: keyFile, log: log}
	return c, c.reload()
}

// reload reads the files again (on SIGHUP); on error the current
// certificate stays. Errors name the key and the file at fault.
func (c *certReloader) reload() error {
	c.checkMu.Lock()
	defer c.checkMu.Unlock()
	// Stat before reading: a change made while reading is seen again by
	// the next handshake.
	c.seen = c.stat()
	return c.load()
}

// reloadIfChanged reloads the files if either changed (its size,
// modification time or identity: a Kubernetes secret's files are swapped
// by a symlink) since they were last loaded or tried. A pair that fails
// to load (caught half-written: a new certificate beside the old key) is
// logged once and the current certificate stays, until the files change
// again.
func (c *certReloader) reloadIfChanged() {
	files := c.stat()
	c.checkMu.Lock()
	defer c.checkMu.Unlock()
	if sameFile(c.seen[0], files[0]) && sameFile(c.seen[1], files[1]) {
		return
	}
	c.seen = files
	if err := c.load(); err != nil {
		c.log.Error("reloading the changed TLS certificate; keeping the current one", "error", err)
		return
	}
	c.log.Info("reloaded the changed TLS certificate", "cert", c.certFile)
}

func (c *certReloader) stat() [2]os.FileInfo {
	cert, _ := os.Stat(c.certFile)
	key, _ := os.Stat(c.keyFile)
	return [2]os.FileInfo{cert, key}
}

// sameFile reports whether two looks at a file saw the same version of
// it (both nil: missing both times).
func sameFile(a, b os.FileInfo) bool {
	if a == nil || b == nil {
		return a == nil && b == nil
	}
	return os.SameFile(a, b) && a.Size() == b.Size() && a.ModTime().Equal(b.ModTime())
}

// load reads the files into the certificate served; c.checkMu is held.
func (c *certReloader) load() error {
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

// getCertificate returns the certificate of the files as they are now.
func (c *certReloader) getCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	c.reloadIfChanged()
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
	// The files as they are now: peers that renewed serve the new chain
	// whether or not a client has made this replica load it yet.
	c.reloadIfChanged()
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
