package cluster

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/docker-mirror/docker-mirror/proxy/access"
)

func quiet() Option { return WithLogger(slog.New(slog.NewTextHandler(io.Discard, nil))) }

func TestRankSpreadsKeysAndMovesOnlyTheLeaversOnes(t *testing.T) {
	all := []string{"http://a:5000", "http://b:5000", "http://c:5000"}
	owned := map[string]int{}
	for i := range 3000 {
		key := fmt.Sprintf("sha256:%064x", i)
		full := Rank(key, all)
		if !slices.Equal(full, Rank(key, []string{all[2], all[0], all[1]})) {
			t.Fatalf("%s: rank depends on the order members are listed in", key)
		}
		owned[full[0]]++
		// c leaves: its keys go to the next in its order, the others stay.
		without := Rank(key, all[:2])
		want := full[0]
		if want == all[2] {
			want = full[1]
		}
		if without[0] != want {
			t.Fatalf("%s: owner %s without c, want %s (rank with c %v)", key, without[0], want, full)
		}
	}
	for _, m := range all {
		if owned[m] < 800 {
			t.Errorf("%s owns %d of 3000 keys: %v", m, owned[m], owned)
		}
	}
}

// fakePeer is a replica whose /readyz answers what the test says.
func fakePeer(t *testing.T, ready *atomic.Bool) *httptest.Server {
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/readyz" && !ready.Load() {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
	}))
	t.Cleanup(s.Close)
	return s
}

type clock struct{ t atomic.Int64 }

func (c *clock) now() time.Time          { return time.Unix(0, c.t.Load()) }
func (c *clock) advance(d time.Duration) { c.t.Add(int64(d)) }

func TestHealth(t *testing.T) {
	var ready atomic.Bool
	ready.Store(true)
	b := fakePeer(t, &ready)
	dead := httptest.NewServer(http.NotFoundHandler())
	dead.Close() // refuses connections
	clk := &clock{}
	clk.t.Store(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC).UnixNano())
	c, err := New("http://self:5000", []string{b.URL, dead.URL, "http://self:5000"}, WithClock(clk.now), quiet())
	if err != nil {
		t.Fatal(err)
	}
	state := func(u string) PeerState {
		for _, p := range c.Peers() {
			if p.URL == u {
				return p
			}
		}
		t.Fatalf("%s not among %v", u, c.Peers())
		return PeerState{}
	}
	if ps := c.Peers(); len(ps) != 3 || !ps[0].Self || ps[0].URL != "http://self:5000" {
		t.Fatalf("peers %+v: want self first, then the two others (self listed as a peer is itself)", ps)
	}
	if !state(dead.URL).Up {
		t.Fatal("a peer starts up: the first failed connection marks it down")
	}
	clk.advance(time.Minute)
	c.Probe(context.Background())
	if st := state(dead.URL); st.Up || st.Error == "" || !st.Since.Equal(clk.now()) || st.Source != "static" {
		t.Errorf("dead peer after a probe: %+v", st)
	}
	if !state(b.URL).Up {
		t.Errorf("ready peer down after a probe: %+v", state(b.URL))
	}
	for i := range 200 {
		if owners := c.Owners(fmt.Sprint(i)); slices.Contains(owners, dead.URL) || len(owners) != 2 {
			t.Fatalf("owners %v: the dead peer owns nothing", owners)
		}
	}
	// Not ready: down; ready again: back at the next probe.
	ready.Store(false)
	c.Probe(context.Background())
	if state(b.URL).Up {
		t.Error("a peer whose /readyz fails is still up")
	}
	ready.Store(true)
	c.Probe(context.Background())
	if !state(b.URL).Up {
		t.Error("a peer ready again is still down")
	}
	// A failed connection marks a peer down at once.
	c.markDown(b.URL, errors.New("connection refused"))
	if st := state(b.URL); st.Up || st.Error != "connection refused" {
		t.Errorf("after a failed connection: %+v", st)
	}
	if owners := c.Owners("k"); !slices.Equal(owners, []string{"http://self:5000"}) {
		t.Errorf("every peer down: owners %v, want only self (a replica never counts itself down)", owners)
	}
}

