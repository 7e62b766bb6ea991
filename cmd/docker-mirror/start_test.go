package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/docker-mirror/docker-mirror/storage"
)

// writePair writes a self-signed certificate and its key.
func writePair(t *testing.T, certFile, keyFile string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "mirror"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kb, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}), 0o600); err != nil {
		t.Fatal(err)
	}
}

// Every start-up error ends serve at once: exit 1 and one line on stderr
// naming the problem (no log line first, no serving, no hang): a TLS key
// that does not match its certificate, a missing certificate, a busy
// port, a data directory that cannot be used, an index held by another
// process, a missing htpasswd file.
func TestStartErrorsExitOneWithOneLine(t *testing.T) {
	dir := t.TempDir()
	cert, key := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	otherCert, otherKey := filepath.Join(dir, "other-cert.pem"), filepath.Join(dir, "other-key.pem")
	writePair(t, cert, key)
	writePair(t, otherCert, otherKey)

	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()

	notADir := filepath.Join(dir, "file")
	os.WriteFile(notADir, []byte("not a directory"), 0o644)
	foreign := filepath.Join(dir, "foreign")
	os.MkdirAll(foreign, 0o755)
	os.WriteFile(filepath.Join(foreign, "notes.txt"), []byte("someone else's"), 0o644)
	locked := filepath.Join(dir, "locked")
	os.MkdirAll(locked, 0o755)
	ix, err := storage.OpenIndex(filepath.Join(locked, "index.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer ix.Close()

	// An S3 bucket that refuses the key: the AWS SDK's error spans lines.
	t.Setenv("AWS_EC2_METADATA_DISABLED", "true")
	s3 := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusForbidden)
		w.Write([]byte(`<Error><Code>SignatureDoesNotMatch</Code><Message>The request signature we calculated does not match the signature you provided.</Message></Error>`))
	}))
	defer s3.Close()

	data := func() string { return filepath.Join(t.TempDir(), "data") }
	cases := []struct {
		name string
		args []string
		want []string
	}{
		{"mismatched key", []string{"--tls-cert", cert, "--tls-key", otherKey}, []string{"tls_cert", cert, otherKey, "does not match"}},
		{"missing certificate", []string{"--tls-cert", filepath.Join(dir, "none.pem"), "--tls-key", key}, []string{"tls_cert", "none.pem"}},
		{"busy port", []string{"--listen", busy.Addr().String()}, []string{"listen", busy.Addr().String(), "in use"}},
		{"data is a file", []string{"--data", notADir}, []string{"data directory", notADir}},
		{"foreign data", []string{"--data", foreign}, []string{"data directory", foreign, "empty"}},
		{"index locked", []string{"--data", locked}, []string{"index", "another process"}},
		{"S3 refuses the key", []string{"--config", writeConfig(t, "storage:\n  s3: {region: us-east-1, bucket: b, forcepathstyle: true, accesskey: AKIAEXAMPLE, secretkey: hunter2, regionendpoint: "+s3.URL+"}\n")},
			[]string{"storage.s3: SignatureDoesNotMatch: The request signature we calculated does not match the signature you provided (HTTP 403)"}},
		{"missing htpasswd", []string{"--config", writeConfig(t, "auth:\n  htpasswd: "+filepath.Join(dir, "nohtpasswd")+"\n")}, []string{"auth.htpasswd", "nohtpasswd"}},
	}
	if os.Geteuid() != 0 { // root reads any directory
		unreadable := filepath.Join(dir, "unreadable")
		os.MkdirAll(unreadable, 0o755)
		os.WriteFile(filepath.Join(unreadable, "index.db"), nil, 0o600)
		os.Chmod(unreadable, 0)
		t.Cleanup(func() { os.Chmod(unreadable, 0o755) })
		cases = append(cases, struct {
			name string
			args []string
			want []string
		}{"unreadable data", []string{"--data", unreadable}, []string{unreadable, "permission denied"}})
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			args := append([]string{"serve", "--listen", "127.0.0.1:0", "--data", data(), "--upstream", "http://127.0.0.1:1"}, c.args...)
			code, _, stderr := runCmd(t, context.Background(), args...)
			if code != 1 {
				t.Errorf("exit %d, want 1 (stderr %q)", code, stderr)
			}
			line := strings.TrimSpace(stderr)
			if strings.Contains(line, "\n") || !strings.HasPrefix(line, "docker-mirror serve: ") {
				t.Errorf("want one line \"docker-mirror serve: ...\", got %q", stderr)
			}
			if strings.Contains(line, "hunter2") {
				t.Errorf("%q shows a secret", line)
			}
			for _, w := range c.want {
				if !strings.Contains(line, w) {
					t.Errorf("%q does not name %q", line, w)
				}
			}
		})
	}
}

