package proxy

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/opencontainers/go-digest"
	"golang.org/x/sync/singleflight"

	"github.com/docker-mirror/docker-mirror/storage"
)

// Readiness looks the store up once for every check running at once, and
// runs the lookup to its end even when they give up: the checks of a
// bucket that throttles (S3's 503 SlowDown) wait for its client's
// retries, about 10 seconds, longer than a readiness probe (1 second by
// default in Kubernetes, 5 for the peers). A check within readyFor of the
// store's last answer takes it, and starts the next lookup without
// waiting for it.
const (
	readyFor           = 30 * time.Second
	readyLookupTimeout = 30 * time.Second
)

// readiness is the store's lookups for Ready.
type readiness struct {
	flight   singleflight.Group
	answered atomic.Int64 // when the store last answered a lookup (UnixNano), 0 if its last lookup failed
}

// Ready reports whether the store and the index can be used. A store
// that throttles answers, at its rate: every replica of a bucket would
// otherwise leave the load balancer at once, and none would serve what
// still goes through.
func (p *Proxy) Ready(ctx context.Context) error {
	if err := p.index.Ping(); err != nil {
		return err
	}
	at := p.readiness.answered.Load()
	fresh := at != 0 && p.now().Sub(time.Unix(0, at)) < readyFor
	wait := ctx
	if fresh {
		done, cancel := context.WithCancel(ctx)
		cancel() // the next lookup runs, unwaited for
		wait = done
	}
	_, err := shared(wait, p.work, &p.readiness.flight, "store", func() (struct{}, error) {
		ctx, cancel := context.WithTimeout(context.Background(), readyLookupTimeout)
		defer cancel()
		_, err := p.store.Stat(ctx, "docker-mirror/readiness", digest.FromString("readiness probe"))
		if err != nil && !errors.Is(err, storage.ErrNotFound) && !storage.IsThrottled(err) {
			p.readiness.answered.Store(0)
			return struct{}{}, fmt.Errorf("store: %w", err)
		}
		p.readiness.answered.Store(p.now().UnixNano())
		return struct{}{}, nil
	})
	if fresh && !errors.Is(err, errClosing) {
		return nil
	}
	return err
}
