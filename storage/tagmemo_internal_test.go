package storage

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	bolt "go.etcd.io/bbolt"

	"github.com/docker-mirror/docker-mirror/oci"
)

// Every write of a tag record goes through tagwrites.go (tagWrites), which
// forgets the key in the tag memo once committed: the package's code names
// the bucket nowhere else but to read it. A writer or a deletion that
// bypasses it fails this test.
func TestTagRecordsWrittenOnlyHere(t *testing.T) {
	rule := writesRule{file: "tagwrites.go", ident: "bucketTags", literal: `"tags"`,
		readers: map[string]bool{
			"get": true, "viewShared": true, "readAllRel": true,
			"shareGet": true, "sharePut": true, "shareDelete": true,
			"shareGetVersion": true, "shareDeleteIf": true, // the shared records', as those
			"shareDeleteUnlessNewer": true, // the same, adopting with adopt
			"adopt":                  true, // a shared index's: the memo is off there
			"Errorf":                 true, // naming the bucket in an error
			"unreadable":             true, // the same
		}}
	rule.check(t, "write them with tagWrites (it forgets the key in the memo once committed), read them with tagRecordsOf or a reading helper", []string{
		`func f(tx *bolt.Tx) error { return tx.Bucket(bucketTags).Put(k, v) }`,
		`func f(tx *bolt.Tx) error { b := tx.Bucket(bucketTags); return b.Delete(k) }`,
		`func f(tx *bolt.Tx) error { return put(tx, bucketTags, k, rec) }`,
		`func f(tx *bolt.Tx) error { return tx.Bucket([]byte("tags")).Delete(k) }`,
		`func f(tx *bolt.Tx) error { c := tx.Bucket(bucketTags).Cursor(); c.First(); return c.Delete() }`,
	}, []string{
		`func f(ix *Index) { _, _, _ = viewShared[TagRecord](ix, bucketTags, k) }`,
		`func f(tx *bolt.Tx) { _, _, _ = get[TagRecord](tx, bucketTags, k) }`,
		`var l = [][]byte{bucketTags, bucketMirrors}`,
	})
}

// memoTime is when the tests' tags were fetched.
var memoTime = time.Date(2026, 12, 5, 21, 0, 0, 123456789, time.UTC)

// recordTag points repo:tag at the manifest named by name.
func recordTag(t *testing.T, ix *Index, repo, tag, name string, at time.Time) digest.Digest {
	t.Helper()
	d := digest.FromString(name)
	if err := ix.RecordManifest(ManifestEntry{Upstream: "docker.io", Repo: repo, Digest: d, Tag: tag,
		Record: ManifestRecord{MediaType: oci.MediaTypeOCIManifest, Size: int64(len(name)), FetchedAt: at}}); err != nil {
		t.Fatal(err)
	}
	return d
}

// checkTagHit fails t unless TagHit answers repo:tag as Tag reads it
// (FetchedAt aside, CheckedAt to the second), and from the memo when
// fromMemo.
func checkTagHit(t *testing.T, ix *Index, repo, tag string, fromMemo bool) {
	t.Helper()
	want, wantOK, err := ix.Tag("docker.io", repo, tag)
	if err != nil {
		t.Fatal(err)
	}
	want.FetchedAt, want.CheckedAt = time.Time{}, want.CheckedAt.Truncate(time.Second)
	hits := ix.tags.hitCount()
	got, ok, err := ix.TagHit("docker.io", repo, tag)
	if err != nil || ok != wantOK || !got.CheckedAt.Equal(want.CheckedAt) || got.Digest != want.Digest ||
		got.Type != want.Type || got.Size != want.Size || !got.FetchedAt.IsZero() {
		t.Fatalf("TagHit(%s:%s) = %+v, %v, %v; want %+v, %v", repo, tag, got, ok, err, want, wantOK)
	}
	if answered := ix.tags.hitCount() > hits; answered != fromMemo {
		t.Fatalf("TagHit(%s:%s) answered from the memo: %v, want %v", repo, tag, answered, fromMemo)
	}
}

