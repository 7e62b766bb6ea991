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

// A group whose transaction fails runs its other writes again, each
// alone: what they add (the stored total, a fill record) is added once,
// not once per run.
func TestGroupedWritesRunAgainAddOnce(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ix := openTestIndex(t)
		refused := errors.New("refused")
		before := ix.StoredBytes()
		var wg sync.WaitGroup
		for i := range 3 {
			e := manifestEntry("library/a", fmt.Sprint("v", i), digest.FromString(fmt.Sprint(i)), 10)
			e.Grouped = true
			wg.Go(func() {
				if i == 1 {
					_ = ix.grouped(func(*bolt.Tx) error { return refused })
					return
				}
				if err := ix.RecordManifest(e); err != nil {
					t.Errorf("write %d: %v", i, err)
				}
			})
		}
		wg.Wait()
		if got := ix.StoredBytes() - before; got != 20 {
			t.Errorf("stored total grew by %d, want 20 (two manifests of 10)", got)
		}
		if diff, err := ix.checkStored(); err != nil || diff != 0 {
			t.Errorf("stored total off its records by %d (%v), want 0", diff, err)
		}
		for _, i := range []int{0, 2} {
			if f, ok, err := ix.Fill("docker.io", "library/a", digest.FromString(fmt.Sprint(i))); err != nil || !ok || f.State != FillPartial {
				t.Errorf("fill of manifest %d: %+v %v %v, want partial", i, f, ok, err)
			}
		}
	})
}

// A panic in a group's transaction (bbolt's, on a damaged page, in any
// of its writes) is its first caller's, to recover; the others are told
// their write failed and do not wait for ever, nothing of the group is
// committed, and the index writes on.
func TestGroupedWritesPanicFailsTheOthers(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ix := openTestIndex(t)
		recovered := make(chan any, 1)
		go func() {
			defer func() { recovered <- recover() }()
			e := manifestEntry("library/a", "v0", digest.FromString("0"), 10)
			e.Grouped = true
			_ = ix.RecordManifest(e)
		}()
		synctest.Wait() // the first, waiting for others to join
		var errs [2]error
		var wg sync.WaitGroup
		wg.Go(func() { errs[0] = ix.grouped(func(*bolt.Tx) error { panic("damaged page") }) })
		wg.Go(func() {
			e := manifestEntry("library/a", "v2", digest.FromString("2"), 10)
			e.Grouped = true
			errs[1] = ix.RecordManifest(e)
		})
		wg.Wait()
		if r := <-recovered; r != "damaged page" {
			t.Errorf("the first caller recovered %v, want the panic", r)
		}
		for i, err := range errs {
			if err == nil {
				t.Errorf("joined write %d: no error, want its group's failure", i)
			}
		}
		for _, s := range []string{"0", "2"} {
			if _, ok, err := ix.Manifest(digest.FromString(s)); err != nil || ok {
				t.Errorf("manifest %s recorded %v (%v) by a group that panicked", s, ok, err)
			}
		}
		e := manifestEntry("library/a", "v3", digest.FromString("3"), 10)
		e.Grouped = true
		if err := ix.RecordManifest(e); err != nil {
			t.Fatalf("a write after the panic: %v", err)
		}
	})
}
