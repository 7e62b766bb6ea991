package status

import (
	"context"
	"errors"
	"sync"
	"time"
)

// destCheckEvery is how long a destination check is reused: the page
// refreshes often, the destination need not be asked as often.
const destCheckEvery = 15 * time.Second

// destTimeout bounds one destination check.
const destTimeout = 5 * time.Second

// destCheck checks the registry destination, at most once per
// destCheckEvery.
type destCheck struct {
	check func(ctx context.Context) error
	now   func() time.Time
	mu    sync.Mutex
	last  Destination
}

func (c *destCheck) state(ctx context.Context) Destination {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := c.now()
	if !c.last.At.IsZero() && now.Sub(c.last.At) < destCheckEvery {
		return c.last
	}
	// Not the request's cancellation: its result is kept for every request
	// in the next destCheckEvery, not only the one that went away.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), destTimeout)
	defer cancel()
	c.last = Destination{Status: "ok", At: now}
	if err := c.check(ctx); err != nil {
		c.last.Status, c.last.Error = "unreachable", err.Error()
		if answered(err) {
			c.last.Status = "failing" // it answers, with errors
		}
	}
	return c.last
}

// answered reports whether err carries the destination's answer (a 401,
// a 500: storage/destination's errors say so with their StatusCode), not
// the want of one.
func answered(err error) bool {
	var sc interface{ StatusCode() int }
	return errors.As(err, &sc) && sc.StatusCode() != 0
}
