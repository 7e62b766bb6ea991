package proxy

import (
	"context"
	"errors"
	"io"
	"log"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/opencontainers/go-digest"

	"github.com/docker-mirror/docker-mirror/storage"
)

// hangingStore is a store whose lookups hang until their context ends: a
// bucket partitioned away. It counts them.
type hangingStore struct {
	storage.Store
	lookups *atomic.Int32
}

func (s hangingStore) Stat(ctx context.Context, _ string, _ digest.Digest) (int64, error) {
	if s.lookups != nil {
		s.lookups.Add(1)
	}
	<-ctx.Done()
	return 0, ctx.Err()
}

// A readiness lookup that outlives its probe (it runs to its end, for the
// probes after it) ends at Close: a replica stopped while its bucket hung
// waited out the lookup's 30 seconds before it exited, most of a
// Kubernetes pod's grace period.
func TestCloseEndsAReadinessLookupOfAHangingStore(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		mem, _ := memStore(t)
		p := transportMirror(t, inProcess{http.NotFoundHandler()}, hangingStore{Store: mem})
		ctx, cancel := context.WithTimeout(t.Context(), time.Second) // a probe's timeout
		defer cancel()
		if err := p.Ready(ctx); err == nil {
			t.Fatal("Ready of a store that hangs: ready")
		}
		start := time.Now()
		p.Close()
		if waited := time.Since(start); waited > 0 {
			t.Errorf("Close waited %v (the bubble's clock) for the readiness lookup of a store that hangs; want it ended at once", waited)
		}
	})
}

// The probes of a replica whose bucket hangs share one lookup until it
// times out: they do not pile up one per probe, each waiting out its
// 30 seconds.
func TestReadinessLookupsOfAHangingStoreDoNotPileUp(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		mem, _ := memStore(t)
		var lookups atomic.Int32
		p := transportMirror(t, inProcess{http.NotFoundHandler()}, hangingStore{Store: mem, lookups: &lookups})
		defer p.Close()
		for range 20 { // a probe a second, each giving up after one
			ctx, cancel := context.WithTimeout(t.Context(), time.Second)
			if err := p.Ready(ctx); err == nil {
				t.Fatal("Ready of a store that hangs: ready")
			}
			cancel()
		}
		if n := lookups.Load(); n != 1 {
			t.Errorf("lookups of the store in 20 seconds of probes: %d; want 1, shared", n)
		}
		time.Sleep(readyLookupTimeout)
		ctx, cancel := context.WithTimeout(t.Context(), time.Second)
		defer cancel()
		_ = p.Ready(ctx)
		if n := lookups.Load(); n != 2 {
			t.Errorf("lookups once the first timed out: %d; want 2", n)
		}
	})
}

// Until the store's first answer since the start, ReadyLast waits for one,
// but only while the lookup under way is younger than unanswered: a store
// that hung from the start held every scrape of the ready gauge (and every
// load of the status page) its 5 seconds until the lookup timed out, not
// only the first, as operations.md says.
func TestReadyLastDoesNotWaitForAFirstLookupAlreadyUnanswered(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		mem, _ := memStore(t)
		p := transportMirror(t, inProcess{http.NotFoundHandler()}, hangingStore{Store: mem})
		defer p.Close()
		if err := p.ReadyLast(t.Context(), ReadyUnanswered); err == nil {
			t.Fatal("ReadyLast of a store that hangs: ready")
		}
		time.Sleep(2 * ReadyUnanswered) // the next scrape; the lookup still hangs
		start, unanswered := time.Now(), p.readiness.unansweredFor()
		err := p.ReadyLast(t.Context(), ReadyUnanswered)
		if err == nil {
			t.Fatal("ReadyLast of a store that hangs: ready")
		}
		if waited := time.Since(start); waited > 0 {
			t.Errorf("ReadyLast waited %v (the bubble's clock) for a lookup unanswered for %v; want its answer at once (%v)", waited, unanswered, err)
		}
	})
}

