package storage_test

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/distribution/distribution/v3/registry/storage/driver/inmemory"
	"github.com/opencontainers/go-digest"

	"github.com/docker-mirror/docker-mirror/storage"
)

func TestDriverRecordsRoundTrip(t *testing.T) {
	r := storage.NewDriverRecords(inmemory.New())
	ctx := t.Context()
	keys := []string{"127.0.0.1:5000/library/nginx:1.27", "sha256:" + digest.FromString("x").Encoded(), "docker.io/a_b/c@sha256:00", "ghcr.io/o/r:v~1+x"}
	for i, k := range keys {
		if err := r.Put(ctx, "tags", k, []byte{byte(i)}); err != nil {
			t.Fatalf("Put(%q): %v", k, err)
		}
	}
	for i, k := range keys {
		v, err := r.Get(ctx, "tags", k)
		if err != nil || len(v) != 1 || v[0] != byte(i) {
			t.Errorf("Get(%q) = %v, %v", k, v, err)
		}
	}
	got := map[string]bool{}
	if err := r.Walk(ctx, "tags", func(k string, _ []byte) error { got[k] = true; return nil }); err != nil {
		t.Fatal(err)
	}
	for _, k := range keys {
		if !got[k] {
			t.Errorf("Walk did not return %q (got %v)", k, got)
		}
	}
	if err := r.Delete(ctx, "tags", keys[0]); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Get(ctx, "tags", keys[0]); !errors.Is(err, storage.ErrNotFound) {
		t.Errorf("Get after Delete = %v; want ErrNotFound", err)
	}
	if err := r.Delete(ctx, "tags", keys[0]); err != nil {
		t.Errorf("deleting a missing record: %v", err)
	}
	if err := r.Walk(ctx, "pins", func(string, []byte) error { return errors.New("called") }); err != nil {
		t.Errorf("Walk of an empty kind: %v", err)
	}
}

