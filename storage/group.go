package storage

import (
	"fmt"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"
)

// groupDelay is how long the first of concurrent grouped writes waits
// for others to commit with it: bbolt's Batch's default delay.
const groupDelay = 10 * time.Millisecond

// writeGroup is the writes that commit in one transaction (grouped).
type writeGroup struct {
	fns []func(tx *bolt.Tx) error
	// errs are the writes' errors, and done is closed once they are set.
	errs []error
	done chan struct{}
}

// groups holds the group that writes may still join.
type groups struct {
	mu   sync.Mutex
	open *writeGroup
}

// grouped runs fn in a write transaction (update) coalesced with the
// concurrent calls: the first waits groupDelay for others to join, then
// commits them all, so that writes that come together (an index's
// platform manifests, recorded as its fill fetches them) cost one synced
// commit, not one each. A group whose transaction fails runs each write
// alone: a write's error is its own, and fn may run twice.
//
// Unlike bbolt's Batch, the commit runs on the first caller's goroutine,
// not a timer's: a panic of bbolt on a damaged page is its caller's to
// recover (RecoverDamaged), not a crash, and the others are told their
// write failed.
func (ix *Index) grouped(fn func(tx *bolt.Tx) error) error {
	ix.groups.mu.Lock()
	if g := ix.groups.open; g != nil {
		i := len(g.fns)
		g.fns = append(g.fns, fn)
		ix.groups.mu.Unlock()
		<-g.done
		return g.errs[i]
	}
	g := &writeGroup{fns: []func(tx *bolt.Tx) error{fn}, done: make(chan struct{})}
	ix.groups.open = g
	ix.groups.mu.Unlock()
	time.Sleep(groupDelay) // the others join meanwhile
	ix.groups.mu.Lock()
	ix.groups.open = nil
	ix.groups.mu.Unlock()
	g.errs = make([]error, len(g.fns))
	failed := fmt.Errorf("index %s: the transaction of a write committed with this one panicked", ix.db.Path())
	for i := range g.errs {
		g.errs[i] = failed // unless set below: the panic goes on, untouched
	}
	defer close(g.done)
	err := ix.write(func(tx *bolt.Tx) error {
		for _, fn := range g.fns {
			if err := fn(tx); err != nil {
				return err
			}
		}
		return nil
	})
	for i, fn := range g.fns {
		if err == nil || len(g.fns) == 1 {
			g.errs[i] = err
		} else {
			g.errs[i] = ix.write(fn)
		}
	}
	return g.errs[0]
}
