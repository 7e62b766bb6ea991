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
// runs the lookup to its end (or Close) even when they give up: the
// lookups of a bucket that throttles (S3's 503 SlowDown) wait for its
// client's retries, about 10 seconds, longer than a readiness probe (1
// second by default in Kubernetes, 5 for the peers). A check within
// readyFor of such an answer takes it, and starts the next lookup without
// waiting for it; any other answer is waited for, as it comes at once.
const (
	readyFor           = 30 * time.Second
	readyLookupTimeout = 30 * time.Second
)

// readiness is the store's lookups for Ready.
type readiness struct {
	flight singleflight.Group
	// throttled is the store's last lookup if it was answered
	// throttling, else nil.
	throttled atomic.Pointer[throttledLookup]
}

// throttledLookup is a readiness lookup the store answered throttling.
type throttledLookup struct {
	at  time.Time
	err error
}

// Ready reports whether the store and the index can be used. A store
// that throttles answers, at its rate: every replica of a bucket would
// otherwise leave the load balancer at once, and none would serve what
// still goes through.
func (p *Proxy) Ready(ctx context.Context) error {
	if err := p.index.Ping(); err != nil {
		return err
	}
	th := p.readiness.throttled.Load()
	fresh := th != nil && p.now().Sub(th.at) < readyFor
	wait := ctx
	if fresh {
		done, cancel := context.WithCancel(ctx)
		cancel() // the next lookup runs, unwaited for
		wait = done
	}
	_, err := shared(wait, p.work, &p.readiness.flight, "store", func() (struct{}, error) {
		// Detached, ended by Close: a stop would otherwise wait out the
		// lookup of a bucket that hangs.
		ctx, cancel := p.detach(ctx, readyLookupTimeout)
		defer cancel()
		_, err := p.store.Stat(ctx, "docker-mirror/readiness", digest.FromString("readiness probe"))
		if storage.IsThrottled(err) {
			p.readiness.throttled.Store(&throttledLookup{at: p.now(), err: fmt.Errorf("store: %w", err)})
			return struct{}{}, nil
		}
		p.readiness.throttled.Store(nil)
		if err != nil && !errors.Is(err, storage.ErrNotFound) {
			return struct{}{}, fmt.Errorf("store: %w", err)
		}
		return struct{}{}, nil
	})
	if fresh && !errors.Is(err, errClosing) {
		return nil
	}
	return err
}

// Throttled returns the error of the store's last readiness lookup if
// the store answered it throttling (it is ready all the same), else nil:
// the status page shows a registry destination that rate-limits failing.
func (p *Proxy) Throttled() error {
	if th := p.readiness.throttled.Load(); th != nil {
		return th.err
	}
	return nil
}
