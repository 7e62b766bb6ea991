package access

import (
	"sync"
	"time"

	lru "github.com/hashicorp/golang-lru/v2"
)

// failureLimiter is a token bucket per client address: burst tokens,
// refilled at burst per window; a failed login takes one. The addresses
// are bounded (an LRU), so that clients cannot grow it without end.
type failureLimiter struct {
	burst  float64
	rate   float64 // tokens a second
	mu     sync.Mutex
	bucket *lru.Cache[string, *tokens]
}

type tokens struct {
	n    float64
	last time.Time
}

func newFailureLimiter(burst int, window time.Duration, clients int) (*failureLimiter, error) {
	c, err := lru.New[string, *tokens](clients)
	if err != nil {
		return nil, err
	}
	return &failureLimiter{burst: float64(burst), rate: float64(burst) / window.Seconds(), bucket: c}, nil
}

// refill returns client's bucket brought up to now; l.mu is held.
func (l *failureLimiter) refill(client string, now time.Time) *tokens {
	t, ok := l.bucket.Get(client)
	if !ok {
		t = &tokens{n: l.burst, last: now}
		l.bucket.Add(client, t)
	}
	if el := now.Sub(t.last).Seconds(); el > 0 {
		t.n = min(l.burst, t.n+el*l.rate)
	}
	t.last = now
	return t
}

// take takes a token from client's bucket; with none left it reports how
// long until there is one.
func (l *failureLimiter) take(client string, now time.Time) (bool, time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	t := l.refill(client, now)
	if t.n < 1 {
		return false, time.Duration((1 - t.n) / l.rate * float64(time.Second))
	}
	t.n--
	return true, 0
}

// give returns a token taken for an attempt that succeeded.
func (l *failureLimiter) give(client string, now time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	t := l.refill(client, now)
	t.n = min(l.burst, t.n+1)
}