// hitCount is how many lookups the memo answered.
func (m *tagMemo) hitCount() int64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.hits
}

// The start's read fills the memo with every tag it can hold exactly, and
// TagHit answers those from it as Tag reads them; the others (a JSON
// record, a digest other than sha256, a media type without a number, a
// check before 1970) are looked up each time. A tag not recorded is not found.
func TestTagMemoRemembersTheTags(t *testing.T) {
	ix := openTestIndex(t)
	for i := range 50 {
		recordTag(t, ix, fmt.Sprint("library/r", i%5), fmt.Sprint("v", i), fmt.Sprint("image ", i%20), memoTime)
	}
	if err := ix.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketTags)
		if err := b.Put(tagKey("docker.io", "library/json", "old"), []byte(`{"digest":"`+digest.FromString("j")+`","fetched_at":"2026-01-02T03:04:05Z","checked_at":"2026-01-02T03:04:05Z"}`)); err != nil {
			return err
		}
		other := TagRecord{Digest: digest.SHA512.FromString("x"), Type: 2, Size: 1, FetchedAt: memoTime, CheckedAt: memoTime}
		raw, _ := other.MarshalBinary()
		if err := b.Put(tagKey("docker.io", "library/sha512", "v"), raw); err != nil {
			return err
		}
		unknown := TagRecord{Digest: digest.FromString("y"), Size: 1, FetchedAt: memoTime, CheckedAt: memoTime}
		raw, _ = unknown.MarshalBinary()
		if err := b.Put(tagKey("docker.io", "library/untyped", "v"), raw); err != nil {
			return err
		}
		ancient := TagRecord{Digest: digest.FromString("w"), Type: 2, Size: 1, FetchedAt: memoTime, CheckedAt: time.Unix(-5, 0).UTC()}
		raw, _ = ancient.MarshalBinary()
		if err := b.Put(tagKey("docker.io", "library/ancient", "v"), raw); err != nil {
			return err
		}
		// One digest, recorded with two types at two times: each tag
		// keeps its own.
		for tag, typ := range map[string]uint8{"oci": 2, "docker": 4} {
			rec := TagRecord{Digest: digest.FromString("z"), Type: typ, Size: 1, FetchedAt: memoTime, CheckedAt: memoTime}
			raw, _ = rec.MarshalBinary()
			if err := b.Put(tagKey("docker.io", "library/types", tag), raw); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if err := ix.RememberLinks(context.Background()); err != nil {
		t.Fatal(err)
	}
	if n, _ := ix.tags.holds(); n != 52 {
		t.Fatalf("the memo holds %d tags, want the 52 it can hold", n)
	}
	checkTagHit(t, ix, "library/types", "oci", true)
	checkTagHit(t, ix, "library/types", "docker", true)
	for i := range 50 {
		checkTagHit(t, ix, fmt.Sprint("library/r", i%5), fmt.Sprint("v", i), true)
	}
	for _, tag := range [][2]string{{"library/json", "old"}, {"library/sha512", "v"}, {"library/untyped", "v"}, {"library/ancient", "v"}} {
		checkTagHit(t, ix, tag[0], tag[1], false)
		checkTagHit(t, ix, tag[0], tag[1], false) // not added either
	}
	checkTagHit(t, ix, "library/r0", "absent", false)
}