func TestRefreshDNS(t *testing.T) {
	answers := [][]string{{"10.0.0.1", "10.0.0.2", "10.0.0.9"}, nil, {"10.0.0.2", "10.0.0.3", "fd00::4"}}
	var calls atomic.Int32
	resolve := func(_ context.Context, host string) ([]string, error) {
		if host != "mirror-peers.ci.svc" {
			t.Errorf("resolved %q", host)
		}
		i := int(calls.Add(1)) - 1
		if answers[i] == nil {
			return nil, errors.New("SERVFAIL")
		}
		return answers[i], nil
	}
	c, err := New("http://10.0.0.9:5000", []string{"http://static:5000"}, WithPeersDNS("mirror-peers.ci.svc", "5000"), WithResolver(resolve), quiet())
	if err != nil {
		t.Fatal(err)
	}
	urls := func() []string {
		var out []string
		for _, p := range c.Peers() {
			out = append(out, p.URL+"/"+p.Source)
		}
		return out
	}
	ctx := context.Background()
	if err := c.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	want := []string{"http://10.0.0.9:5000/self", "http://10.0.0.1:5000/dns", "http://10.0.0.2:5000/dns", "http://static:5000/static"}
	if !slices.Equal(urls(), want) {
		t.Fatalf("after the first lookup %v, want %v (itself found by DNS is itself)", urls(), want)
	}
	if err := c.Refresh(ctx); err == nil {
		t.Fatal("a failed lookup is not reported")
	}
	if !slices.Equal(urls(), want) {
		t.Fatalf("a failed lookup changed the members: %v", urls())
	}
	if err := c.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	want = []string{"http://10.0.0.9:5000/self", "http://10.0.0.2:5000/dns", "http://10.0.0.3:5000/dns", "http://[fd00::4]:5000/dns", "http://static:5000/static"}
	if !slices.Equal(urls(), want) {
		t.Fatalf("after the name changed %v, want %v", urls(), want)
	}
}

// A peer that left the DNS name (a pod removed or killed) is down for the
// leases it held: the others take them over at once rather than wait out
// their TTL with their clients (lease.WithHolderDown). One that comes
// back is up again; one never seen is not called down.
func TestPeerThatLeftIsDown(t *testing.T) {
	answers := [][]string{{"10.0.0.1", "10.0.0.2"}, {"10.0.0.2"}, {"10.0.0.1", "10.0.0.2"}}
	var calls atomic.Int32
	resolve := func(context.Context, string) ([]string, error) { return answers[int(calls.Add(1))-1], nil }
	c, err := New("http://10.0.0.9:5000", nil, WithPeersDNS("mirror-peers.ci.svc", "5000"), WithResolver(resolve), quiet())
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	const gone = "http://10.0.0.1:5000"
	for i, want := range []bool{false, true, false} {
		if err := c.Refresh(ctx); err != nil {
			t.Fatal(err)
		}
		if got := c.Down(gone); got != want {
			t.Errorf("lookup %d (%v): Down(%s) = %v, want %v", i+1, answers[i], gone, got, want)
		}
	}
	if c.Down("http://10.0.0.7:5000") || c.Down("http://10.0.0.2:5000") {
		t.Error("a replica never seen, or one listed, is called down")
	}
}

func TestSecret(t *testing.T) {
	c, err := New("http://self:5000", nil, WithSecret("s3cret"), quiet())
	if err != nil {
		t.Fatal(err)
	}
	check := c.TrustPeers(denyAll{})
	var got []error
	h := c.Handler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get(secretHeader) != "" {
			t.Error("the secret reached the proxy")
		}
		got = append(got, check.Check(r, access.Puller), check.Check(r, access.Admin))
	}))
	for _, s := range []string{"s3cret", "wrong", ""} {
		r := httptest.NewRequest(http.MethodGet, "/v2/", nil)
		if s != "" {
			r.Header.Set(secretHeader, s)
		}
		h.ServeHTTP(httptest.NewRecorder(), r)
	}
	if got[0] != nil || got[1] == nil || got[2] == nil || got[3] == nil || got[4] == nil || got[5] == nil {
		t.Fatalf("checks %v: only the right secret may pull, and it is never an admin", got)
	}
}

