// Package cluster_test runs several docker-mirror replicas in-process on
// loopback, each with its own data directory (index, spool) and one store
// they share, and proves that they act as one cache.
package cluster_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/docker-mirror/docker-mirror/cluster"
	"github.com/docker-mirror/docker-mirror/config"
	"github.com/docker-mirror/docker-mirror/proxy"
	"github.com/docker-mirror/docker-mirror/server"
	"github.com/docker-mirror/docker-mirror/tests/fixture"
	"github.com/docker-mirror/docker-mirror/tests/servertest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		goleak.IgnoreTopFunction("github.com/docker/go-events.(*Broadcaster).run"))
}

// replica is one running docker-mirror of a test cluster.
type replica struct {
	url    string
	cfg    config.Config
	opts   []server.Option
	srv    *server.Server
	hs     *http.Server
	ln     net.Listener
	cancel context.CancelFunc
	dead   bool
}

// storeFor says which store the replicas share: the configuration's
// storage block.
type storeFor func(t *testing.T) map[string]map[string]any

// sharedDir is a filesystem store rooted in one directory every replica
// uses (a shared disk).
func sharedDir(t *testing.T) map[string]map[string]any {
	return map[string]map[string]any{"filesystem": {"rootdirectory": t.TempDir()}}
}

// startCluster starts n replicas of a mirror of up (as docker.io) on the
// store store makes. peersOf(i, urls) lists the peers replica i is
// configured with (nil: all of them); edits change every replica's
// configuration. Replicas are stopped when the test ends.
func startCluster(t *testing.T, n int, up *fixture.Upstream, store storeFor, peersOf func(i int, urls []string) (self string, peers []string), edits ...func(*config.Config)) []*replica {
	t.Helper()
	return startClusterWith(t, n, up, store, peersOf, nil, edits...)
}

// startClusterWith is startCluster with extra(i) added to replica i's
// server options (nil: none), after the harness's own.
func startClusterWith(t *testing.T, n int, up *fixture.Upstream, store storeFor, peersOf func(i int, urls []string) (self string, peers []string), extra func(i int) []server.Option, edits ...func(*config.Config)) []*replica {
	t.Helper()
	lns := make([]net.Listener, n)
	urls := make([]string, n)
	for i := range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		lns[i], urls[i] = ln, "http://"+ln.Addr().String()
	}
	storage := store(t)
	clock := servertest.NewClock()
	rs := make([]*replica, n)
	for i := range n {
		cfg := servertest.Config(t, t.TempDir(), []servertest.Upstream{{Host: proxy.DefaultHost, URL: up.URL()}})
		cfg.Storage = storage
		self, peers := urls[i], urls
		if peersOf != nil {
			self, peers = peersOf(i, urls)
		}
		cfg.Cluster = config.Cluster{Self: self, Peers: peers}
		for _, edit := range edits {
			edit(&cfg)
		}
		if err := cfg.Validate(); err != nil {
			t.Fatal(err)
		}
		r := &replica{url: urls[i], cfg: cfg, opts: []server.Option{server.WithLogger(testLogger(i)), server.WithClock(clock.Now)}}
		if extra != nil {
			r.opts = append(r.opts, extra(i)...)
		}
		r.start(t, lns[i])
		rs[i] = r
		t.Cleanup(r.kill)
	}
	return rs
}

// start runs the replica's server on ln (HTTPS if its configuration
// has a certificate).
func (r *replica) start(t *testing.T, ln net.Listener) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	srv, err := server.New(ctx, r.cfg, r.opts...)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	if err := srv.Start(ctx); err != nil {
		cancel()
		srv.Close()
		t.Fatal(err)
	}
	r.srv, r.cancel, r.dead = srv, cancel, false
	// The goroutines serve this start's server, not r.hs: a restart
	// replaces it, maybe before they read it.
	hs := &http.Server{Handler: srv.Handler()}
	r.hs, r.ln = hs, ln
	if cert, key := r.cfg.TLSCert, r.cfg.TLSKey; cert != "" {
		go func() { _ = hs.ServeTLS(ln, cert, key) }()
		return
	}
	go func() { _ = hs.Serve(ln) }()
}

