package storage

import (
	"testing"
	"testing/synctest"
)

// IncompleteFills (the fills' resume, in the background of a start) reads
// every mirror record only after the mapped-page watcher's first release:
// beside that release's walk, its own releases would be skipped.
func TestIncompleteFillsWaitsForTheFirstRelease(t *testing.T) {
	ix := openTestIndex(t)
	ix.mapped.stop() // the real watcher, if the platform has one
	synctest.Test(t, func(t *testing.T) {
		w := &mappedWatch{stopc: make(chan struct{}), walked: make(chan struct{})}
		ix.mapped = w
		defer func() { ix.mapped = nil }() // its channels are the bubble's
		done := make(chan struct{})
		go func() {
			defer close(done)
			if _, err := ix.IncompleteFills(); err != nil {
				t.Error(err)
			}
		}()
		synctest.Wait()
		select {
		case <-done:
			t.Fatal("IncompleteFills read before the watcher's first release")
		default:
		}
		close(w.walked)
		<-done
	})
}
