package proxy

import (
	"context"
	"errors"
	"sync"
)

// errClosing refuses work that would start after Close.
var errClosing = errors.New("docker-mirror is shutting down")

// activity counts work that runs beyond the request that started it
// (downloads, shared upstream fetches, background mirrors), so that WaitIdle
// and Close can wait for all of it.
type activity struct {
	mu     sync.Mutex
	n      int
	idle   chan struct{} // closed while n == 0
	closed bool
}

func newActivity() *activity {
	idle := make(chan struct{})
	close(idle)
	return &activity{idle: idle}
}

// start counts one piece of work; it returns false after close, and the
// caller must then not start it.
func (a *activity) start() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.closed {
		return false
	}
	if a.n == 0 {
		a.idle = make(chan struct{})
	}
	a.n++
	return true
}

// done ends one piece of work counted by start.
func (a *activity) done() {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.n--
	if a.n == 0 {
		close(a.idle)
	}
}

// close refuses new work from now on.
func (a *activity) close() {
	a.mu.Lock()
	a.closed = true
	a.mu.Unlock()
}

// wait blocks until no work is counted, or ctx ends.
func (a *activity) wait(ctx context.Context) error {
	a.mu.Lock()
	idle := a.idle
	a.mu.Unlock()
	select {
	case <-idle:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
