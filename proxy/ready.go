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

// ReadyUnanswered is how long a lookup of the store may go unanswered
// before Ready answers not ready without waiting for it: what the other
// replicas' probes of /readyz wait (cluster.WithProbeTimeout's default).
const ReadyUnanswered = 5 * time.Second

// readiness is the store's lookups for Ready.
type readiness struct {
	flight    singleflight.Group
	throttled atomic.Int64 // when the store's last lookup was answered throttling (UnixNano), else 0
	// last is the last lookup's answer (nil: none yet), and started when
	// the lookup under way started (UnixNano, 0: none): ReadyLast shows
	// them without waiting.
	last    atomic.Pointer[readyAnswer]
	started atomic.Int64
}

// readyAnswer is a lookup's answer: err if the store cannot be used, else
// throttled if it answered throttling; took is how long it took.
type readyAnswer struct {
	err, throttled error
	took           time.Duration
}

// Ready reports whether the store and the index can be used. A store
// that throttles answers, at its rate: every replica of a bucket would
// otherwise leave the load balancer at once, and none would serve what
// still goes through. A store that hangs, its lookup under way unanswered
// for longer than ReadyUnanswered, is not ready at once: the others'
// probes, waiting for the lookup, would time out and take this replica
// for unreachable.
func (p *Proxy) Ready(ctx context.Context) error {
	_, err := p.lookUpStore(ctx, true)
	return err
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
	wait, cancel := context.WithTimeout(ctx, unanswered-p.lookingUpFor())
	defer cancel()
	if p.readiness.last.Load() != nil {
		cancel() // the next answer, not waited for
	}
	_, err := p.lastAnswer(wait, unanswered)
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
	wait := unanswered - p.lookingUpFor()
	if last := p.readiness.last.Load(); last != nil && last.took > unanswered {
		wait = 0 // the next answer, not waited for
	}
	ctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	throttled, err := p.lastAnswer(ctx, unanswered)
	if err != nil {
		return err
	}
	return throttled
}

// lastAnswer starts a lookup of the store unless one is under way, waits
// for it within wait, and returns the last lookup's answer (lookUpStore's
// throttled and err); not ready if the lookup under way has been
// unanswered for longer than unanswered.
func (p *Proxy) lastAnswer(wait context.Context, unanswered time.Duration) (throttled, err error) {
	if err := p.index.Ping(); err != nil {
		return nil, err // not the store's last answer
	}
	throttled, err = p.lookUpStore(wait, false)
	if err := p.noAnswer(unanswered); err != nil {
		return nil, err
	}
	if last := p.readiness.last.Load(); last != nil {
		return last.throttled, last.err
	}
	return throttled, err
}

// noAnswer is not ready if the lookup under way has been unanswered for
// longer than d, else nil.
func (p *Proxy) noAnswer(d time.Duration) error {
	if u := p.lookingUpFor(); u > d {
		return fmt.Errorf("store: no answer to its readiness lookup for %v", u.Round(time.Second))
	}
	return nil
}

// lookingUpFor is how long the lookup under way has been unanswered (0:
// none under way).
func (p *Proxy) lookingUpFor() time.Duration {
	if at := p.readiness.started.Load(); at != 0 {
		return p.now().Sub(time.Unix(0, at))
	}
	return 0
}

// lookUpStore pings the index and looks the store up (shared, see
// readyFor): err if either cannot be used, else throttled if the store
// answered throttling. If takeFresh, within readyFor of a throttling
// answer it takes that one and does not wait for the lookup it starts
// (nil, nil); else it does not wait for a lookup under way unanswered for
// longer than ReadyUnanswered (noAnswer).
func (p *Proxy) lookUpStore(ctx context.Context, takeFresh bool) (throttled, err error) {
	if err := p.index.Ping(); err != nil {
		return nil, err
	}
	at := p.readiness.throttled.Load()
	fresh := takeFresh && at != 0 && p.now().Sub(time.Unix(0, at)) < readyFor
	if takeFresh && !fresh {
		if err := p.noAnswer(ReadyUnanswered); err != nil {
			return nil, err
		}
	}
	wait := ctx
	if fresh {
		done, cancel := context.WithCancel(ctx)
		cancel() // the next lookup runs, unwaited for
		wait = done
	}
	throttled, err = shared(wait, p.work, &p.readiness.flight, "store", func() (error, error) {
		start := p.now()
		p.readiness.started.Store(start.UnixNano())
		defer p.readiness.started.Store(0)
		// Detached, ended by Close: a stop would otherwise wait out the
		// lookup of a bucket that hangs.
		ctx, cancel := p.detach(ctx, readyLookupTimeout)
		defer cancel()
		throttled, err := p.statReadiness(ctx)
		p.readiness.last.Store(&readyAnswer{err: err, throttled: throttled, took: p.now().Sub(start)})
		return throttled, err
	})
	if fresh && !errors.Is(err, errClosing) {
		return nil, nil
	}
	return throttled, err
}

// statReadiness looks the store up: err if it cannot be used, else
// throttled if it answered throttling.
func (p *Proxy) statReadiness(ctx context.Context) (throttled, err error) {
	_, err = p.store.Stat(ctx, "docker-mirror/readiness", digest.FromString("readiness probe"))
	if storage.IsThrottled(err) {
		p.readiness.throttled.Store(p.now().UnixNano())
		return fmt.Errorf("store: %w", err), nil
	}
	p.readiness.throttled.Store(0)
	if err != nil && !errors.Is(err, storage.ErrNotFound) {
		return nil, fmt.Errorf("store: %w", err)
	}
	return nil, nil
}