// Every write of a tag record is seen by the next TagHit, whether the memo
// held the tag from the start's read or from a lookup: a tag moved, its
// check renewed, deleted, deleted as its manifest is, forgotten with its
// content, evicted.
func TestTagMemoForgetsEveryWrite(t *testing.T) {
	writes := []struct {
		name  string
		write func(t *testing.T, ix *Index, d digest.Digest)
		gone  bool
	}{
		{"RecordManifest", func(t *testing.T, ix *Index, _ digest.Digest) {
			recordTag(t, ix, "library/a", "v1", "moved", memoTime.Add(time.Hour))
		}, false},
		{"TouchTag", func(t *testing.T, ix *Index, _ digest.Digest) {
			mustDo(t, ix.TouchTag("docker.io", "library/a", "v1", memoTime.Add(time.Minute)))
		}, false},
		{"DeleteTag", func(t *testing.T, ix *Index, _ digest.Digest) {
			mustDo(t, ix.DeleteTag("docker.io", "library/a", "v1"))
		}, true},
		{"DeleteTagIf", func(t *testing.T, ix *Index, d digest.Digest) {
			if deleted, err := ix.DeleteTagIf("docker.io", "library/a", "v1", d, time.Now()); err != nil || !deleted {
				t.Fatalf("DeleteTagIf = %v, %v", deleted, err)
			}
		}, true},
		{"Forget", func(t *testing.T, ix *Index, d digest.Digest) {
			if gone, err := ix.Forget([]digest.Digest{d}, nil); err != nil || len(gone) != 1 {
				t.Fatalf("Forget = %v, %v", gone, err)
			}
		}, true},
		{"UnrootImages", func(t *testing.T, ix *Index, d digest.Digest) {
			mustDo(t, ix.UnrootImages([]Unroot{{Upstream: "docker.io", Repo: "library/a", Digest: d, Tags: []string{"v1"}}}))
		}, true},
	}
	for _, w := range writes {
		for _, from := range []string{"scan", "lookup"} {
			t.Run(w.name+"/"+from, func(t *testing.T) {
				ix := openTestIndex(t)
				d := recordTag(t, ix, "library/a", "v1", "first", memoTime)
				recordTag(t, ix, "library/a", "v2", "first", memoTime)
				if from == "scan" {
					mustDo(t, ix.RememberLinks(context.Background()))
				} else {
					checkTagHit(t, ix, "library/a", "v1", false) // adds it
					checkTagHit(t, ix, "library/a", "v2", false)
				}
				checkTagHit(t, ix, "library/a", "v1", true)
				w.write(t, ix, d)
				checkTagHit(t, ix, "library/a", "v1", false)
				if _, ok, _ := ix.Tag("docker.io", "library/a", "v1"); ok == w.gone {
					t.Fatalf("after %s the tag is there: %v", w.name, ok)
				}
				if !w.gone {
					checkTagHit(t, ix, "library/a", "v1", true) // added again
				}
				if w.name != "Forget" {
					checkTagHit(t, ix, "library/a", "v2", true) // untouched
				}
			})
		}
	}
}

// A write committed while the start's read runs is not undone by it: the
// read's snapshot holds the record before the write, and the key the
// write forgets meanwhile is forgotten in what the read installs.
func TestTagMemoScanSeesWritesDuringIt(t *testing.T) {
	ix := openTestIndex(t)
	recordTag(t, ix, "library/a", "v1", "first", memoTime)
	recordTag(t, ix, "library/a", "v2", "first", memoTime)
	ix.tags.beginScan()
	b := readTagsNow(t, ix)
	moved := recordTag(t, ix, "library/a", "v1", "moved", memoTime.Add(time.Hour))
	ix.tags.install(b.table())
	ix.tags.endScan()
	if rec, ok, err := ix.TagHit("docker.io", "library/a", "v1"); err != nil || !ok || rec.Digest != moved {
		t.Fatalf("TagHit after a write during the read = %v, %v, %v; want %s", rec.Digest, ok, err, moved)
	}
	checkTagHit(t, ix, "library/a", "v2", true)

	// A read whose log overflowed installs nothing.
	ix.tags.beginScan()
	ix.tags.mu.Lock()
	ix.tags.lost = true
	ix.tags.mu.Unlock()
	b, err := newTagTableBuilder(ix.tags)
	mustDo(t, err)
	ix.tags.install(b.table())
	ix.tags.endScan()
	checkTagHit(t, ix, "library/a", "v2", true)
}

// A lookup's record is not kept if a write forgot a key between its read
// and its add: it may be the record before the write.
func TestTagMemoAddAfterForget(t *testing.T) {
	ix := openTestIndex(t)
	recordTag(t, ix, "library/a", "v1", "first", memoTime)
	epoch := ix.tags.begin()
	old, _, _ := ix.Tag("docker.io", "library/a", "v1")
	recordTag(t, ix, "library/a", "v1", "moved", memoTime.Add(time.Hour))
	ix.tags.add(epoch, tagKey("docker.io", "library/a", "v1"), old)
	checkTagHit(t, ix, "library/a", "v1", false)
}

