package storage

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	bolt "go.etcd.io/bbolt"
)

const (
	ociManifest = "application/vnd.oci.image.manifest.v1+json"
	ociIndex    = "application/vnd.oci.image.index.v1+json"
)

// oldTagRecord is TagRecord as versions before round 10 declare it: what
// they decode this version's records into.
type oldTagRecord struct {
	Digest    digest.Digest `json:"digest"`
	FetchedAt time.Time     `json:"fetched_at"`
	CheckedAt time.Time     `json:"checked_at"`
}

// A tag recorded with its manifest carries the manifest's media type and
// size, which Manifest returns, for every numbered type; a type without a
// number leaves the record as it was (Manifest: not known).
func TestTagRecordCarriesItsManifest(t *testing.T) {
	ix := openTestIndex(t)
	at := time.Date(2026, 12, 3, 18, 0, 0, 0, time.UTC)
	for i, mt := range append(manifestTypes[1:], "application/vnd.docker.distribution.manifest.v1+prettyjws", "application/vnd.example.manifest.v1+json") {
		d := digest.FromString(mt)
		size := int64(100 + i)
		tag := strings.ReplaceAll(strings.ReplaceAll(mt, "/", "-"), "+", "-")
		if err := ix.RecordManifest(ManifestEntry{Upstream: "docker.io", Repo: "library/a", Digest: d, Tag: tag,
			Record: ManifestRecord{MediaType: mt, Size: size, FetchedAt: at}}); err != nil {
			t.Fatal(err)
		}
		rec, ok, err := ix.Tag("docker.io", "library/a", tag)
		if err != nil || !ok || rec.Digest != d || !rec.FetchedAt.Equal(at) || !rec.CheckedAt.Equal(at) {
			t.Fatalf("%s: Tag = %+v %v %v", mt, rec, ok, err)
		}
		gotMT, gotSize, known := rec.Manifest()
		numbered := i < len(manifestTypes)-1
		if known != numbered || (numbered && (gotMT != mt || gotSize != size)) {
			t.Errorf("%s: Manifest() = %q %d %v, want known %v", mt, gotMT, gotSize, known, numbered)
		}
	}
}

// A tag record written by an older version (no type or size) reads as it
// did, with Manifest not known; TouchTag adds its manifest's type and size
// then, and keeps them in a record that has them.
func TestTagRecordOlderForm(t *testing.T) {
	ix := openTestIndex(t)
	at := time.Date(2026, 12, 3, 18, 0, 0, 0, time.UTC)
	d := digest.FromString("old")
	if err := ix.RecordManifest(ManifestEntry{Upstream: "docker.io", Repo: "library/a", Digest: d,
		Record: ManifestRecord{MediaType: ociIndex, Size: 321, FetchedAt: at}}); err != nil {
		t.Fatal(err)
	}
	old, err := json.Marshal(oldTagRecord{Digest: d, FetchedAt: at, CheckedAt: at})
	if err != nil {
		t.Fatal(err)
	}
	if err := ix.db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketTags).Put(tagKey("docker.io", "library/a", "old"), old)
	}); err != nil {
		t.Fatal(err)
	}
	rec, ok, err := ix.Tag("docker.io", "library/a", "old")
	if err != nil || !ok || rec.Digest != d || !rec.FetchedAt.Equal(at) || !rec.CheckedAt.Equal(at) {
		t.Fatalf("old record: Tag = %+v %v %v", rec, ok, err)
	}
	if mt, size, known := rec.Manifest(); known {
		t.Fatalf("old record: Manifest() = %q %d, want not known", mt, size)
	}
	later := at.Add(time.Hour)
	if err := ix.TouchTag("docker.io", "library/a", "old", later); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		rec, ok, err = ix.Tag("docker.io", "library/a", "old")
		if err != nil || !ok || rec.Digest != d || !rec.FetchedAt.Equal(at) || !rec.CheckedAt.Equal(later) {
			t.Fatalf("touched: Tag = %+v %v %v", rec, ok, err)
		}
		if mt, size, known := rec.Manifest(); !known || mt != ociIndex || size != 321 {
			t.Fatalf("touched: Manifest() = %q %d %v, want %q 321", mt, size, known, ociIndex)
		}
		later = later.Add(time.Hour)
		if err := ix.TouchTag("docker.io", "library/a", "old", later); err != nil {
			t.Fatal(err)
		}
	}
}

// An older version reads this version's tag records as its own: the
// same digest and times (the new fields are ignored), the digest still
// first (tagDigest, which the passes read it with), and this version's
// whole-record readers (readTags' times) too. The record grows by at most
// 24 bytes (a million tags at 100k images).
func TestTagRecordReadByOlderVersion(t *testing.T) {
	at := time.Date(2026, 12, 3, 18, 0, 0, 123456789, time.UTC)
	d := digest.FromString("m")
	for _, size := range []int64{1, 2 << 20} {
		rec := NewTagRecord(d, ManifestRecord{MediaType: ociManifest, Size: size, FetchedAt: at}, at)
		raw, err := json.Marshal(rec)
		if err != nil {
			t.Fatal(err)
		}
		var old oldTagRecord
		if err := json.Unmarshal(raw, &old); err != nil || old.Digest != d || !old.FetchedAt.Equal(at) || !old.CheckedAt.Equal(at) {
			t.Fatalf("%s read as an older version: %+v %v", raw, old, err)
		}
		if got, ok := tagDigest(raw); !ok || got != d {
			t.Errorf("tagDigest(%s) = %s %v", raw, got, ok)
		}
		oldRaw, err := json.Marshal(old)
		if err != nil {
			t.Fatal(err)
		}
		if grew := len(raw) - len(oldRaw); grew <= 0 || grew > 24 {
			t.Errorf("record %s grew by %d bytes over %s, want 1–24", raw, grew, oldRaw)
		}
	}
}
