package storage

import (
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	bolt "go.etcd.io/bbolt"
)

// putFillBehind writes a fill record straight to the database, past the
// memo, as a write that forgot to forget would.
func putFillBehind(t *testing.T, ix *Index, host, repo string, d digest.Digest, state string) {
	t.Helper()
	raw, err := json.Marshal(FillRecord{Upstream: host, Repo: repo, State: state})
	if err != nil {
		t.Fatal(err)
	}
	if err := ix.db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketMirrors).Put(linkKey(host, repo, d), raw)
	}); err != nil {
		t.Fatal(err)
	}
}

func checkFillComplete(t *testing.T, ix *Index, d digest.Digest, wantComplete, wantFound bool) {
	t.Helper()
	complete, found, err := ix.FillComplete("docker.io", "library/a", d)
	if err != nil || complete != wantComplete || found != wantFound {
		t.Fatalf("FillComplete(%s) = %v %v %v, want %v %v", d, complete, found, err, wantComplete, wantFound)
	}
}

// FillComplete answers a record it read complete from memory (shown by a
// record changed behind its back: still complete), and a partial record
// by reading it, every time.
func TestFillCompleteRemembersComplete(t *testing.T) {
	ix := openTestIndex(t)
	d, p := digest.FromString("complete"), digest.FromString("partial")
	checkFillComplete(t, ix, d, false, false)
	if err := ix.PutFill(d, FillRecord{Upstream: "docker.io", Repo: "library/a", State: FillComplete}); err != nil {
		t.Fatal(err)
	}
	if err := ix.PutFill(p, FillRecord{Upstream: "docker.io", Repo: "library/a", State: FillPartial}); err != nil {
		t.Fatal(err)
	}
	checkFillComplete(t, ix, d, true, true)
	checkFillComplete(t, ix, p, false, true)
	putFillBehind(t, ix, "docker.io", "library/a", d, FillPartial)
	putFillBehind(t, ix, "docker.io", "library/a", p, FillComplete)
	checkFillComplete(t, ix, d, true, true) // remembered
	checkFillComplete(t, ix, p, true, true) // read
	// Another repository's record of the same digest is another key.
	if c, ok, err := ix.FillComplete("docker.io", "library/b", d); err != nil || c || ok {
		t.Fatalf("another repository: %v %v %v", c, ok, err)
	}
}

// Every write of a fill record forgets what the memo held of it, from
// the start-up scan (IncompleteFills) or a lookup: a partial fill is never
// answered complete. Each case makes the record complete and remembered,
// then writes it as a user of the index does.
func TestFillWritesForgetTheMemo(t *testing.T) {
	at := time.Date(2026, 12, 3, 18, 0, 0, 0, time.UTC)
	manifest := func(ix *Index, d digest.Digest, tag string, fill *FillRecord) error {
		return ix.RecordManifest(ManifestEntry{Upstream: "docker.io", Repo: "library/a", Digest: d, Tag: tag,
			Record: ManifestRecord{MediaType: ociManifest, Size: 10, FetchedAt: at}, Fill: fill})
	}
	for _, tc := range []struct {
		name                  string
		write                 func(ix *Index, d digest.Digest) error
		wantComplete, wantHas bool
	}{
		{"PutFill partial", func(ix *Index, d digest.Digest) error {
			return ix.PutFill(d, FillRecord{Upstream: "docker.io", Repo: "library/a", State: FillPartial})
		}, false, true},
		{"DeleteFill", func(ix *Index, d digest.Digest) error { return ix.DeleteFill("docker.io", "library/a", d) }, false, false},
		{"RecordManifest adding a partial fill", func(ix *Index, d digest.Digest) error {
			// Its record gone behind the memo's back first: RecordManifest
			// adds a fill record only where there is none.
			if err := ix.db.Update(func(tx *bolt.Tx) error {
				return tx.Bucket(bucketMirrors).Delete(linkKey("docker.io", "library/a", d))
			}); err != nil {
				return err
			}
			return manifest(ix, d, "v2", &FillRecord{Upstream: "docker.io", Repo: "library/a", State: FillPartial})
		}, false, true},
		{"Forget", func(ix *Index, d digest.Digest) error {
			_, err := ix.Forget([]digest.Digest{d}, nil)
			return err
		}, false, false},
		{"UnrootImages", func(ix *Index, d digest.Digest) error {
			return ix.UnrootImages([]Unroot{{Upstream: "docker.io", Repo: "library/a", Digest: d, Tags: []string{"v1"},
				Fills: []FillKey{{Upstream: "docker.io", Repo: "library/a", Digest: d}}}})
		}, false, false},
	} {
		for _, from := range []string{"lookup", "start-up scan"} {
			t.Run(tc.name+" after a "+from, func(t *testing.T) {
				ix := openTestIndex(t)
				d := digest.FromString(tc.name)
				if err := manifest(ix, d, "v1", &FillRecord{Upstream: "docker.io", Repo: "library/a", State: FillComplete}); err != nil {
					t.Fatal(err)
				}
				if from == "lookup" {
					checkFillComplete(t, ix, d, true, true)
				} else if _, err := ix.IncompleteFills(); err != nil {
					t.Fatal(err)
				}
				if !ix.fills.has(linkKey("docker.io", "library/a", d)) {
					t.Fatal("the complete record is not remembered")
				}
				if err := tc.write(ix, d); err != nil {
					t.Fatal(err)
				}
				checkFillComplete(t, ix, d, tc.wantComplete, tc.wantHas)
			})
		}
	}
}

