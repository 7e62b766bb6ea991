package proxy

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/opencontainers/go-digest"

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

// ReadyUnanswered is how long a lookup of the store may go unanswered
// before Ready answers not ready without waiting for it: what the other
// replicas' probes of /readyz wait (cluster.WithProbeTimeout's default).
const ReadyUnanswered = 5 * time.Second

// Ready reports whether the store and the index can be used. A store
// that throttles answers, at its rate: every replica of a bucket would
// otherwise leave the load balancer at once, and none would serve what
// still goes through. A store that hangs, its lookup under way unanswered
// for longer than ReadyUnanswered, is not ready at once: the others'
// probes, waiting for the lookup, would time out and take this replica
// for unreachable.
func (p *Proxy) Ready(ctx context.Context) error {
	return p.readiness.ready(ctx)
}

// errFullNotReady is Readyz's error while the store is full, with
// WithReadyzFailWhenFull.
var errFullNotReady = errors.New("store full")

// Readyz is the readiness /readyz answers, which the other replicas of a
// cluster and the load balancer probe: Ready's, and with
// WithReadyzFailWhenFull, not while the store is full (by default still
// ready: hits are served, and a mirror taken out of rotation would not
// serve them either).
func (p *Proxy) Readyz(ctx context.Context) error {
	return p.notFull(p.Ready(ctx))
}

// notFull is err, or if nil, Readyz's error while the store is full.
func (p *Proxy) notFull(err error) error {
	if err == nil && p.readyFailWhenFull && p.StoreFull() {
		return errFullNotReady
	}
	return err
}

// ReadyzLast is Readyz without waiting for a lookup of the store that
// hangs (a bucket that does not answer): the status page shows it at
// every load. It is ReadyLast's, and not while the store is full as
// Readyz.
func (p *Proxy) ReadyzLast(ctx context.Context, unanswered time.Duration) error {
	return p.notFull(p.ReadyLast(ctx, unanswered))
}

// ReadyLast is Ready without waiting for a lookup of the store that
// hangs: the ready gauge reads it at every scrape, which would otherwise
// run into the scrape's timeout. It starts a lookup unless one is under
// way, and answers with the last lookup's answer; not ready if the
// lookup under way has been unanswered for longer than unanswered (what
// the others' probes of /readyz wait). Until a first lookup has
// answered, it waits for one until the lookup under way has gone
// unanswered for unanswered: only the first call waits its whole time.
func (p *Proxy) ReadyLast(ctx context.Context, unanswered time.Duration) error {
	_, err := p.readiness.lastAnswer(ctx, unanswered)
	return err
}

// CheckStore is Ready as the status page shows it: a store that throttles
// is ready, but its answer is returned as the error (a registry
// destination that rate-limits is shown failing). It waits for its
// lookup even within readyFor of a throttling answer, which Ready takes:
// the store may have recovered since. But while the store hangs (its
// lookup under way, or its last one, unanswered for longer than
// unanswered) it answers as ReadyLast, with the last answer, not waited
// for: the page's check would otherwise hold a load of the page. A lookup
// under way is waited for only until it has gone unanswered for
// unanswered.
func (p *Proxy) CheckStore(ctx context.Context, unanswered time.Duration) error {
	throttled, err := p.readiness.checked(ctx, unanswered)
	if err != nil {
		return err
	}
	return throttled
}

// statReadiness looks the store up: err if it cannot be used, else
// throttled if it answered throttling. It is detached from ctx and ended
// by Close: a stop would otherwise wait out the lookup of a bucket that
// hangs.
func (p *Proxy) statReadiness(ctx context.Context) (throttled, err error) {
	ctx, cancel := p.detach(ctx, readyLookupTimeout)
	defer cancel()
	_, err = p.store.Stat(ctx, "docker-mirror/readiness", digest.FromString("readiness probe"))
	if storage.IsThrottled(err) {
		return fmt.Errorf("store: %w", err), nil
	}
	if err != nil && !errors.Is(err, storage.ErrNotFound) {
		return nil, fmt.Errorf("store: %w", err)
	}
	return nil, nil
}
