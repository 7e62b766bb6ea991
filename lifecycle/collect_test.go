package lifecycle_test

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/docker-mirror/docker-mirror/lifecycle"
	"github.com/docker-mirror/docker-mirror/storage"
	"github.com/docker-mirror/docker-mirror/tests/fixture"
)

// gateGuard is a Guard that runs at once, before the first claim of a
// digest in on, and grants every claim; it counts the claims before.
type gateGuard struct {
	on     map[string]bool
	at     func()
	once   sync.Once
	mu     sync.Mutex
	before int
	fired  bool
}

func (g *gateGuard) Claim(d digest.Digest) (func(), bool) {
	if g.on[d.String()] {
		g.once.Do(func() {
			g.at()
			g.mu.Lock()
			g.fired = true
			g.mu.Unlock()
		})
	}
	g.mu.Lock()
	if !g.fired {
		g.before++
	}
	g.mu.Unlock()
	return func() {}, true
}

// A root recorded in the middle of a sweep, after batches were already
// removed (the index written by the collection itself since the
// marking), keeps its content: the roots are read again for the batch
// that holds it.
func TestCollectRootRecordedDuringSweep(t *testing.T) {
	e := newEnv(t)
	ctx := t.Context()
	b, retag := unreferencedB(t, e)
	// More than a batch of junk that sorts before all of b's content, so
	// that at least one batch is swept (and the index written) before the
	// batch holding b's content.
	junk := storeJunkBefore(t, e, slices.Min(b.content()), 300)
	on := map[string]bool{}
	for _, d := range b.content() {
		on[d] = true
	}
	guard := &gateGuard{on: on, at: func() {
		retag()
	}}
	r, err := e.collector(lifecycle.Options{Guard: guard}).Collect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !guard.fired || guard.before < len(junk) {
		t.Fatalf("the sweep reached b's content after %d claims (fired %v), want after the %d junk blobs", guard.before, guard.fired, len(junk))
	}
	if r.BlobsRemoved != len(junk) || r.ManifestsRemoved != 0 {
		t.Errorf("Collect = %+v, want the %d junk blobs removed and b kept by its new tag", r, len(junk))
	}
	e.wantStored(t, true, b.content()...)
	for _, d := range junk[:3] {
		e.wantStored(t, false, d.String())
	}
}

// heldHook is a Guard that claims everything and, as a Holder, calls at on
// the n-th time the collection asks what the proxy holds (once for the
// marking, then before each of the sweep's index transactions).
type heldHook struct {
	n, calls int
	at       func()
}

func (h *heldHook) Claim(digest.Digest) (func(), bool) { return func() {}, true }

func (h *heldHook) Held() []digest.Digest {
	if h.calls++; h.calls == h.n {
		h.at()
	}
	return nil
}

// A batch the index forgets in several transactions (one digest each,
// here) is checked against the roots before each: a root recorded
// between two of them, after the sweep last looked at the index's
// version, keeps its content.
func TestCollectRootRecordedBetweenTransactions(t *testing.T) {
	e := newEnv(t)
	ctx := t.Context()
	b, retag := unreferencedB(t, e)
	// Junk that sorts before all of b's content, in the same batch.
	junk := storeJunkBefore(t, e, slices.Min(b.content()), 10)
	e.m.Index.SetWriteLimits(1, time.Hour)
	// After the marking and a transaction per junk blob, just before the
	// transaction that reaches b's content: b is tagged again.
	hook := &heldHook{n: 1 + len(junk) + 1, at: func() {
		retag()
	}}
	r, err := e.collector(lifecycle.Options{Guard: hook}).Collect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if hook.calls < hook.n {
		t.Fatalf("the hook ran %d times, want at least %d", hook.calls, hook.n)
	}
	if r.BlobsRemoved != len(junk) || r.ManifestsRemoved != 0 {
		t.Errorf("Collect = %+v, want the %d junk blobs removed and b kept by its new tag", r, len(junk))
	}
	e.wantStored(t, true, b.content()...)
	for _, d := range junk {
		e.wantStored(t, false, d.String())
	}
}

// storeJunkBefore stores n unreferenced blobs whose digests sort before
// first, so that the sweep reaches them before first.
func storeJunkBefore(t *testing.T, e *env, first string, n int) []digest.Digest {
	t.Helper()
	var junk []digest.Digest
	for i := 0; len(junk) < n; i++ {
		body := fmt.Sprintf("junk %d", i)
		d := digest.FromString(body)
		if d.String() >= first {
			continue
		}
		if err := e.store.Put(t.Context(), "", d, int64(len(body)), strings.NewReader(body)); err != nil {
			t.Fatal(err)
		}
		junk = append(junk, d)
	}
	return junk
}

// countingGuard grants every claim and counts the claims not yet
// released: the most at once, and now.
type countingGuard struct {
	mu        sync.Mutex
	held, max int
}

func (g *countingGuard) Claim(digest.Digest) (func(), bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.held++
	g.max = max(g.max, g.held)
	var once sync.Once
	return func() {
		once.Do(func() {
			g.mu.Lock()
			g.held--
			g.mu.Unlock()
		})
	}, true
}