// Two tags whose hashes are equal are both left out of the table, and a
// lookup never adds either: each is looked up every time.
func TestTagTableSharedHashes(t *testing.T) {
	m := newTagMemo()
	b, err := newTagTableBuilder(m)
	mustDo(t, err)
	if n, err := b.number(tagEntry{size: 1, typ: 2}); err != nil || n != 0 {
		t.Fatalf("number = %d, %v", n, err)
	}
	for _, h := range []uint64{7 << 48, 5, 7 << 48, ^uint64(0)} {
		mustDo(t, b.t.tags.append(tagSlot{hash: h}))
	}
	m.beginScan()
	table := b.table()
	m.install(table)
	m.endScan()
	for h, want := range map[uint64]uint32{5: 0, ^uint64(0): 0, 7 << 48: tagShared} {
		i := table.find(h)
		if i < 0 || table.tags.s[i].manifest != want {
			t.Fatalf("hash %x: at %d, want its manifest %d", h, i, want)
		}
	}
	if i := table.find(6); i >= 0 {
		t.Fatalf("hash 6 found at %d", i)
	}
	e := tagEntry{checked: 1, size: 1, typ: 2}
	m.addHash(m.begin(), 7<<48, e)
	m.addHash(m.begin(), 9, e)
	if _, ok := m.added[7<<48]; ok {
		t.Fatal("a shared hash was added")
	}
	if _, ok := m.added[9]; !ok {
		t.Fatal("a new hash was not added")
	}
}