func openShared(t *testing.T, r storage.Records) *storage.Index {
	t.Helper()
	ix, err := storage.OpenIndex(filepath.Join(t.TempDir(), "index.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ix.Close() })
	ix.ShareRecords(r, nil)
	return ix
}

// Two indexes on the same records: what one records, the other reads on a
// miss (and keeps); what one forgets, the other no longer finds.
func TestIndexSharedRecords(t *testing.T) {
	r := storage.NewDriverRecords(inmemory.New())
	a, b := openShared(t, r), openShared(t, r)
	now := time.Unix(1700000000, 0).UTC()
	m := digest.FromString("manifest")
	l := digest.FromString("layer")
	if err := a.RecordManifest(storage.ManifestEntry{Upstream: "docker.io", Repo: "library/x", Digest: m, Tag: "v1",
		Record: storage.ManifestRecord{MediaType: "application/vnd.oci.image.manifest.v1+json", Size: 10, FetchedAt: now}}); err != nil {
		t.Fatal(err)
	}
	if err := a.RecordBlob("docker.io", "library/x", l, 100, now); err != nil {
		t.Fatal(err)
	}
	if err := a.Pin(t.Context(), m.String(), storage.PinRecord{PinnedAt: now, Reason: "admin"}); err != nil {
		t.Fatal(err)
	}
	if rec, ok, err := b.Tag("docker.io", "library/x", "v1"); err != nil || !ok || rec.Digest != m {
		t.Fatalf("b.Tag = %v %v %v; want %s", rec, ok, err, m)
	}
	// The bucket keeps the tag in JSON, which replicas of every version
	// read (the local index keeps it in binary).
	raw, err := r.Get(t.Context(), "tags", "docker.io/library/x:v1")
	var shared struct {
		Digest digest.Digest `json:"digest"`
	}
	if err != nil || json.Unmarshal(raw, &shared) != nil || shared.Digest != m {
		t.Errorf("the bucket's tag record = %q, %v; want JSON naming %s", raw, err, m)
	}
	if rec, ok, err := b.Manifest(m); err != nil || !ok || rec.Size != 10 {
		t.Fatalf("b.Manifest = %v %v %v", rec, ok, err)
	}
	if ok, err := b.Linked("docker.io", "library/x", l); err != nil || !ok {
		t.Fatalf("b.Linked(layer) = %v %v", ok, err)
	}
	if ok, _ := b.Linked("docker.io", "library/y", l); ok {
		t.Fatal("b.Linked(another repository) = true")
	}
	if rec, ok, err := b.Blob(l); err != nil || !ok || rec.Size != 100 {
		t.Fatalf("b.Blob = %v %v %v", rec, ok, err)
	}
	if got := b.StoredBytes(); got != 110 {
		t.Errorf("b.StoredBytes = %d after reading both records; want 110", got)
	}
	// Refresh brings what b did not read: the pin.
	if err := b.Refresh(t.Context()); err != nil {
		t.Fatal(err)
	}
	if pins, _ := b.Pins(); len(pins) != 1 {
		t.Errorf("b.Pins after Refresh = %v; want a's pin", pins)
	}
	// a forgets the layer: b, asking the bucket, no longer finds it.
	if _, err := a.Forget([]digest.Digest{l}, nil); err != nil {
		t.Fatal(err)
	}
	c := openShared(t, r)
	if _, ok, _ := c.Blob(l); ok {
		t.Error("a forgotten blob is still in the shared records")
	}
	if ok, _ := c.Linked("docker.io", "library/x", l); ok {
		t.Error("a forgotten blob's link is still in the shared records")
	}
	if _, ok, _ := c.Tag("docker.io", "library/x", "v1"); !ok {
		t.Error("the tag of a manifest kept was removed")
	}
}

// Refresh drops the local records another replica removed from the bucket
// (an evicted tag, a collected blob) once they are older than PruneAge, and
// keeps younger ones, which may be on their way to the bucket.
func TestIndexRefreshPrunes(t *testing.T) {
	r := storage.NewDriverRecords(inmemory.New())
	now := time.Unix(1700000000, 0).UTC()
	clock := func() time.Time { return now }
	open := func() *storage.Index {
		ix, err := storage.OpenIndex(filepath.Join(t.TempDir(), "index.db"))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ix.Close() })
		ix.ShareRecords(r, clock)
		return ix
	}
	a, b := open(), open()
	m := digest.FromString("manifest")
	l := digest.FromString("layer")
	if err := a.RecordManifest(storage.ManifestEntry{Upstream: "docker.io", Repo: "library/x", Digest: m, Tag: "v1",
		Record: storage.ManifestRecord{MediaType: "application/vnd.oci.image.manifest.v1+json", Size: 10, FetchedAt: now}}); err != nil {
		t.Fatal(err)
	}
	if err := a.RecordBlob("docker.io", "library/x", l, 100, now); err != nil {
		t.Fatal(err)
	}
	if err := b.Refresh(t.Context()); err != nil {
		t.Fatal(err)
	}
	if got := b.StoredBytes(); got != 110 {
		t.Fatalf("b holds %d bytes after Refresh; want 110", got)
	}
	// a evicts the image: its tag and content leave the bucket.
	if _, err := a.Forget([]digest.Digest{m, l}, nil); err != nil {
		t.Fatal(err)
	}
	if err := b.Refresh(t.Context()); err != nil {
		t.Fatal(err)
	}
	if _, ok, _ := b.Tag("docker.io", "library/x", "v1"); !ok {
		t.Error("a tag younger than PruneAge was dropped")
	}
	now = now.Add(storage.PruneAge + time.Minute)
	if err := b.Refresh(t.Context()); err != nil {
		t.Fatal(err)
	}
	if _, ok, _ := b.Tag("docker.io", "library/x", "v1"); ok {
		t.Error("the evicted tag survived Refresh")
	}
	if _, ok, _ := b.Blob(l); ok {
		t.Error("the collected blob's record survived Refresh")
	}
	if got := b.StoredBytes(); got != 0 {
		t.Errorf("b holds %d bytes; want the bucket's 0", got)
	}
}

