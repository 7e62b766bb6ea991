package storage

import (
	"errors"
	"fmt"
	"sync"
	"testing"
	"testing/synctest"

	"github.com/opencontainers/go-digest"
	bolt "go.etcd.io/bbolt"
)

// Grouped writes that come together commit in one transaction; one that
// fails fails alone: the others are committed all the same (each in a
// transaction of its own), and its error is its own.
func TestGroupedWritesCommitTogetherAndFailAlone(t *testing.T) {
	for _, failing := range []int{-1, 1} {
		t.Run(fmt.Sprint("failing ", failing), func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				ix := openTestIndex(t)
				refused := errors.New("refused")
				before := ix.WriteTotals().Commits
				var errs [3]error
				var wg sync.WaitGroup
				for i := range 3 {
					e := manifestEntry("library/a", fmt.Sprint("v", i), digest.FromString(fmt.Sprint(i)), 10)
					wg.Go(func() {
						if i == failing {
							errs[i] = ix.grouped(func(*bolt.Tx) error { return refused })
							return
						}
						e.Grouped = true
						errs[i] = ix.RecordManifest(e)
					})
				}
				wg.Wait()
				for i, err := range errs {
					if (i == failing) != errors.Is(err, refused) || (i != failing && err != nil) {
						t.Errorf("write %d: %v", i, err)
					}
				}
				for i := range 3 {
					_, ok, err := ix.Manifest(digest.FromString(fmt.Sprint(i)))
					if err != nil || ok != (i != failing) {
						t.Errorf("manifest %d recorded %v (%v), want %v", i, ok, err, i != failing)
					}
				}
				want := int64(1) // together
				if failing >= 0 {
					want = 2 // the group's rolled back, then each alone
				}
				if n := ix.WriteTotals().Commits - before; n != want {
					t.Errorf("%d commits, want %d", n, want)
				}
			})
		})
	}
}