// restart kills the replica and starts it again at the same URL with
// its data directory.
func (r *replica) restart(t *testing.T) {
	t.Helper()
	r.kill()
	ln, err := net.Listen("tcp", strings.TrimPrefix(r.url, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	r.start(t, ln)
}

// restartEmpty kills the replica and starts it again at the same URL
// with a new, empty data directory (a new pod on the same address).
func (r *replica) restartEmpty(t *testing.T) {
	t.Helper()
	r.kill()
	ln, err := net.Listen("tcp", strings.TrimPrefix(r.url, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	r.cfg.Data = t.TempDir()
	r.start(t, ln)
}

// kill stops a replica abruptly: its listener and every connection close
// at once, mid-body or not, then its background work ends.
func (r *replica) kill() {
	if r.dead {
		return
	}
	r.dead = true
	r.hs.Close()
	r.ln.Close() // its port free at once, even before Serve took it
	r.cancel()
	r.srv.Close()
}

// waitIdle waits for the replica's downloads and background mirroring.
func (r *replica) waitIdle(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := r.srv.Proxy.WaitIdle(ctx); err != nil {
		t.Fatalf("%s: background work did not finish: %v", r.url, err)
	}
}

// metric reads one sample of the replica's /metrics: the sum of name's
// series whose labels include labels.
func (r *replica) metric(t *testing.T, name string, labels map[string]string) float64 {
	t.Helper()
	w := httptest.NewRecorder()
	r.srv.Metrics.Handler().ServeHTTP(w, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	if w.Code != http.StatusOK {
		t.Fatalf("%s/metrics: %d", r.url, w.Code)
	}
	var sum float64
	for _, line := range strings.Split(w.Body.String(), "\n") {
		series, value, ok := strings.Cut(line, " ")
		if !ok || strings.HasPrefix(line, "#") {
			continue
		}
		n, lbls, _ := strings.Cut(series, "{")
		if n != name {
			continue
		}
		match := true
		for k, v := range labels {
			if !strings.Contains(lbls, k+"=\""+v+"\"") {
				match = false
			}
		}
		if match {
			f, err := strconv.ParseFloat(value, 64)
			if err != nil {
				t.Fatalf("%s: %q", name, line)
			}
			sum += f
		}
	}
	return sum
}

const manifestAccept = "application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json"

// get sends a GET and reads the whole answer; err is set for a body that
// broke before its end.
func get(ctx context.Context, url string, header map[string]string) (int, http.Header, []byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, nil, nil, err
	}
	req.Header.Set("Accept", manifestAccept)
	for k, v := range header {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, nil, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, body, err
}

func sha(b []byte) string {
	s := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(s[:])
}

// wantBlob GETs a blob and checks it whole, by digest.
func wantBlob(t *testing.T, base, repo, dgst string) []byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	st, h, body, err := get(ctx, base+"/v2/"+repo+"/blobs/"+dgst, nil)
	if err != nil || st != http.StatusOK || sha(body) != dgst || h.Get("Docker-Content-Digest") != dgst {
		t.Fatalf("blob %s from %s: status %d, err %v, digest %s, header %q", dgst, base, st, err, sha(body), h.Get("Docker-Content-Digest"))
	}
	return body
}

// owner is the replica that owns key when all are up.
func owner(rs []*replica, key string) *replica {
	urls := make([]string, len(rs))
	for i, r := range rs {
		urls[i] = r.url
	}
	o := cluster.Rank(key, urls)[0]
	for _, r := range rs {
		if r.url == o {
			return r
		}
	}
	return nil
}

// blobGets counts the upstream's GETs of one blob.
func blobGets(up *fixture.Upstream, dgst string) int {
	n := 0
	for _, r := range up.Requests() {
		if r.Method == http.MethodGet && r.Kind == fixture.KindBlob && strings.HasSuffix(r.Path, "/"+dgst) {
			n++
		}
	}
	return n
}

func testLogger(i int) *slog.Logger {
	if os.Getenv("CLUSTER_TEST_LOG") == "" {
		return servertest.Logger()
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug})).With("replica", i)
}
