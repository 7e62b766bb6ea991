package proxy

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"golang.org/x/sync/singleflight"
)

// readiness is the store's readiness lookups: one at a time, shared by
// every check running at once and run to its end (or Close) even when
// they give up; the last one's answer; and when the one under way
// started. Its methods answer each check's question of them.
type readiness struct {
	// lookUp looks the store up once (detached from ctx): err if it
	// cannot be used, else throttled if it answered throttling. ping
	// reads the index, at every check: its error is no lookup's answer.
	lookUp func(ctx context.Context) (throttled, err error)
	ping   func() error
	now    func() time.Time
	work   *activity

	flight  singleflight.Group
	last    atomic.Pointer[readyAnswer] // nil: none yet
	started atomic.Int64                // UnixNano; 0: none under way
}

// readyAnswer is a lookup's answer: err if the store cannot be used, else
// throttled if it answered throttling; at is when it came, took how long
// it took.
type readyAnswer struct {
	err, throttled error
	at             time.Time
	took           time.Duration
}

// look starts a lookup unless one is under way, and waits for its answer
// within ctx.
func (r *readiness) look(ctx context.Context) (throttled, err error) {
	return shared(ctx, r.work, &r.flight, "store", func() (error, error) {
		start := r.now()
		r.started.Store(start.UnixNano())
		defer r.started.Store(0)
		throttled, err := r.lookUp(ctx)
		at := r.now()
		r.last.Store(&readyAnswer{err: err, throttled: throttled, at: at, took: at.Sub(start)})
		return throttled, err
	})
}

// ready is Ready's answer (see readyFor).
func (r *readiness) ready(ctx context.Context) error {
	if err := r.ping(); err != nil {
		return err
	}
	if last := r.last.Load(); last != nil && last.throttled != nil && r.now().Sub(last.at) < readyFor {
		done, cancel := context.WithCancel(ctx)
		cancel() // the next lookup runs, unwaited for
		if _, err := r.look(done); errors.Is(err, errClosing) {
			return err
		}
		return nil
	}
	if err := r.noAnswer(ReadyUnanswered); err != nil {
		return err
	}
	_, err := r.look(ctx)
	return err
}

// usable says whether the last answer, taken within d, found the store
// usable.
func (r *readiness) usable(d time.Duration) bool {
	last := r.last.Load()
	return last != nil && last.err == nil && r.now().Sub(last.at) < d
}

// lastAnswer is ReadyLast's answer: the next answer is waited for until
// a first has come.
func (r *readiness) lastAnswer(ctx context.Context, unanswered time.Duration) (throttled, err error) {
	return r.answer(ctx, unanswered, r.last.Load() == nil)
}

// checked is CheckStore's answer: the next answer is waited for unless
// the last took longer than unanswered.
func (r *readiness) checked(ctx context.Context, unanswered time.Duration) (throttled, err error) {
	last := r.last.Load()
	return r.answer(ctx, unanswered, last == nil || last.took <= unanswered)
}

// answer reads the index, starts a lookup unless one is under way, waits
// for it if waitNext until it has gone unanswered for unanswered, and
// returns the last lookup's answer; not ready if the lookup under way has
// been unanswered for longer than unanswered.
func (r *readiness) answer(ctx context.Context, unanswered time.Duration, waitNext bool) (throttled, err error) {
	wait := unanswered - r.unansweredFor()
	if !waitNext {
		wait = 0
	}
	ctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	if err := r.ping(); err != nil {
		return nil, err
	}
	throttled, err = r.look(ctx)
	if err := r.noAnswer(unanswered); err != nil {
		return nil, err
	}
	if last := r.last.Load(); last != nil {
		return last.throttled, last.err
	}
	return throttled, err
}

// noAnswer is not ready if the lookup under way has been unanswered for
// longer than d, else nil.
func (r *readiness) noAnswer(d time.Duration) error {
	if u := r.unansweredFor(); u > d {
		return fmt.Errorf("store: no answer to its readiness lookup for %v", u.Round(time.Second))
	}
	return nil
}

// unansweredFor is how long the lookup under way has been unanswered (0:
// none under way).
func (r *readiness) unansweredFor() time.Duration {
	if at := r.started.Load(); at != 0 {
		return r.now().Sub(time.Unix(0, at))
	}
	return 0
}
