package storage

import (
	"bytes"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	bolt "go.etcd.io/bbolt"
)

// syncBuffer is a log sink safe for the index's goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// A write that holds the write lock over 100 ms (on the limits' clock) is
// logged as a warning with where its time went; one under it is not.
func TestSlowWriteLogged(t *testing.T) {
	ix := openTestIndex(t)
	var logs syncBuffer
	ix.SetLogger(slog.New(slog.NewTextHandler(&logs, nil)))
	put := func(i int) {
		t.Helper()
		if err := ix.PutManifestBody(digest.FromString(fmt.Sprint(i)), []byte("body")); err != nil {
			t.Fatal(err)
		}
	}

	// Each read of this clock is 1 ms later: a write reads it three times.
	ix.writeLimits = &writeLimits{keys: 1000, hold: time.Hour, now: tickingClock(time.Millisecond)}
	put(1)
	if got := logs.String(); got != "" || ix.slowCommits.Load() != 0 {
		t.Fatalf("a fast write was logged: %q", got)
	}

	// 60 ms a read: 60 ms of work and 60 of commit.
	ix.writeLimits = &writeLimits{keys: 1000, hold: time.Hour, now: tickingClock(60 * time.Millisecond)}
	put(2)
	got := logs.String()
	if ix.slowCommits.Load() != 1 || strings.Count(got, "\n") != 1 {
		t.Fatalf("want one slow write logged, got %d: %q", ix.slowCommits.Load(), got)
	}
	for _, want := range []string{"level=WARN", "slow index write", "by=storage.(*Index).PutManifestBody", "held=120.0ms", "work=60.0ms", "commit=60.0ms",
		"spill=", "write_and_sync=", "other=", "lock_wait=", "changed_pages=", "free_pages=", "file_grew_bytes=", "open_read_transactions=", "cpu=", "system_cpu=", "minor_faults=", "involuntary_switches=", "gc_cycles="} {
		if !strings.Contains(got, want) {
			t.Errorf("log lacks %q: %s", want, got)
		}
	}
	// What the disk did meanwhile, where its counters are known.
	known := ix.disk.read().ok
	for _, field := range []string{"disk_reads=", "disk_writes=", "disk_discards=", "disk_flushes=", "disk_in_flight="} {
		if strings.Contains(got, field) != known {
			t.Errorf("the disk's counters known: %v, but %q in the log: %v: %s", known, field, !known, got)
		}
	}

	// A pass's write names the pass, not the helpers between it and the
	// transaction.
	if _, err := ix.writeAll(1, batchWrite{item: func(tx *bolt.Tx, _ int) (int, error) {
		return 1, tx.Bucket(bucketBodies).Put([]byte("k"), []byte("v"))
	}}); err != nil {
		t.Fatal(err)
	}
	if got := logs.String(); ix.slowCommits.Load() != 2 || !strings.Contains(got, "by=storage.TestSlowWriteLogged held=") {
		t.Fatalf("want the pass's write logged by the test, got %d: %q", ix.slowCommits.Load(), got)
	}
}

// The hold ends when bbolt releases the write lock: a commit handler the
// transaction registered (a memo's forget) runs after it and is not held
// time, though Commit returns only after it. The clock steps 10 ms a read
// and the handler reads it 50 times: held is the work's and the commit's
// step each, not the handler's 500 ms.
func TestHeldEndsAtUnlock(t *testing.T) {
	ix := openTestIndex(t)
	clock := tickingClock(10 * time.Millisecond)
	ix.writeLimits = &writeLimits{keys: 1000, hold: time.Hour, now: clock}
	var handlerRan bool
	before := ix.WriteTotals().Held
	held, err := ix.update(func(tx *bolt.Tx, _ *budget) error {
		tx.OnCommit(func() {
			for range 50 {
				clock()
			}
			handlerRan = true
		})
		return tx.Bucket(bucketBodies).Put([]byte("k"), []byte("v"))
	})
	if err != nil {
		t.Fatal(err)
	}
	if !handlerRan || held != 20*time.Millisecond {
		t.Fatalf("held %v (handler ran: %v); want 20ms, the commit handler's time left out", held, handlerRan)
	}
	if got := ix.WriteTotals().Held - before; got != held {
		t.Fatalf("write totals held %v, want %v", got, held)
	}
}

// A pass's writes sync the filesystem before each transaction (outside
// the write lock), once per transaction: 10 keys at 3 per transaction are
// 4 transactions and 4 flushes; a single write flushes nothing.
func TestPassWritesFlushFilesystemFirst(t *testing.T) {
	ix := openTestIndex(t)
	if err := ix.PutManifestBody(digest.FromString("one"), []byte("body")); err != nil {
		t.Fatal(err)
	}
	if n := ix.fsFlushes.Load(); n != 0 {
		t.Fatalf("a single write flushed the filesystem %d times", n)
	}
	ix.writeLimits = &writeLimits{keys: 3, hold: time.Hour, now: time.Now}
	var txs int
	_, err := ix.writeAll(10, batchWrite{
		begin: func(*bolt.Tx) error { txs++; return nil },
		item: func(tx *bolt.Tx, i int) (int, error) {
			return 1, tx.Bucket(bucketBodies).Put([]byte(fmt.Sprint("key ", i)), []byte("v"))
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	if n := ix.fsFlushes.Load(); txs != 4 || n != 4 {
		t.Fatalf("%d transactions, %d flushes; want 4 and 4", txs, n)
	}
}
