package storage

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/distribution/distribution/v3/registry/storage/driver/inmemory"
	"github.com/opencontainers/go-digest"
	bolt "go.etcd.io/bbolt"
)

// storedState reads, on one snapshot, the stored total's record, a fresh
// sum of the blob and manifest records, and the index's last transaction.
func storedState(t *testing.T, ix *Index) (rec storedRecord, ok bool, sum int64, last int) {
	t.Helper()
	err := ix.db.View(func(tx *bolt.Tx) error {
		rec, ok = readStored(tx)
		last = tx.ID()
		var err error
		sum, err = ix.sumStored(tx)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return rec, ok, sum, last
}

// checkPersisted fails unless the stored total's record equals a fresh
// sum and StoredBytes, and the last transaction stamped it (so that the
// next open trusts it).
func checkPersisted(t *testing.T, ix *Index, step string) int64 {
	t.Helper()
	rec, ok, sum, last := storedState(t, ix)
	switch {
	case !ok:
		t.Fatalf("after %s: no stored total's record", step)
	case rec.bytes != sum:
		t.Fatalf("after %s: the record says %d stored, a sum %d", step, rec.bytes, sum)
	case ix.StoredBytes() != sum:
		t.Fatalf("after %s: StoredBytes %d, a sum %d", step, ix.StoredBytes(), sum)
	case rec.tx != last:
		t.Fatalf("after %s: the record is stamped by transaction %d, the last is %d: the next open would sum", step, rec.tx, last)
	}
	return sum
}

func manifestEntry(repo, tag string, d digest.Digest, size int64) ManifestEntry {
	return ManifestEntry{Upstream: "docker.io", Repo: repo, Digest: d, Tag: tag,
		Fill:   &FillRecord{Upstream: "docker.io", Repo: repo, State: FillPartial},
		Record: ManifestRecord{MediaType: "application/vnd.oci.image.manifest.v1+json", Size: size, FetchedAt: time.Now()}}
}

// The stored total's record follows every write of the index, and every
// write stamps it: after each step of a mix of records, re-records,
// touches, forgets, an eviction's unroots and every other kind of write,
// the record equals a fresh sum and StoredBytes. A write of a blob or
// manifest record that skipped putContent or deleteContent (the record
// left behind the sum), or a write transaction that skipped the stamp
// (the next open would sum again), fails it.
func TestStoredTotalFollowsEveryWrite(t *testing.T) {
	ix := openTestIndex(t)
	ix.SetWriteLimits(3, time.Hour) // forgets and unroots in several transactions
	checkPersisted(t, ix, "the open")
	now := time.Now()
	blob := func(i int) digest.Digest { return digest.FromString(fmt.Sprint("blob ", i)) }
	man := func(i int) digest.Digest { return digest.FromString(fmt.Sprint("manifest ", i)) }
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	var grown []int64
	var mu sync.Mutex
	ix.OnGrow(func(n int64) { mu.Lock(); grown = append(grown, n); mu.Unlock() })

	steps := []struct {
		name string
		run  func()
	}{
		{"blobs recorded at once (one batch)", func() {
			var wg sync.WaitGroup
			for i := range 8 {
				wg.Go(func() { must(ix.RecordBlob("docker.io", "library/a", blob(i), int64(1000+i), now)) })
			}
			wg.Wait()
		}},
		{"a blob recorded again", func() { must(ix.RecordBlob("docker.io", "library/b", blob(0), 1000, now)) }},
		{"manifests recorded with tags", func() {
			for i := range 6 {
				must(ix.RecordManifest(manifestEntry("library/a", fmt.Sprint("v", i), man(i), int64(100+i))))
			}
		}},
		{"a manifest recorded again", func() { must(ix.RecordManifest(manifestEntry("library/b", "v0", man(0), 100))) }},
		{"a link", func() { must(ix.Link("docker.io", "library/c", blob(1))) }},
		{"touches flushed", func() {
			for i := range 8 {
				ix.Touch(blob(i), now.Add(time.Minute))
			}
			ix.TouchManifest(man(1), now)
			ix.CountPull(man(1))
			must(ix.Flush())
		}},
		{"a tag touched, deleted, deleted if", func() {
			must(ix.TouchTag("docker.io", "library/a", "v1", now))
			must(ix.DeleteTag("docker.io", "library/a", "v2"))
			_, err := ix.DeleteTagIf("docker.io", "library/a", "v3", man(3), time.Now())
			must(err)
		}},
		{"a manifest body kept and dropped", func() {
			must(ix.PutManifestBody(man(1), []byte("{}")))
			must(ix.DeleteManifestBody(man(1)))
		}},
		{"fills", func() {
			must(ix.PutFill(man(1), FillRecord{Upstream: "docker.io", Repo: "library/a", State: FillComplete}))
			must(ix.DeleteFill("docker.io", "library/a", man(2)))
		}},
		{"pins", func() {
			must(ix.Pin(t.Context(), man(4).String(), PinRecord{PinnedAt: now}))
			must(ix.Unpin(t.Context(), man(4).String()))
		}},
		{"a job", func() {
			j := newJob("job1", 2)
			must(ix.PutJob(j))
			j.State = JobDone
			must(ix.UpdateJob(j, map[int]JobImage{0: {Image: "x", State: JobDone}}))
		}},
		{"referrers", func() {
			must(ix.PutReferrers("docker.io", "library/a", man(1), "", ReferrersRecord{Body: []byte("{}")}))
			must(ix.TouchReferrers("docker.io", "library/a", man(1), "", now))
			must(ix.DeleteReferrers("docker.io", "library/a", man(1), time.Now()))
		}},
		{"the store's identity", func() { must(ix.SetStore(StoreIdentity{Kind: "filesystem"})) }},
		{"a collection's forget", func() {
			_, err := ix.Forget([]digest.Digest{blob(5), blob(6), man(5), digest.FromString("never stored")}, nil)
			must(err)
		}},
		{"a forget that keeps some", func() {
			_, err := ix.Forget([]digest.Digest{blob(2), blob(3), blob(4)}, func(d digest.Digest, _ ContentEntry) bool { return d == blob(3) })
			must(err)
		}},
		{"an eviction: unroot, then forget", func() {
			us := []Unroot{{Upstream: "docker.io", Repo: "library/a", Digest: man(1), Tags: []string{"v1"}, Fills: []FillKey{{Upstream: "docker.io", Repo: "library/a", Digest: man(1)}}}}
			must(ix.UnrootImages(us))
			roots, err := ix.Roots()
			must(err)
			_, err = ix.ForgetRooted([]digest.Digest{man(1), blob(1), blob(7)}, roots, true, nil)
			must(err)
		}},
		{"everything forgotten", func() {
			var all []digest.Digest
			for i := range 8 {
				all = append(all, blob(i), man(i))
			}
			_, err := ix.Forget(all, nil)
			must(err)
		}},
		{"recorded again", func() { must(ix.RecordBlob("docker.io", "library/a", blob(0), 1000, now)) }},
	}
	for _, s := range steps {
		s.run()
		checkPersisted(t, ix, s.name)
	}
	if ix.StoredBytes() != 1000 {
		t.Errorf("StoredBytes at the end = %d, want 1000", ix.StoredBytes())
	}
	mu.Lock()
	defer mu.Unlock()
	if len(grown) == 0 || grown[len(grown)-1] != 1000 {
		t.Errorf("OnGrow was told %v, want the last 1000", grown)
	}
}

// A write of a blob record past putContent is refused (put), so that no
// write path can leave the stored total behind by accident.
func TestPutRefusesContentRecords(t *testing.T) {
	ix := openTestIndex(t)
	err := ix.write(func(tx *bolt.Tx) error {
		return put(tx, bucketBlobs, []byte(digest.FromString("x")), BlobRecord{Size: 1})
	})
	if err == nil {
		t.Fatal("put of a blob record succeeded")
	}
	checkPersisted(t, ix, "the refused put")
}

// rawUpdate writes the closed index at path as another program (or an
// older version) would: past Index, its transaction not stamped.
func rawUpdate(t *testing.T, path string, fn func(tx *bolt.Tx) error) {
	t.Helper()
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if err := db.Update(fn); err != nil {
		t.Fatal(err)
	}
}

// OpenIndex takes the stored total from the record when the last
// transaction stamped it, and sums the records otherwise: after a write
// of a version without the record (a downgrade and an upgrade), when the
// record is missing (an index written before it), or negative. After a
// sum the record is written again, and trusted at the next open.
func TestOpenReadsOrSumsTheStoredTotal(t *testing.T) {
	path := filepath.Join(t.TempDir(), "index.db")
	reopen := func(ix *Index) *Index {
		t.Helper()
		if ix != nil {
			if err := ix.Close(); err != nil {
				t.Fatal(err)
			}
		}
		ix, err := OpenIndex(path)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ix.Close() })
		return ix
	}
	ix := reopen(nil)
	now := time.Now()
	for i := range 3 {
		if err := ix.RecordBlob("docker.io", "library/a", digest.FromString(fmt.Sprint(i)), 100, now); err != nil {
			t.Fatal(err)
		}
	}
	checkPersisted(t, ix, "the records")
	ix.Close()

	// A record this version stamped, saying other than the records: the
	// open reads it, it does not sum.
	rawUpdate(t, path, func(tx *bolt.Tx) error {
		return writeStored(tx, storedRecord{bytes: 12345, tx: tx.ID()})
	})
	ix = reopen(nil)
	if got := ix.StoredBytes(); got != 12345 {
		t.Fatalf("StoredBytes = %d after an open of a stamped record of 12345: it summed", got)
	}
	if rec, _, _, last := storedState(t, ix); rec.bytes != 12345 || rec.tx != last {
		t.Fatalf("the record after the open = %+v (last transaction %d)", rec, last)
	}
	// Put right, as a version without the record would leave it.
	ix.Close()
	rawUpdate(t, path, func(tx *bolt.Tx) error {
		return writeStored(tx, storedRecord{bytes: 300, tx: tx.ID()})
	})

	cases := []struct {
		name   string
		change func(tx *bolt.Tx) error
		want   int64
	}{
		{"a blob recorded by a version without the record", func(tx *bolt.Tx) error {
			return tx.Bucket(bucketBlobs).Put([]byte(digest.FromString("old version")), []byte(`{"size":50,"fetched_at":"2025-03-04T05:06:07Z","last_access":"2025-03-04T05:06:07Z"}`))
		}, 350},
		{"no record (an index written before it)", func(tx *bolt.Tx) error {
			return tx.Bucket(bucketMeta).Delete(keyStored)
		}, 350},
		{"a negative record", func(tx *bolt.Tx) error {
			return writeStored(tx, storedRecord{bytes: -1, tx: tx.ID()})
		}, 350},
		{"a record of the wrong length", func(tx *bolt.Tx) error {
			return tx.Bucket(bucketMeta).Put(keyStored, []byte("350"))
		}, 350},
	}
	for _, c := range cases {
		rawUpdate(t, path, c.change)
		ix = reopen(nil)
		if got := ix.StoredBytes(); got != c.want {
			t.Errorf("%s: StoredBytes after the open = %d, want %d", c.name, got, c.want)
		}
		checkPersisted(t, ix, c.name+": the open")
		ix = reopen(ix)
		if got := ix.StoredBytes(); got != c.want {
			t.Errorf("%s: StoredBytes after the next open = %d, want %d", c.name, got, c.want)
		}
		ix.Close()
	}
}