// writeConfig writes a configuration file and returns its path.
func writeConfig(t *testing.T, text string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(p, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// A SIGHUP that arrives while serve starts (systemctl reload right after
// systemctl start, while the store is checked) is kept for the server,
// which reloads once it serves: it used to end the process at once, with
// no word, as the signal's default does. Here the start waits on an S3
// bucket, which is sent the signal's time to arrive and then refuses.
func TestHangupDuringStartDoesNotKill(t *testing.T) {
	t.Setenv("AWS_EC2_METADATA_DISABLED", "true")
	entered, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	s3 := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// Only this serve's requests (its bucket's): a request of an
		// earlier test's store still going, to a port used again,
		// would send the signal before this serve takes it, ending
		// the test binary (seen once in a CI run).
		if strings.HasPrefix(r.URL.Path, "/hangup-start") {
			once.Do(func() { close(entered) })
			<-release
		}
		w.WriteHeader(http.StatusForbidden)
		w.Write([]byte(`<Error><Code>AccessDenied</Code><Message>Access Denied</Message></Error>`))
	}))
	defer s3.Close()
	cfg := writeConfig(t, "storage:\n  s3: {region: us-east-1, bucket: hangup-start, forcepathstyle: true, accesskey: AKIAEXAMPLE, secretkey: x, regionendpoint: "+s3.URL+"}\n")
	go func() {
		<-entered
		// As systemctl reload sends it; without a handler it would end
		// the test binary.
		if err := hangup(); err != nil {
			t.Error(err)
		}
		close(release)
	}()
	code, _, stderr := runCmd(t, context.Background(), "serve", "--listen", "127.0.0.1:0", "--data", filepath.Join(t.TempDir(), "data"),
		"--upstream", "http://127.0.0.1:1", "--config", cfg)
	if code != 1 || !strings.Contains(stderr, "AccessDenied") {
		t.Errorf("exit %d, %q; want the bucket's refusal", code, stderr)
	}
}

// A page of the tags, links or fill records damaged (a disk's bad
// sectors, a block a filesystem's repair zeroed) passes the index's open;
// the start's full read of them, in the background, met it with a panic in
// bbolt, and serve died right after starting with a stack trace. serve now
// stops, saying in one line that the index is damaged, naming it and what
// to do, as a start does of one damaged where the open reads.
func TestServeDamagedIndex(t *testing.T) {
	dir, img, _ := dataDir(t)
	index := filepath.Join(dir, "index.db")
	// The image in more repositories: its tags, links and fill records
	// then fill pages of their own (a few are kept inline in their
	// bucket's parent).
	ix, err := storage.OpenIndex(index)
	if err != nil {
		t.Fatal(err)
	}
	rec, _, err := ix.Manifest(digest.Digest(img.Digest))
	if err != nil {
		t.Fatal(err)
	}
	for i := range 64 {
		repo := fmt.Sprint("library/copy", i)
		if err := ix.RecordManifest(storage.ManifestEntry{Upstream: "docker.io", Repo: repo, Digest: digest.Digest(img.Digest), Record: rec, Tag: "v1",
			Fill: &storage.FillRecord{Upstream: "docker.io", Repo: repo, State: storage.FillComplete}}); err != nil {
			t.Fatal(err)
		}
	}
	if err := ix.Close(); err != nil {
		t.Fatal(err)
	}
	damage := bucketPageDamager(t, index)
	tried := 0
	for _, name := range []string{"tags", "links", "mirrors"} {
		pg, ok := damage.pages[name]
		if !ok {
			continue // inline in its parent: no page of its own
		}
		tried++
		damage.write(t, pg)
		// (The deadline only bounds a serve that does not stop: it
		// then exits 0, and fails below.)
		ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
		code, _, stderr := runCmd(t, ctx, "serve", "--listen", "127.0.0.1:0", "--data", dir, "--upstream", "http://127.0.0.1:1")
		cancel()
		var damaged []string
		for _, l := range strings.Split(stderr, "\n") {
			if strings.Contains(l, index+" is damaged") && strings.Contains(l, "move it aside") {
				damaged = append(damaged, l)
			}
		}
		if code != 1 || len(damaged) != 1 || strings.Contains(stderr, "goroutine ") {
			t.Errorf("serve with bucket %s's page %d damaged: exit %d, %q; want exit 1 and one line saying %s is damaged", name, pg, code, stderr, index)
		}
	}
	if tried != 3 {
		t.Fatalf("not all of the tags, links and fill records have a page of their own: %v", damage.pages)
	}
}
