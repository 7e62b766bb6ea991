package proxy

import (
	"context"
	"net/http"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

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
		start, unanswered := time.Now(), p.lookingUpFor()
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
		start, unanswered := time.Now(), p.lookingUpFor()
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