// The sweep claims one batch at a time and releases it once its content
// is removed: a batch's store removals never run while the index forgets
// the next (they would slow its commits; see docs/performance-rounds.md, Round 4:
// writes). Every claim is released and everything removed when Collect
// returns.
func TestCollectSweepsOneBatchAtATime(t *testing.T) {
	e := newEnv(t)
	const batch = 256 // lifecycle's batchSize
	junk := storeJunkBefore(t, e, "sha256:g", 3*batch+10)
	guard := &countingGuard{}
	r, err := e.collector(lifecycle.Options{Guard: guard}).Collect(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if r.BlobsRemoved != len(junk) {
		t.Errorf("Collect removed %d blobs, want the %d junk blobs", r.BlobsRemoved, len(junk))
	}
	guard.mu.Lock()
	defer guard.mu.Unlock()
	if guard.held != 0 || guard.max > batch {
		t.Errorf("claims: %d held after Collect, at most %d at once; want 0, and at most a batch (%d)", guard.held, guard.max, batch)
	}
	for _, d := range junk {
		e.wantStored(t, false, d.String())
	}
}

// acquireAtClaim is a Guard over an InUse that, at the sweep's first claim
// of target, has the proxy acquire target first: a pull that starts using
// content after the collection marked it unreferenced.
type acquireAtClaim struct {
	u       *lifecycle.InUse
	target  digest.Digest
	once    sync.Once
	release func()
}

func (g *acquireAtClaim) Claim(d digest.Digest) (func(), bool) {
	if d == g.target {
		g.once.Do(func() {
			var err error
			if g.release, err = g.u.Acquire(context.Background(), d); err != nil {
				panic(err)
			}
		})
	}
	return g.u.Claim(d)
}

// Content a pull starts using between the marking and the sweep is not
// removed: the sweep claims each digest, and skips those in use.
func TestCollectSparesContentAcquiredAfterMarking(t *testing.T) {
	e := newEnv(t)
	seedThree(t, e)
	junk := storeJunkBefore(t, e, "sha256:f", 2)
	guard := &acquireAtClaim{u: lifecycle.NewInUse(), target: junk[0]}
	r, err := e.collector(lifecycle.Options{Guard: guard}).Collect(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if guard.release == nil {
		t.Fatal("the sweep never claimed the junk in use")
	}
	guard.release()
	if r.BlobsRemoved != 1 {
		t.Errorf("Collect = %+v, want only the junk not in use removed", r)
	}
	e.wantStored(t, true, junk[0].String())
	e.wantStored(t, false, junk[1].String())
}

// An image whose root manifest cannot be read from the store (its file
// lost: a rename a power cut undid; or not matching its digest: a bad
// sector) while the index still records it, tagged and pinned, keeps its
// content: the collection removed all of it, its children and layers, as
// if nothing named them. It is reported, verify --repair removes the
// root, and the next pull fetches only the root again. An image no root
// names is still collected.
func TestCollectKeepsImageWhoseRootCannotBeRead(t *testing.T) {
	e := newEnv(t)
	a, b, c := seedThree(t, e)
	ctx := t.Context()
	if err := e.m.Index.DeleteTag("docker.io", "library/b", "v1"); err != nil {
		t.Fatal(err)
	}
	if err := e.m.Index.DeleteFill("docker.io", "library/b", digest.Digest(b.digest)); err != nil {
		t.Fatal(err)
	}
	if err := e.m.Index.Pin(t.Context(), "docker.io/library/a:v1", storage.PinRecord{PinnedAt: e.m.Clock.Now()}); err != nil {
		t.Fatal(err)
	}
	if err := os.RemoveAll(filepath.Dir(e.path(a.digest))); err != nil { // a's index
		t.Fatal(err)
	}
	flipByte(t, e.path(c.digest)) // c's image manifest

	var logged strings.Builder
	col := e.collector(lifecycle.Options{Log: slog.New(slog.NewTextHandler(&logged, nil))})
	r, err := col.Collect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if r.ManifestsRemoved != 1 || r.BlobsRemoved != len(b.blobs) {
		t.Errorf("Collect = %+v; want b's manifest and its %d blobs removed, nothing else", r, len(b.blobs))
	}
	e.wantStored(t, false, b.content()...)
	for _, im := range []image{a, c} {
		var rest []string
		for _, d := range im.content() {
			if d != im.digest {
				rest = append(rest, d)
			}
		}
		e.wantStored(t, true, rest...)
	}
	for _, d := range []string{a.digest, c.digest} {
		if !strings.Contains(logged.String(), d) || !strings.Contains(logged.String(), "verify --repair") {
			t.Errorf("the log does not name %s and the repair: %s", d, logged.String())
		}
	}

	// Repaired, then pulled: only the roots are fetched again.
	if _, err := col.Verify(ctx); err != nil {
		t.Fatal(err)
	}
	e.up.ResetCounts()
	for _, im := range []image{a, c} {
		e.pull(t, im)
		e.wantPull(t, im)
	}
	if n := e.up.Count(http.MethodGet, fixture.KindBlob); n != 0 {
		t.Errorf("the pulls after the repair fetched %d blobs again", n)
	}
	if r, err := col.Collect(ctx); err != nil || r.ManifestsRemoved+r.BlobsRemoved != 0 {
		t.Errorf("Collect after the repair = %+v, %v; want nothing removed", r, err)
	}
}
