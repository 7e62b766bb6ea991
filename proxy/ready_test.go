package proxy

import (
	"context"
	"net/http"
	"testing"
	"testing/synctest"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/docker-mirror/docker-mirror/storage"
)

// hangingStore is a store whose lookups hang until their context ends: a
// bucket partitioned away.
type hangingStore struct{ storage.Store }

func (hangingStore) Stat(ctx context.Context, _ string, _ digest.Digest) (int64, error) {
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
		p := transportMirror(t, inProcess{http.NotFoundHandler()}, hangingStore{mem})
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
