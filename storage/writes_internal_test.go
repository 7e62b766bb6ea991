package storage

import (
	"fmt"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
)

func openTestIndex(t *testing.T) *Index {
	t.Helper()
	ix, err := OpenIndex(filepath.Join(t.TempDir(), "index.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ix.Close() })
	return ix
}

// version is the index's version (its last transaction ID).
func version(t *testing.T, ix *Index) int {
	t.Helper()
	v, err := ix.Version()
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// tickingClock advances by step each time it is read: a transaction that
// reads it k times has run k steps.
func tickingClock(step time.Duration) func() time.Time {
	t := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	return func() time.Time {
		t = t.Add(step)
		return t
	}
}

// images records n images of tags tags each (and a mirror record each)
// and returns what evicting them all removes.
func unrootImages(t *testing.T, ix *Index, n, tags int) []Unroot {
	t.Helper()
	var us []Unroot
	for i := range n {
		d := digest.FromString(fmt.Sprint("image ", i))
		u := Unroot{Upstream: "docker.io", Repo: "library/r", Digest: d, Fills: []FillKey{{Upstream: "docker.io", Repo: "library/r", Digest: d}}}
		for k := range tags {
			tag := fmt.Sprintf("t%d-%d", i, k)
			if err := ix.RecordManifest(ManifestEntry{Upstream: "docker.io", Repo: "library/r", Digest: d, Tag: tag,
				Fill:   &FillRecord{Upstream: "docker.io", Repo: "library/r", State: FillComplete},
				Record: ManifestRecord{MediaType: "application/vnd.oci.image.manifest.v1+json", Size: 10}}); err != nil {
				t.Fatal(err)
			}
			u.Tags = append(u.Tags, tag)
		}
		us = append(us, u)
	}
	return us
}

// wantUnrooted fails unless every tag and mirror record of us is gone.
func wantUnrooted(t *testing.T, ix *Index, us []Unroot) {
	t.Helper()
	for _, u := range us {
		for _, tag := range u.Tags {
			if _, ok, err := ix.Tag(u.Upstream, u.Repo, tag); err != nil || ok {
				t.Fatalf("tag %s survived (%v)", tag, err)
			}
		}
		if _, ok, err := ix.Fill(u.Upstream, u.Repo, u.Digest); err != nil || ok {
			t.Fatalf("mirror record of %s survived (%v)", u.Digest, err)
		}
	}
}

// A limit of N keys per transaction: ceil(keys/N) transactions, even
// when they split an image, and everything removed.
func TestUnrootImagesKeyLimit(t *testing.T) {
	ix := openTestIndex(t)
	us := unrootImages(t, ix, 10, 4) // 10 × (4 tags + 1 mirror record) = 50 keys
	ix.writeLimits = &writeLimits{keys: 7, hold: time.Hour, now: time.Now}
	before := version(t, ix)
	if err := ix.UnrootImages(us); err != nil {
		t.Fatal(err)
	}
	if got, want := version(t, ix)-before, (50+6)/7; got != want {
		t.Errorf("UnrootImages of 50 keys, 7 per transaction: %d transactions, want %d", got, want)
	}
	wantUnrooted(t, ix, us)
}

// A limit of N changed pages: a transaction commits once it has changed
// N pages of the tree, however few keys that took; and the keys go in
// their order, so that keys side by side share pages. Here the 5 images'
// tags are in one page and their mirror records in another: 2 pages take
// every tag and a mirror record, the next transaction the other 4 (in
// the images' order, each tag then its mirror record: 5 transactions;
// without the page limit: 1).
func TestUnrootImagesPageLimit(t *testing.T) {
	ix := openTestIndex(t)
	us := unrootImages(t, ix, 5, 1)
	ix.writeLimits = &writeLimits{keys: 1000, pages: 2, hold: time.Hour, now: time.Now}
	before := version(t, ix)
	if err := ix.UnrootImages(us); err != nil {
		t.Fatal(err)
	}
	if got := version(t, ix) - before; got != 2 {
		t.Errorf("UnrootImages of 5 images, 2 pages per transaction: %d transactions, want 2", got)
	}
	wantUnrooted(t, ix, us)
}

// A transaction stops taking keys once it has run the time limit, by the
// index's clock: here each key takes one 10 ms tick, so 5 fit in 50 ms.
func TestUnrootImagesTimeLimit(t *testing.T) {
	ix := openTestIndex(t)
	us := unrootImages(t, ix, 6, 4) // 30 keys
	ix.writeLimits = &writeLimits{keys: 1000, hold: 50 * time.Millisecond, now: tickingClock(10 * time.Millisecond)}
	before := version(t, ix)
	longest, _, err := ix.UnrootImagesTimed(us)
	if err != nil {
		t.Fatal(err)
	}
	if got := version(t, ix) - before; got != 6 {
		t.Errorf("UnrootImages of 30 keys, 5 per 50 ms: %d transactions, want 6", got)
	}
	if longest <= 0 {
		t.Errorf("longest write %v, want it measured", longest)
	}
	wantUnrooted(t, ix, us)
}

// blobs records n blobs, each linked from one repository.
func blobs(t *testing.T, ix *Index, n int) []digest.Digest {
	t.Helper()
	var ds []digest.Digest
	for i := range n {
		d := digest.FromString(fmt.Sprint("blob ", i))
		if err := ix.RecordBlob("docker.io", "library/r", d, 10, time.Now()); err != nil {
			t.Fatal(err)
		}
		ds = append(ds, d)
	}
	return ds
}

// ForgetRooted stops at the write limits and says how far it got; Forget
// goes on until everything is forgotten, one transaction per limit.
func TestForgetKeyLimit(t *testing.T) {
	ix := openTestIndex(t)
	ds := blobs(t, ix, 20)
	// A blob is 3 keys (its record, one link, one holder): 2 per
	// transaction under a limit of 6.
	ix.writeLimits = &writeLimits{keys: 6, hold: time.Hour, now: time.Now}
	roots, err := ix.Roots()
	if err != nil {
		t.Fatal(err)
	}
	res, err := ix.ForgetRooted(ds, roots, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	if res.Done != 2 || len(res.Forgotten) != 2 || res.Version != roots.Version+1 {
		t.Fatalf("ForgetRooted under a 6-key limit = done %d, forgot %d, version %d; want 2, 2, %d",
			res.Done, len(res.Forgotten), res.Version, roots.Version+1)
	}
	before := version(t, ix)
	gone, err := ix.Forget(append(ds[2:], ds[5]), nil) // a digest twice: forgotten once
	if err != nil {
		t.Fatal(err)
	}
	if len(gone) != 18 {
		t.Errorf("Forget: %d forgotten, want 18", len(gone))
	}
	if got := version(t, ix) - before; got != 9 {
		t.Errorf("Forget of 18 blobs, 2 per transaction: %d transactions, want 9", got)
	}
	for _, d := range ds {
		if _, ok, err := ix.Blob(d); err != nil || ok {
			t.Fatalf("blob %s survived (%v)", d, err)
		}
	}
	if ix.StoredBytes() != 0 {
		t.Errorf("stored %d bytes after forgetting everything", ix.StoredBytes())
	}
}

// Forget's time limit counts the digests it keeps as well as those it
// removes.
func TestForgetTimeLimit(t *testing.T) {
	ix := openTestIndex(t)
	ds := blobs(t, ix, 12)
	ix.writeLimits = &writeLimits{keys: 1000, hold: 30 * time.Millisecond, now: tickingClock(10 * time.Millisecond)}
	keepOdd := func(d digest.Digest, _ ContentEntry) bool { return slices.Index(ds, d)%2 == 1 }
	before := version(t, ix)
	gone, err := ix.Forget(ds, keepOdd)
	if err != nil {
		t.Fatal(err)
	}
	if len(gone) != 6 {
		t.Errorf("Forget kept the odd ones: %d forgotten, want 6", len(gone))
	}
	if got := version(t, ix) - before; got != 4 {
		t.Errorf("Forget of 12 digests, 3 per 30 ms: %d transactions, want 4", got)
	}
}

// Flush writes the access times in transactions bounded by the limits.
func TestFlushKeyLimit(t *testing.T) {
	ix := openTestIndex(t)
	ds := blobs(t, ix, 10)
	at := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	for _, d := range ds {
		ix.Touch(d, at)
	}
	ix.writeLimits = &writeLimits{keys: 3, hold: time.Hour, now: time.Now}
	before := version(t, ix)
	if _, err := ix.FlushTimed(); err != nil {
		t.Fatal(err)
	}
	if got := version(t, ix) - before; got != 4 {
		t.Errorf("Flush of 10 access times, 3 per transaction: %d transactions, want 4", got)
	}
	for _, d := range ds {
		if rec, _, err := ix.Blob(d); err != nil || !rec.LastAccess.Equal(at) {
			t.Fatalf("blob %s last access %v (%v), want %v", d, rec.LastAccess, err, at)
		}
	}
}

// Flush writes the manifests' pull counts and last pulls in transactions
// bounded by the limits too, and loses none.
func TestFlushPullsKeyLimit(t *testing.T) {
	ix := openTestIndex(t)
	at := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	var ds []digest.Digest
	for i := range 10 {
		d := digest.FromString(fmt.Sprint("manifest ", i))
		ds = append(ds, d)
		ix.CountPull(d)
		ix.CountPull(d)
		if err := ix.TouchManifest(d, at); err != nil {
			t.Fatal(err)
		}
	}
	ix.writeLimits = &writeLimits{keys: 3, hold: time.Hour, now: time.Now}
	before := version(t, ix)
	if _, err := ix.FlushTimed(); err != nil {
		t.Fatal(err)
	}
	// 10 counts, then 10 times, 3 per transaction.
	if got := version(t, ix) - before; got != 8 {
		t.Errorf("Flush of 10 pull counts and 10 last pulls, 3 per transaction: %d transactions, want 8", got)
	}
	pulls, err := ix.Pulls()
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range ds {
		if pulls[d] != 2 {
			t.Errorf("manifest %s: %d pulls, want 2", d, pulls[d])
		}
		if got, err := ix.recordedAccess(d); err != nil || !got.Equal(at) {
			t.Errorf("manifest %s: last pull %v (%v), want %v written", d, got, err, at)
		}
	}
}