// On a filesystem store (a shared disk) the driver writes a record to a
// temporary file beside it and renames it into place: one a replica
// killed between the two left behind (or one read before its rename) is
// not a record. Adopted, it was a tag no upstream has, and a blob record
// whose key is no digest, which failed every collection of every replica.
func TestDriverRecordsSkipsInterruptedWritesOnFilesystem(t *testing.T) {
	ctx := t.Context()
	dir := t.TempDir()
	s, err := storage.CreateDriverStore(ctx, "filesystem", map[string]any{"rootdirectory": dir})
	if err != nil {
		t.Fatal(err)
	}
	r := storage.NewDriverRecords(s.Driver())
	blob := digest.FromString("layer")
	tag := storage.TagRecord{Digest: digest.FromString("manifest"), FetchedAt: time.Now()}
	tagJSON, _ := json.Marshal(tag)
	blobJSON, _ := json.Marshal(storage.BlobRecord{Size: 5, FetchedAt: time.Now()})
	if err := r.Put(ctx, "tags", "docker.io/library/idle:v1", tagJSON); err != nil {
		t.Fatal(err)
	}
	if err := r.Put(ctx, "blobs", blob.String(), blobJSON); err != nil {
		t.Fatal(err)
	}
	// What the filesystem driver's PutContent leaves when it is cut
	// between its write and its rename.
	const leftover = ".0f0e4a57-9c1e-4f0e-8d55-2b8f1b9f4a11.tmp"
	for p, raw := range map[string][]byte{
		filepath.Join(dir, "records", "tags", "docker.io", "library", "idle_3Av1"+leftover): tagJSON,
		filepath.Join(dir, "records", "blobs", "sha256_3A"+blob.Encoded()+leftover):         blobJSON,
	} {
		if err := os.WriteFile(p, raw, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for kind, want := range map[string]string{"tags": "docker.io/library/idle:v1", "blobs": blob.String()} {
		var keys []string
		if err := r.Walk(ctx, kind, func(k string, _ []byte) error { keys = append(keys, k); return nil }); err != nil {
			t.Fatal(err)
		}
		if len(keys) != 1 || keys[0] != want {
			t.Errorf("Walk(%s) = %q; want only %q", kind, keys, want)
		}
	}
	ix := openShared(t, r)
	if err := ix.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	if tags, err := ix.Tags("docker.io", "library/idle"); err != nil || len(tags) != 1 || tags[0] != "v1" {
		t.Errorf("tags after Refresh = %q, %v; want [v1]", tags, err)
	}
}

// A prefetch with pin takes back, when its copy fails, only a pin it
// made (PinAdded said new) and nobody recorded since (UnpinIf): on a
// bucket replicas share, a pin another replica recorded (an admin's on
// its status page), before or since, is not this replica's to take back,
// though its own index has not read it yet. PinAdded said new, and
// UnpinIf removed the bucket's record, and the image was unpinned on
// every replica.
func TestSharedPinOfAnotherReplicaNotTakenBack(t *testing.T) {
	now := time.Unix(1700000000, 0).UTC()
	key := storage.TagKey("docker.io", "library/x", "v1")
	admin := storage.PinRecord{PinnedAt: now, Reason: "admin"}
	prefetch := storage.PinRecord{PinnedAt: now.Add(time.Second), Reason: "prefetch"}
	for _, c := range []struct {
		name  string
		order func(t *testing.T, a, b *storage.Index)
	}{
		{"pinned before", func(t *testing.T, a, b *storage.Index) {
			if err := a.Pin(t.Context(), key, admin); err != nil {
				t.Fatal(err)
			}
			added, err := b.PinAdded(t.Context(), key, prefetch)
			if err != nil {
				t.Fatal(err)
			}
			if added {
				t.Errorf("PinAdded said new a pin another replica recorded")
				if _, err := b.UnpinIf(t.Context(), key, prefetch); err != nil {
					t.Fatal(err)
				}
			}
		}},
		{"pinned since", func(t *testing.T, a, b *storage.Index) {
			if added, err := b.PinAdded(t.Context(), key, prefetch); err != nil || !added {
				t.Fatalf("PinAdded = %v, %v; want a new pin", added, err)
			}
			if err := a.Pin(t.Context(), key, admin); err != nil {
				t.Fatal(err)
			}
			if _, err := b.UnpinIf(t.Context(), key, prefetch); err != nil {
				t.Fatal(err)
			}
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			r := storage.NewDriverRecords(inmemory.New())
			a, b := openShared(t, r), openShared(t, r)
			c.order(t, a, b)
			if raw, err := r.Get(t.Context(), "pins", key); err != nil {
				t.Errorf("the bucket's pin record = %q, %v; want the image pinned", raw, err)
			}
		})
	}
}

// openSkewed opens an index sharing r whose clock is *now plus skew (a
// replica whose clock is off by skew).
func openSkewed(t *testing.T, r storage.Records, now *time.Time, skew time.Duration) *storage.Index {
	t.Helper()
	ix, err := storage.OpenIndex(filepath.Join(t.TempDir(), "index.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ix.Close() })
	ix.ShareRecords(r, func() time.Time { return now.Add(skew) })
	return ix
}

// A tag another replica confirmed with its clock ahead (an hour here; a
// VM whose clock drifted) and that a third replica then read, moved
// upstream since and recorded so by a replica whose clock is right, is
// seen moved by the third replica at its next recheck: the confirmation
// read from the bucket counted as made in the future, newer than any
// other replica's for the hour, and the third replica served the digest
// the tag had named before for that hour, the bucket's newer record
// unread.
func TestTagConfirmedAheadOfTimeNotKeptOverANewerOne(t *testing.T) {
	r := storage.NewDriverRecords(inmemory.New())
	now := time.Unix(1700000000, 0).UTC()
	open := func(skew time.Duration) *storage.Index { return openSkewed(t, r, &now, skew) }
	ahead, right, reader := open(time.Hour), open(0), open(0)
	record := func(ix *storage.Index, d digest.Digest, at time.Time) {
		t.Helper()
		if err := ix.RecordManifest(storage.ManifestEntry{Upstream: "docker.io", Repo: "library/x", Digest: d, Tag: "v1",
			Record: storage.ManifestRecord{MediaType: "application/vnd.oci.image.manifest.v1+json", Size: 10, FetchedAt: at}}); err != nil {
			t.Fatal(err)
		}
	}
	old, moved := digest.FromString("old"), digest.FromString("moved")
	record(ahead, old, now.Add(time.Hour))
	if rec, ok, err := reader.Tag("docker.io", "library/x", "v1"); err != nil || !ok || rec.Digest != old {
		t.Fatalf("reader, the tag as the replica ahead recorded it: %v %v %v", rec.Digest, ok, err)
	}
	now = now.Add(time.Minute)
	record(right, moved, now)
	now = now.Add(storage.TagRecheck + time.Second)
	if rec, ok, err := reader.Tag("docker.io", "library/x", "v1"); err != nil || !ok || rec.Digest != moved {
		t.Errorf("reader, the tag moved a minute ago: %v %v %v; want %s", rec.Digest, ok, err, moved)
	}
}

// A tag confirmed by a replica whose clock is ahead (an hour here) and
// read by another grows old on the reader from its first read, and is
// revalidated there once older than the tag TTL: the reader adopted the
// bucket's record again at each recheck (every 15 seconds), its time
// capped at that moment, and answered it with the writer's time, an
// hour ahead: the tag stayed fresh on the reader, never asked upstream,
// for the hour the writer's clock was ahead.
func TestTagConfirmedAheadOfTimeGrowsOld(t *testing.T) {
	reader, clock, d := tagConfirmedAhead(t)
	first := *clock
	if rec, ok, err := reader.Tag("docker.io", "library/x", "v1"); err != nil || !ok || rec.Digest != d {
		t.Fatalf("reader's first read: %v %v %v", rec.Digest, ok, err)
	}
	for range 3 {
		*clock = clock.Add(10 * time.Minute)
		rec, ok, err := reader.Tag("docker.io", "library/x", "v1")
		if err != nil || !ok || rec.Digest != d {
			t.Fatalf("reader at %v: %v %v %v", clock.Sub(first), rec.Digest, ok, err)
		}
		if rec.CheckedAt.After(first) {
			t.Fatalf("reader at %v: tag checked %v after its first read; want no later than that read (it grows old and is revalidated)", clock.Sub(first), rec.CheckedAt.Sub(first))
		}
	}
}

// The same, the record read by the collection's refresh (every replica's
// records read into the index): each refresh took it again, capped at
// that moment, and the tag, its record checked again at every
// collection, never grew old on the reader.
func TestTagConfirmedAheadOfTimeGrowsOldThroughRefresh(t *testing.T) {
	reader, clock, d := tagConfirmedAhead(t)
	first := *clock
	for range 3 {
		if err := reader.Refresh(t.Context()); err != nil {
			t.Fatal(err)
		}
		*clock = clock.Add(10 * time.Minute)
	}
	rec, ok, err := reader.Tag("docker.io", "library/x", "v1")
	if err != nil || !ok || rec.Digest != d {
		t.Fatalf("reader: %v %v %v", rec.Digest, ok, err)
	}
	if rec.CheckedAt.After(first) {
		t.Fatalf("reader at %v: tag checked %v after its first read; want no later than that read (it grows old and is revalidated)", clock.Sub(first), rec.CheckedAt.Sub(first))
	}
}

// tagConfirmedAhead records tag library/x:v1 (digest d) through a replica
// whose clock is an hour ahead of clock, and returns another replica on
// the same records, reader, whose clock is clock (set it to move on).
func tagConfirmedAhead(t *testing.T) (reader *storage.Index, clock *time.Time, d digest.Digest) {
	t.Helper()
	r := storage.NewDriverRecords(inmemory.New())
	now := time.Unix(1700000000, 0).UTC()
	ahead, reader := openSkewed(t, r, &now, time.Hour), openSkewed(t, r, &now, 0)
	d = digest.FromString("v1")
	if err := ahead.RecordManifest(storage.ManifestEntry{Upstream: "docker.io", Repo: "library/x", Digest: d, Tag: "v1",
		Record: storage.ManifestRecord{MediaType: "application/vnd.oci.image.manifest.v1+json", Size: 10, FetchedAt: now.Add(time.Hour)}}); err != nil {
		t.Fatal(err)
	}
	return reader, &now, d
}

// A replica whose own clock was ahead (an hour here) confirmed a tag,
// and its clock was then set right: the collection's refresh, reading
// the bucket's copy of that record, brings the tag's time back to the
// replica's now, so the tag grows old and is revalidated, not kept fresh
// for the hour.
func TestTagConfirmedByOwnClockAheadSetRightByRefresh(t *testing.T) {
	r := storage.NewDriverRecords(inmemory.New())
	now := time.Unix(1700000000, 0).UTC()
	skew := time.Hour
	ix, err := storage.OpenIndex(filepath.Join(t.TempDir(), "index.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ix.Close() })
	ix.ShareRecords(r, func() time.Time { return now.Add(skew) })
	d := digest.FromString("v1")
	if err := ix.RecordManifest(storage.ManifestEntry{Upstream: "docker.io", Repo: "library/x", Digest: d, Tag: "v1",
		Record: storage.ManifestRecord{MediaType: "application/vnd.oci.image.manifest.v1+json", Size: 10, FetchedAt: now.Add(skew)}}); err != nil {
		t.Fatal(err)
	}
	skew = 0 // set right
	if err := ix.Refresh(t.Context()); err != nil {
		t.Fatal(err)
	}
	rec, ok, err := ix.Tag("docker.io", "library/x", "v1")
	if err != nil || !ok || rec.Digest != d {
		t.Fatalf("tag: %v %v %v", rec.Digest, ok, err)
	}
	if rec.CheckedAt.After(now) {
		t.Fatalf("tag checked %v ahead of the clock set right; want no later than the refresh", rec.CheckedAt.Sub(now))
	}
}

// A referrers answer (an image's signatures and attestations) confirmed
// by a replica whose clock is ahead (an hour here) grows old on another
// replica that reads it, from its first read, through the collection's
// refreshes, and is revalidated after its TTL there: it was taken as
// confirmed in the future and kept fresh for that hour plus its TTL, a
// signature pushed meanwhile not listed by that replica.
func TestReferrersConfirmedAheadOfTimeGrowOld(t *testing.T) {
	r := storage.NewDriverRecords(inmemory.New())
	now := time.Unix(1700000000, 0).UTC()
	open := func(skew time.Duration) *storage.Index { return openSkewed(t, r, &now, skew) }
	ahead, reader := open(time.Hour), open(0)
	subject := digest.FromString("image")
	body := []byte(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}`)
	at := now.Add(time.Hour) // by the clock of the replica ahead
	if err := ahead.PutReferrers("docker.io", "library/x", subject, "", storage.ReferrersRecord{Body: body, FetchedAt: at, CheckedAt: at}); err != nil {
		t.Fatal(err)
	}
	first := now
	for i := range 4 {
		rec, ok, err := reader.Referrers("docker.io", "library/x", subject, "")
		if err != nil || !ok {
			t.Fatalf("reader, read %d: %v %v", i, ok, err)
		}
		if rec.CheckedAt.After(first) || rec.FetchedAt.After(first) {
			t.Fatalf("reader at %v: referrers checked %v after its first read; want no later than that read (they grow old and are revalidated)", now.Sub(first), rec.CheckedAt.Sub(first))
		}
		if err := reader.Refresh(t.Context()); err != nil {
			t.Fatal(err)
		}
		now = now.Add(10 * time.Minute)
	}
}