// The status page's destination check, finding a lookup of a store that
// hangs under way but not yet unanswered for unanswered, waits for its
// answer only until it has been: it waited its whole timeout (5 s), and
// a load of the page 3 s into the lookup was held until 8 s, to show no
// answer.
func TestCheckStoreWaitsOnlyUntilTheLookupIsUnanswered(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		mem, _ := memStore(t)
		p := transportMirror(t, inProcess{http.NotFoundHandler()}, hangingStore{Store: mem})
		defer p.Close()
		probe, cancel := context.WithTimeout(t.Context(), time.Second)
		defer cancel()
		if err := p.Ready(probe); err == nil {
			t.Fatal("Ready of a store that hangs: ready")
		}
		time.Sleep(2 * time.Second) // the lookup hangs for 3 s
		// The page's timeout.
		check, cancel := context.WithTimeout(t.Context(), ReadyUnanswered)
		defer cancel()
		start, unanswered := time.Now(), p.readiness.unansweredFor()
		err := p.CheckStore(check, ReadyUnanswered)
		if err == nil {
			t.Fatal("CheckStore of a store that hangs: nil")
		}
		if waited := time.Since(start); waited > ReadyUnanswered-unanswered {
			t.Errorf("CheckStore waited %v (the bubble's clock) for a lookup unanswered for %v; want at most %v, until it has been for %v (%v)",
				waited, unanswered, ReadyUnanswered-unanswered, ReadyUnanswered, err)
		}
	})
}

// switchStore is a store whose readiness lookups fail while down is set
// (a destination down) and are counted; its other calls go to Store.
type switchStore struct {
	storage.Store
	down    *atomic.Bool
	lookups *atomic.Int32
}

func (s switchStore) Stat(ctx context.Context, repo string, d digest.Digest) (int64, error) {
	if repo == "docker-mirror/readiness" {
		s.lookups.Add(1)
		if s.down.Load() {
			return 0, errors.New("connection refused")
		}
	}
	return s.Store.Stat(ctx, repo, d)
}

// A copy takes the store's last answer, whoever's lookup it was (a
// /readyz probe's), while it is younger than readyFor and found the store
// usable; one that found it unusable since has the next copy look again
// at once: it fails, asking the upstream for nothing, where the copy's
// own 30 s of trust went on to pull the image from Docker Hub for a
// store already known down.
func TestCopyTakesTheLastUsableAnswerAndLooksAgainAfterAFailure(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		reg := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
		for _, name := range []string{"a", "b", "c", "d"} {
			pushImage(t, reg, "library/"+name+":1", 1)
		}
		var gets atomic.Int32
		counted := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Method == http.MethodGet && strings.Contains(r.URL.Path, "/manifests/") {
				gets.Add(1)
			}
			reg.ServeHTTP(w, r)
		})
		mem, _ := memStore(t)
		var down atomic.Bool
		var lookups atomic.Int32
		p := transportMirror(t, inProcess{counted}, switchStore{Store: mem, down: &down, lookups: &lookups})
		defer p.Close()

		if err := p.Ready(t.Context()); err != nil { // a probe
			t.Fatal(err)
		}
		if _, err := p.Copy(t.Context(), "library/a:1", nil, nil); err != nil {
			t.Fatal(err)
		}
		if n := lookups.Load(); n != 1 {
			t.Errorf("lookups of the store after a probe and a copy: %d; want 1, the copy taking the probe's answer", n)
		}

		down.Store(true)
		if err := p.Ready(t.Context()); err == nil { // a probe finds it down
			t.Fatal("Ready of a store that is down: ready")
		}
		before := gets.Load()
		if _, err := p.Copy(t.Context(), "library/b:1", nil, nil); err == nil {
			t.Fatal("copy into a store found down: copied")
		}
		if n := gets.Load() - before; n != 0 {
			t.Errorf("the upstream was asked %d manifest GETs for a copy into a store found down", n)
		}
		if n := lookups.Load(); n != 3 {
			t.Errorf("lookups once a probe found the store down and a copy came: %d; want 3, the copy looking again", n)
		}

		down.Store(false)
		if _, err := p.Copy(t.Context(), "library/c:1", nil, nil); err != nil {
			t.Fatal(err)
		}
		time.Sleep(readyFor) // the copy's answer grows old
		if _, err := p.Copy(t.Context(), "library/d:1", nil, nil); err != nil {
			t.Fatal(err)
		}
		if n := lookups.Load(); n != 5 {
			t.Errorf("lookups after a copy that found the store up again and one readyFor later: %d; want 5", n)
		}
	})
}
