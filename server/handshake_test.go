package server

import (
	"context"
	"log/slog"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// handshakeLog passes the records of failed TLS handshakes to a channel.
type handshakeLog struct{ records chan slog.Record }

func (h handshakeLog) Enabled(context.Context, slog.Level) bool { return true }
func (h handshakeLog) WithAttrs([]slog.Attr) slog.Handler       { return h }
func (h handshakeLog) WithGroup(string) slog.Handler            { return h }
func (h handshakeLog) Handle(_ context.Context, r slog.Record) error {
	if strings.Contains(r.Message, "TLS handshake error") {
		select {
		case h.records <- r:
		default: // more than the test waits for
		}
	}
	return nil
}

// startTLSServe runs a server with TLS, as startServe does, logging its
// failed handshakes to the handshakeLog returned.
func startTLSServe(t *testing.T) (addr string, h handshakeLog) {
	t.Helper()
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	writeCert(t, certFile, keyFile, "checked")
	cfg := testConfig(t)
	cfg.TLSCert, cfg.TLSKey = certFile, keyFile
	h = handshakeLog{records: make(chan slog.Record, 8)}
	addr, _ = startServe(t, cfg, nil, WithLogger(slog.New(h)))
	return addr, h
}

// A connection closed before its TLS handshake began (a load balancer's
// or Kubernetes' TCP health check of an HTTPS mirror, every few seconds
// from each of its nodes) is logged at DEBUG: at WARN, net/http's line
// for each, "http: TLS handshake error from ...: EOF", flooded the log
// with warnings about nothing. A client that spoke plain HTTP to it, a
// real client's mistake, is still a warning.
func TestTCPHealthChecksOfHTTPSAreNoWarnings(t *testing.T) {
	addr, h := startTLSServe(t)

	const checks = 3
	for range checks {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		c.Close()
	}
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Write([]byte("GET /v2/ HTTP/1.1\r\nHost: mirror\r\n\r\n")); err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	watchdog := time.NewTimer(30 * time.Second)
	defer watchdog.Stop()
	var debug, warn int
	for debug+warn < checks+1 {
		select {
		case r := <-h.records:
			eof := strings.HasSuffix(r.Message, ": EOF")
			switch {
			case eof && r.Level == slog.LevelDebug:
				debug++
			case !eof && r.Level == slog.LevelWarn:
				warn++
			default:
				t.Fatalf("logged at %s: %q", r.Level, r.Message)
			}
		case <-watchdog.C:
			t.Fatalf("%d of %d failed handshakes logged after 30s", debug+warn, checks+1)
		}
	}
	if debug != checks || warn != 1 {
		t.Errorf("%d health checks logged at DEBUG and %d plain HTTP requests at WARN; want %d and 1", debug, warn, checks)
	}
}

// A health check that ends its connection with a reset (RST) rather than
// a FIN before the handshake began (HAProxy's checks close so, to leave
// no TIME_WAIT) is the same nothing as one that closes it: net/http's
// line for it ends "connection reset by peer", logged at DEBUG too.
func TestTCPHealthChecksResetAreNoWarnings(t *testing.T) {
	addr, h := startTLSServe(t)

	const checks = 3
	for range checks {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		if err := c.(*net.TCPConn).SetLinger(0); err != nil { // Close sends RST
			t.Fatal(err)
		}
		c.Close()
	}
	watchdog := time.NewTimer(30 * time.Second)
	defer watchdog.Stop()
	for i := range checks {
		select {
		case r := <-h.records:
			if r.Level != slog.LevelDebug {
				t.Errorf("health check %d reset before its handshake logged at %s: %q", i, r.Level, r.Message)
			}
		case <-watchdog.C:
			t.Fatalf("%d of %d failed handshakes logged after 30s", i, checks)
		}
	}
}