// A record read complete by a read that began before a write forgot a
// key is not kept (the read may have seen the record before the write),
// nor is a start-up scan's; the memo holds at most maxFillAdded keys
// added by lookups; a forgotten key of the scan's goes alone.
func TestFillMemoEpochsAndBounds(t *testing.T) {
	c := newCompleteFills()
	key := []byte("docker.io/library/a@sha256:1")
	e := c.begin()
	c.forget([]byte("docker.io/library/b@sha256:2"))
	c.add(e, key)
	if c.has(key) {
		t.Error("kept a key read before a write forgot one")
	}
	c.install(e, []uint64{c.hash(key)})
	if c.has(key) {
		t.Error("installed a scan that began before a write forgot a key")
	}
	e = c.begin()
	for i := range maxFillAdded + 100 {
		c.add(e, fmt.Appendf(nil, "docker.io/library/a@sha256:%d", i))
	}
	if len(c.added) != maxFillAdded {
		t.Errorf("%d keys added, want at most %d", len(c.added), maxFillAdded)
	}

	var keys [][]byte
	var hashes []uint64
	for i := range 1000 {
		k := fmt.Appendf(nil, "docker.io/library/c@sha256:%d", i)
		keys, hashes = append(keys, k), append(hashes, c.hash(k))
	}
	c.install(c.begin(), hashes)
	for i := 0; i < len(keys); i += 7 {
		c.forget(keys[i])
	}
	for i, k := range keys {
		if got, want := c.has(k), i%7 != 0; got != want {
			t.Fatalf("key %d after forgetting every 7th: has %v, want %v", i, got, want)
		}
	}
}

// On a shared index the memo is off: another replica's writes reach the
// local records without forgetting anything.
func TestFillMemoOffWhenShared(t *testing.T) {
	ix := openTestIndex(t)
	d := digest.FromString("shared")
	if err := ix.PutFill(d, FillRecord{Upstream: "docker.io", Repo: "library/a", State: FillComplete}); err != nil {
		t.Fatal(err)
	}
	checkFillComplete(t, ix, d, true, true)
	ix.ShareRecords(nil, nil) // (records nil: only the memo matters here)
	ix.records = nil
	putFillBehind(t, ix, "docker.io", "library/a", d, FillPartial)
	checkFillComplete(t, ix, d, false, true)
	checkFillComplete(t, ix, d, false, true)
}
