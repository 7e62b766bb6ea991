package cluster_test

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/docker-mirror/docker-mirror/config"
	"github.com/docker-mirror/docker-mirror/proxy"
	"github.com/docker-mirror/docker-mirror/server"
	"github.com/docker-mirror/docker-mirror/storage"
	"github.com/docker-mirror/docker-mirror/storage/storetest"
	"github.com/docker-mirror/docker-mirror/tests/fixture"
	"github.com/docker-mirror/docker-mirror/tests/servertest"
)

// The status page's JSON shows every replica of the cluster: this one
// marked as such, the others ok, and a killed one unreachable once this
// replica knows it (here: after a probe), with the error; each since
// when.
func TestStatusShowsPeers(t *testing.T) {
	up := fixture.StartUpstream(t)
	rs := startCluster(t, 3, up, sharedDir, nil)
	peers := func() map[string]statusPeer {
		t.Helper()
		m := map[string]statusPeer{}
		for _, p := range statusPeers(t, context.Background(), rs[0].url) {
			m[p.Name] = p
			// Up since the start, for a replica never down: the page
			// said "never" of this replica.
			if p.Since.IsZero() {
				t.Errorf("%s (%s): no since", p.Name, p.State)
			}
		}
		return m
	}
	got := peers()
	if len(got) != 3 {
		t.Fatalf("peers = %v, want the 3 replicas", got)
	}
	if p, ok := got[rs[0].url+" (this replica)"]; !ok || p.State != "ok" {
		t.Errorf("this replica: %v (peers %v)", p, got)
	}
	for _, r := range rs[1:] {
		if p := got[r.url]; p.State != "ok" {
			t.Errorf("%s: %+v, want ok", r.url, p)
		}
	}

	rs[2].kill()
	rs[0].srv.Cluster.Probe(context.Background())
	got = peers()
	if p := got[rs[2].url]; p.State != "unreachable" || !strings.Contains(p.LastError, "127.0.0.1") {
		t.Errorf("killed replica: %+v, want unreachable with its error", p)
	}
	if p := got[rs[1].url]; p.State != "ok" {
		t.Errorf("%s: %+v, want ok", rs[1].url, p)
	}
}

// A replica that answers its /readyz 503 (its store full with
// fail_when_full, or not ready yet) is shown as not ready, with the
// answer: it answers, and the page must not send its operator looking
// for a network fault.
func TestStatusShowsPeerNotReady(t *testing.T) {
	up := fixture.StartUpstream(t)
	notReady := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "not ready: store full", http.StatusServiceUnavailable)
	}))
	defer notReady.Close()
	rs := startCluster(t, 1, up, sharedDir, func(_ int, urls []string) (string, []string) {
		return urls[0], []string{urls[0], notReady.URL}
	})
	rs[0].srv.Cluster.Probe(context.Background())
	if p := statusPeerNamed(t, context.Background(), rs[0].url, notReady.URL); p.State != "not ready" || !strings.Contains(p.LastError, "503") {
		t.Errorf("a peer whose /readyz answers 503: %+v, want not ready, with its answer", p)
	}
}

// refusingStore is a replica's store whose lookups fail while refusing
// is set: a bucket that answers 403 (credentials rotated).
type refusingStore struct {
	storage.Store
	refusing *atomic.Bool
}

var errAccessDenied = errors.New("AccessDenied: Access Denied (HTTP 403)")

func (s refusingStore) Stat(ctx context.Context, repo string, dgst digest.Digest) (int64, error) {
	if s.refusing.Load() {
		return 0, errAccessDenied
	}
	return s.Store.Stat(ctx, repo, dgst)
}