// Lookups and writes of the same tags at once leave the memo answering
// as the index reads: after the writes, every TagHit agrees with Tag.
func TestTagMemoConcurrentWrites(t *testing.T) {
	ix := openTestIndex(t)
	const tags = 20
	for i := range tags {
		recordTag(t, ix, "library/a", fmt.Sprint("v", i), "first", memoTime)
	}
	mustDo(t, ix.RememberLinks(context.Background()))
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(w), 1))
			for j := range 200 {
				tag := fmt.Sprint("v", rng.IntN(tags))
				var err error
				switch rng.IntN(4) {
				case 0:
					err = ix.RecordManifest(ManifestEntry{Upstream: "docker.io", Repo: "library/a", Digest: digest.FromString(fmt.Sprint(w, j)), Tag: tag,
						Record: ManifestRecord{MediaType: oci.MediaTypeOCIManifest, Size: 3, FetchedAt: memoTime}})
				case 1:
					err = ix.TouchTag("docker.io", "library/a", tag, memoTime.Add(time.Duration(j)*time.Second))
				case 2:
					err = ix.DeleteTag("docker.io", "library/a", tag)
				default:
					_, _, err = ix.TagHit("docker.io", "library/a", tag)
				}
				if err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	for range 2 {
		wg.Go(func() {
			for j := range 2000 {
				if _, _, err := ix.TagHit("docker.io", "library/a", fmt.Sprint("v", j%tags)); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	for i := range tags {
		tag := fmt.Sprint("v", i)
		if _, ok := ix.tags.get(tagKey("docker.io", "library/a", tag)); !ok {
			ix.TagHit("docker.io", "library/a", tag) // adds it, if recorded
		}
		_, recorded, _ := ix.Tag("docker.io", "library/a", tag)
		checkTagHit(t, ix, "library/a", tag, recorded)
	}
}

// On a shared index the memo is off: other replicas write the records.
func TestTagMemoOffWhenShared(t *testing.T) {
	ix := openTestIndex(t)
	recordTag(t, ix, "library/a", "v1", "first", memoTime)
	mustDo(t, ix.RememberLinks(context.Background()))
	checkTagHit(t, ix, "library/a", "v1", true)
	ix.tags.disable()
	checkTagHit(t, ix, "library/a", "v1", false)
	checkTagHit(t, ix, "library/a", "v1", false)
}

// mustDo fails t at once on an error.
func mustDo(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// A full read of more tags and manifests than the builder's first
// columns and set hold (they grow, the set is rehashed) answers each tag
// as Tag reads it.
func TestTagMemoManyManifests(t *testing.T) {
	ix := openTestIndex(t)
	const tags, manifests = 9000, 5000
	mustDo(t, ix.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketTags)
		for i := range tags {
			m := i % manifests
			rec := TagRecord{Digest: digest.FromString(fmt.Sprint("manifest ", m)), Type: uint8(1 + m%4), Size: int64(100 + m),
				FetchedAt: memoTime, CheckedAt: memoTime.Add(time.Duration(i) * time.Millisecond)}
			raw, _ := rec.MarshalBinary()
			if err := b.Put(tagKey("docker.io", fmt.Sprint("library/r", i%13), fmt.Sprint("v", i)), raw); err != nil {
				return err
			}
		}
		return nil
	}))
	mustDo(t, ix.RememberLinks(context.Background()))
	if n, _ := ix.tags.holds(); n != tags {
		t.Fatalf("the memo holds %d tags, want %d", n, tags)
	}
	ix.tags.mu.Lock()
	named := len(ix.tags.base.digests.s)
	ix.tags.mu.Unlock()
	if named != manifests {
		t.Fatalf("the memo names %d manifests, want %d", named, manifests)
	}
	for i := range tags {
		checkTagHit(t, ix, fmt.Sprint("library/r", i%13), fmt.Sprint("v", i), true)
	}
}

// A released memo answers from the index (the same records); a read
// begun before the release installs nothing, one running stops, and
// none installs until the memo is resumed; RememberTags then reads the
// table again, sized as the last one.
func TestTagMemoReleased(t *testing.T) {
	ix := openTestIndex(t)
	for i := range 30 {
		recordTag(t, ix, "library/a", fmt.Sprint("v", i), fmt.Sprint("image ", i), memoTime)
	}
	mustDo(t, ix.RememberTags(context.Background()))
	checkTagHit(t, ix, "library/a", "v1", true)
	ix.ReleaseTags()
	if n, bytes := ix.tags.holds(); n != 0 || bytes != 0 {
		t.Fatalf("released, the memo holds %d tags in %d bytes", n, bytes)
	}
	checkTagHit(t, ix, "library/a", "v1", false)
	checkTagHit(t, ix, "library/a", "v1", true) // added by the lookup
	checkTagHit(t, ix, "library/a", "v2", false)
	mustDo(t, ix.RememberTags(context.Background()))
	checkTagHit(t, ix, "library/a", "v3", false) // released: nothing read
	ix.ResumeTags()

	// A read begun before a release installs nothing.
	ix.tags.beginScan()
	b := readTagsNow(t, ix)
	if got := cap(b.t.tags.s); got < 30 {
		t.Fatalf("a read after a table of 30 tags starts with room for %d", got)
	}
	ix.ReleaseTags()
	ix.tags.install(b.table())
	ix.tags.endScan()
	checkTagHit(t, ix, "library/a", "v4", false)
	// One the release finds running stops.
	ix.tags.beginScan()
	if b := readTagsNow(t, ix); b != nil {
		t.Fatal("a read of a released memo went on")
	}
	ix.tags.endScan()

	ix.ResumeTags()
	mustDo(t, ix.RememberTags(context.Background()))
	checkTagHit(t, ix, "library/a", "v5", true)
	if n, _ := ix.tags.holds(); n != 30+4 { // the table's, and the four lookups added
		t.Fatalf("the memo holds %d tags, want 34", n)
	}
}

// readTagsNow reads the tags for the memo as a full read does (begun by
// the caller's beginScan).
func readTagsNow(t *testing.T, ix *Index) *tagTableBuilder {
	t.Helper()
	var b *tagTableBuilder
	mustDo(t, ix.db.View(func(tx *bolt.Tx) error {
		rel := ix.releaser(tx)
		defer rel.done()
		var err error
		b, err = ix.readTags(context.Background(), tx, rel)
		return err
	}))
	return b
}