// checkStored corrects the stored total (the record and StoredBytes) by
// what a write past putContent changed, and finds nothing otherwise.
func TestCheckStoredCorrectsTheTotal(t *testing.T) {
	ix := openTestIndex(t)
	if err := ix.RecordBlob("docker.io", "library/a", digest.FromString("a"), 100, time.Now()); err != nil {
		t.Fatal(err)
	}
	if diff, err := ix.checkStored(); err != nil || diff != 0 {
		t.Fatalf("checkStored of a right total = %d, %v", diff, err)
	}
	raw, _ := json.Marshal(BlobRecord{Size: 40})
	if err := ix.write(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketBlobs).Put([]byte(digest.FromString("past")), raw)
	}); err != nil {
		t.Fatal(err)
	}
	if diff, err := ix.checkStored(); err != nil || diff != 40 {
		t.Fatalf("checkStored after a write past putContent = %d, %v; want 40", diff, err)
	}
	checkPersisted(t, ix, "the correction")
	if ix.StoredBytes() != 140 {
		t.Errorf("StoredBytes = %d, want 140", ix.StoredBytes())
	}
}

// On a shared index, records adopted from the bucket and local records
// the bucket no longer holds (pruned by Refresh) change the stored total
// as they are written, and Refresh's check finds it right.
func TestStoredTotalOfASharedIndex(t *testing.T) {
	records := NewDriverRecords(inmemory.New())
	clock := time.Now()
	now := func() time.Time { return clock }
	open := func() *Index {
		ix := openTestIndex(t)
		ix.ShareRecords(records, now)
		return ix
	}
	a, b := open(), open()
	var logged syncBuffer
	b.SetLogger(slog.New(slog.NewTextHandler(&logged, nil)))
	d1, d2, d3 := digest.FromString("one"), digest.FromString("two"), digest.FromString("three")
	for i, d := range []digest.Digest{d1, d2} {
		if err := a.RecordBlob("docker.io", "library/a", d, int64(100*(i+1)), clock); err != nil {
			t.Fatal(err)
		}
	}
	if _, ok, err := b.Blob(d1); err != nil || !ok {
		t.Fatalf("b.Blob = %v, %v", ok, err)
	}
	checkPersisted(t, b, "adopting a blob")
	if b.StoredBytes() != 100 {
		t.Fatalf("b.StoredBytes = %d after adopting one blob, want 100", b.StoredBytes())
	}
	// b's own blob, then gone from the bucket (another replica evicted it).
	if err := b.RecordBlob("docker.io", "library/a", d3, 1000, clock); err != nil {
		t.Fatal(err)
	}
	if err := records.Delete(t.Context(), string(bucketBlobs), string(d3)); err != nil {
		t.Fatal(err)
	}
	clock = clock.Add(2 * PruneAge)
	if err := b.Refresh(t.Context()); err != nil {
		t.Fatal(err)
	}
	checkPersisted(t, b, "a refresh")
	if logged.String() != "" {
		t.Errorf("the refresh's check corrected the total: %s", logged.String())
	}
	if b.StoredBytes() != 300 {
		t.Errorf("b.StoredBytes after a refresh = %d, want 300 (d1 and d2; d3 pruned)", b.StoredBytes())
	}
}