// A replica whose store fails its lookups (a bucket answering 403 once
// its credentials were rotated) is not ready, and its own status page
// says so of it, with the error: it showed itself ok, while its /readyz
// failed and the other replicas showed it not ready.
func TestStatusShowsThisReplicaNotReady(t *testing.T) {
	up := fixture.StartUpstream(t)
	var refusing atomic.Bool
	rs := startClusterWith(t, 1, up, sharedDir, nil, func(int) []server.Option {
		return []server.Option{server.WithStore(func(ctx context.Context, cfg config.Config, ix *storage.Index) (storage.Store, string, error) {
			s, name, err := server.OpenStore(ctx, cfg, ix)
			return refusingStore{s, &refusing}, name, err
		})}
	})
	refusing.Store(true)
	if st, _, _, err := get(context.Background(), rs[0].url+"/readyz", nil); err != nil || st != http.StatusServiceUnavailable {
		t.Fatalf("/readyz with the store refusing: %d %v; want 503", st, err)
	}
	if p := statusPeerNamed(t, context.Background(), rs[0].url, rs[0].url+" (this replica)"); p.State != "not ready" || !strings.Contains(p.LastError, "403") {
		t.Errorf("this replica, its store refusing: %+v, want not ready, with the error", p)
	}
}

// A replica whose /readyz fails because its store is full (with
// readyz_fail_when_full) shows itself not ready in its own status page,
// saying so: it showed itself ok, its own row checking only the store's
// and the index's readiness, while the other replicas and the load
// balancer had taken it out.
func TestStatusShowsThisReplicaNotReadyWhenFull(t *testing.T) {
	up := fixture.StartUpstream(t)
	rs := startClusterWith(t, 1, up, sharedDir, nil, func(int) []server.Option {
		// Less free space than the store needs: full.
		return []server.Option{server.WithProxyOptions(proxy.WithFreeSpace(func() (uint64, bool) { return 1 << 20, true }))}
	}, func(c *config.Config) { c.ReadyzFailWhenFull = true })
	if st, _, body, err := get(context.Background(), rs[0].url+"/readyz", nil); err != nil || st != http.StatusServiceUnavailable || !strings.Contains(string(body), "store full") {
		t.Fatalf("/readyz with the store full: %d %q %v; want 503, store full", st, body, err)
	}
	if p := statusPeerNamed(t, context.Background(), rs[0].url, rs[0].url+" (this replica)"); p.State != "not ready" || !strings.Contains(p.LastError, "store full") {
		t.Errorf("this replica, its store full: %+v, want not ready, store full", p)
	}
}

// statusPeer is a replica's row in the cluster view of a status page.
type statusPeer struct {
	Name, State string
	LastError   string    `json:"last_error"`
	Since       time.Time `json:"since"`
}

// statusPeers reads the cluster view of the status page of the replica
// at base (with credentials in it if the replica asks for them).
func statusPeers(t *testing.T, ctx context.Context, base string) []statusPeer {
	t.Helper()
	st, _, body, err := get(ctx, base+"/api/v1/status", nil)
	if err != nil || st != http.StatusOK {
		t.Fatalf("/api/v1/status: %d %v", st, err)
	}
	var s struct{ Peers []statusPeer }
	if err := json.Unmarshal(body, &s); err != nil {
		t.Fatal(err)
	}
	return s.Peers
}

// statusPeerNamed is the row named name in the cluster view of the status
// page of the replica at base; the test fails if there is none.
func statusPeerNamed(t *testing.T, ctx context.Context, base, name string) statusPeer {
	t.Helper()
	peers := statusPeers(t, ctx, base)
	for _, p := range peers {
		if p.Name == name {
			return p
		}
	}
	t.Fatalf("%s not among the peers %+v", name, peers)
	return statusPeer{}
}

// withHangingReadiness is the options of a replica on clock whose store,
// the one configured, looks the store up for readiness as h does
// (storetest.HangingReadiness).
func withHangingReadiness(clock *servertest.Clock, h storetest.HangingReadiness) []server.Option {
	return []server.Option{server.WithClock(clock.Now), server.WithStore(func(ctx context.Context, cfg config.Config, ix *storage.Index) (storage.Store, string, error) {
		s, name, err := server.OpenStore(ctx, cfg, ix)
		h.Store = s
		return h, name, err
	})}
}