type denyAll struct{}

func (denyAll) Check(*http.Request, access.Level) error { return errors.New("denied") }

func TestRunProbesOnTicks(t *testing.T) {
	dead := httptest.NewServer(http.NotFoundHandler())
	dead.Close()
	resolved := make(chan struct{}, 10)
	c, err := New("http://self:5000", []string{dead.URL}, WithPeersDNS("peers", "5000"), quiet(),
		WithResolver(func(context.Context, string) ([]string, error) { resolved <- struct{}{}; return nil, nil }))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ticks := make(chan time.Time)
	done := make(chan struct{})
	go func() { c.Run(ctx, ticks); close(done) }()
	<-resolved
	if !c.Peers()[1].Up {
		t.Fatal("probed before the first tick: replicas started together would mark each other down")
	}
	ticks <- time.Time{}
	ticks <- time.Time{} // taken once the first tick's probe is done
	if c.Peers()[1].Up {
		t.Error("a dead peer is still up after a probe")
	}
	if len(resolved) == 0 {
		t.Error("peers_dns not resolved again on a tick")
	}
	cancel()
	<-done
}

// TestDownKnowsAPeerByItsOwnSpelling: a lease names its holder by the URL
// the holder was configured with (cluster.self), which may be spelled
// otherwise than this replica's peers list has it (a trailing slash,
// upper case): a holder marked down is down under either spelling.
func TestDownKnowsAPeerByItsOwnSpelling(t *testing.T) {
	dead := httptest.NewServer(http.NotFoundHandler())
	dead.Close()
	c, err := New("http://self:5000", []string{dead.URL}, quiet())
	if err != nil {
		t.Fatal(err)
	}
	c.Probe(context.Background())
	for _, u := range []string{dead.URL, dead.URL + "/", strings.Replace(dead.URL, "http://", "HTTP://", 1)} {
		if !c.Down(u) {
			t.Errorf("Down(%q) = false for a peer marked down: its lease is waited out", u)
		}
	}
	if c.Down("http://self:5000/") || c.Down("http://other:5000") {
		t.Error("Down is true for this replica or a replica it does not know")
	}
}

// TestPeerSinceIsItsStatesChange: a peer's Since (the status page's
// "since" beside its state) is when the state shown changed: a peer up
// for a day whose secret was changed an hour ago is "secret refused"
// since an hour ago, and one down "not ready" that then stops answering
// is "unreachable" since then. Since moved only when the peer went up or
// down: the page said it had refused the secret for a day.
func TestPeerSinceIsItsStatesChange(t *testing.T) {
	var refuse, answer atomic.Bool
	answer.Store(true)
	p := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !answer.Load() {
			panic(http.ErrAbortHandler) // no answer: unreachable
		}
		if refuse.Load() {
			w.Header().Set(secretRefusedHeader, "1")
		}
	}))
	t.Cleanup(p.Close)
	clk := &clock{}
	clk.t.Store(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC).UnixNano())
	c, err := New("http://self:5000", []string{p.URL}, WithClock(clk.now), WithSecret("s"), quiet())
	if err != nil {
		t.Fatal(err)
	}
	state := func() PeerState { return c.Peers()[1] }
	step := func(what string, change func(), want func(PeerState) bool) {
		t.Helper()
		clk.advance(time.Hour)
		change()
		c.Probe(context.Background())
		if st := state(); !want(st) || !st.Since.Equal(clk.now()) {
			t.Errorf("%s: %+v; want its state since %v", what, st, clk.now())
		}
	}
	step("secret refused", func() { refuse.Store(true) }, func(st PeerState) bool { return st.Up && st.SecretRefused })
	step("secret taken again", func() { refuse.Store(false) }, func(st PeerState) bool { return st.Up && !st.SecretRefused })
	c.markDown(p.URL, notReadyError(http.StatusServiceUnavailable))
	step("not ready, then unreachable", func() { answer.Store(false) }, func(st PeerState) bool { return !st.Up && !st.NotReady })
}