// A drop of an unreadable record (DropRecords: a pull meeting it, a
// pass) sums the stored total again, while pulls record blobs beside it:
// a pull's transaction committed before the drop's sum, its handlers
// (StoredBytes' change) not yet run when the drop sets StoredBytes, was
// counted twice; one committed after the sum, its handlers run before the
// drop sets StoredBytes, not at all. StoredBytes must still be the sum of
// the records afterwards: off, max_size's eviction evicts too much (or
// too little) until a restart.
func TestDropRecordsBesideAPullKeepsTheStoredTotal(t *testing.T) {
	ix := openTestIndex(t)
	now := time.Now()
	if err := ix.RecordBlob("docker.io", "library/a", digest.FromString("a"), 1000, now); err != nil {
		t.Fatal(err)
	}
	// A manifest record a bit flip made unreadable.
	bad := digest.FromString("bad manifest")
	if err := ix.RecordManifest(manifestEntry("library/a", "v1", bad, 100)); err != nil {
		t.Fatal(err)
	}
	if err := ix.db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketManifests).Put([]byte(bad), []byte(`{"size":1`))
	}); err != nil {
		t.Fatal(err)
	}
	// A pull's blob record, its goroutine held between its commit (the
	// write lock let go) and its handlers, as a preempted one is.
	committed, release, done := make(chan struct{}), make(chan struct{}), make(chan error)
	go func() {
		done <- ix.write(func(tx *bolt.Tx) error {
			tx.OnCommit(func() { close(committed); <-release })
			raw, _ := json.Marshal(BlobRecord{Size: 300, FetchedAt: now, LastAccess: now})
			return ix.putContent(tx, bucketBlobs, []byte(digest.FromString("pulled")), raw)
		})
	}()
	<-committed
	if err := ix.DropRecords([]UnreadableRecord{{Bucket: BucketManifests, Key: bad.String()}}); err != nil {
		t.Fatal(err)
	}
	close(release)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if sum := checkPersisted(t, ix, "a drop beside a pull"); sum != 1300 {
		t.Errorf("the records sum %d, want 1300", sum)
	}
}