// The status page answers at once while the replica's store hangs: its
// own row shows the last answer of its readiness, and not ready once the
// lookup under way has been unanswered for longer than the others' probes
// of its /readyz wait (5 s). Every load of the page waited up to 5 s for
// the lookup, to show not ready with a timeout.
func TestStatusDoesNotWaitForAHangingStore(t *testing.T) {
	up := fixture.StartUpstream(t)
	var hanging atomic.Bool
	entered := make(chan struct{}, 1)
	gate := make(chan struct{})
	clock := servertest.NewClock()
	rs := startClusterWith(t, 1, up, sharedDir, nil, func(int) []server.Option {
		return withHangingReadiness(clock, storetest.HangingReadiness{Hanging: &hanging, Entered: entered, Gate: gate})
	})
	t.Cleanup(func() { close(gate) }) // before the replica stops
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if st, _, _, err := get(ctx, rs[0].url+"/readyz", nil); err != nil || st != http.StatusOK {
		t.Fatalf("/readyz: %d %v; want 200", st, err)
	}
	hanging.Store(true)
	self := func() (state, lastError string) {
		t.Helper()
		_, _, body, err := get(ctx, rs[0].url+"/api/v1/status", nil)
		if err != nil {
			t.Fatal(err)
		}
		var s struct {
			Peers []struct {
				Name, State string
				LastError   string `json:"last_error"`
			}
		}
		if err := json.Unmarshal(body, &s); err != nil {
			t.Fatal(err)
		}
		for _, p := range s.Peers {
			if p.Name == rs[0].url+" (this replica)" {
				return p.State, p.LastError
			}
		}
		t.Fatalf("this replica not among the peers %+v", s.Peers)
		return "", ""
	}
	// Answered with the gate closed: the page did not wait for the lookup.
	if state, lastError := self(); state != "ok" {
		t.Errorf("this replica, its readiness lookup just started and hanging: %s %q, want ok (the last answer) at once", state, lastError)
	}
	select {
	case <-entered: // the page's lookup, hanging
	case <-ctx.Done():
		t.Fatal("the status page started no readiness lookup")
	}
	clock.Advance(6 * time.Second)
	if state, lastError := self(); state != "not ready" || !strings.Contains(lastError, "no answer") {
		t.Errorf("this replica, its readiness lookup hanging for 6s: %s %q, want not ready, no answer", state, lastError)
	}
}

// A replica whose store hangs (a bucket that does not answer) answers its
// /readyz not ready at once, once the lookup under way has gone
// unanswered for longer than the others' probes wait (5 s), and the
// others' status pages show it not ready, with its answer: its /readyz
// waited for the lookup past every probe's timeout, and the others
// showed it unreachable, with the timeout, sending their operator
// looking for a network fault while it answered.
func TestStatusShowsPeerWithAHangingStoreNotReady(t *testing.T) {
	up := fixture.StartUpstream(t)
	var hanging atomic.Bool
	entered := make(chan struct{}, 1)
	gate := make(chan struct{})
	clock := servertest.NewClock()
	rs := startClusterWith(t, 2, up, sharedDir, nil, func(i int) []server.Option {
		if i == 0 {
			return nil
		}
		return withHangingReadiness(clock, storetest.HangingReadiness{Hanging: &hanging, Entered: entered, Gate: gate})
	})
	t.Cleanup(func() { close(gate) }) // before the replicas stop
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if st, _, _, err := get(ctx, rs[1].url+"/readyz", nil); err != nil || st != http.StatusOK {
		t.Fatalf("/readyz before the store hangs: %d %v; want 200", st, err)
	}
	hanging.Store(true)
	get(ctx, rs[1].url+"/metrics", nil) // the ready gauge starts a lookup, unwaited for
	select {
	case <-entered: // the lookup, hanging
	case <-ctx.Done():
		t.Fatal("no readiness lookup started")
	}
	clock.Advance(6 * time.Second)
	rs[0].srv.Cluster.Probe(ctx)
	if p := statusPeerNamed(t, ctx, rs[0].url, rs[1].url); p.State != "not ready" || !strings.Contains(p.LastError, "503") {
		t.Errorf("a peer whose store's readiness lookup has hung for 6s: %+v, want not ready, with its answer", p)
	}
}
