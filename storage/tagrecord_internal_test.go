package storage

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"slices"
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

// A tag record written by an older version (JSON, no type or size) reads
// as it did, with Manifest not known; TouchTag writes it in binary with
// its manifest's type and size then, and keeps them in a record that has
// them.
func TestTagRecordOlderForm(t *testing.T) {
	ix := openTestIndex(t)
	at := time.Date(2026, 12, 3, 18, 0, 0, 0, time.UTC)
	d := digest.FromString("old")
	if err := ix.RecordManifest(ManifestEntry{Upstream: "docker.io", Repo: "library/a", Digest: d,
		Record: ManifestRecord{MediaType: ociIndex, Size: 321, FetchedAt: at}}); err != nil {
		t.Fatal(err)
	}
	putJSONTag(t, ix, "old", oldTagRecord{Digest: d, FetchedAt: at, CheckedAt: at})
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
	if v := rawTag(t, ix, "old"); !isTagBinary(v) {
		t.Fatalf("a touched JSON record is %q, want the binary form", v)
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

// The shared records keep a tag in JSON, which every version reads as its
// own: an older replica on the same bucket reads this version's records
// (the same digest and times, the new fields ignored), the digest still
// first (tagDigestBytes). The JSON grows by at most 24 bytes over an older
// version's.
func TestTagRecordJSONReadByOlderVersion(t *testing.T) {
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
		if got, ok := tagDigestBytes(raw); !ok || string(got) != string(d) {
			t.Errorf("tagDigestBytes(%s) = %s %v", raw, got, ok)
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

// tagRecordCases are tag records of every shape: times zero, in UTC, in
// another zone, before the epoch; sizes zero and large; digests of other
// algorithms and none.
func tagRecordCases() []TagRecord {
	at := time.Date(2026, 12, 5, 15, 4, 5, 123456789, time.UTC)
	east := time.FixedZone("east", 5*3600+1800)
	return []TagRecord{
		NewTagRecord(digest.FromString("m"), ManifestRecord{MediaType: ociManifest, Size: 1234, FetchedAt: at}, at),
		{Digest: digest.FromString("old"), FetchedAt: at, CheckedAt: at.Add(time.Hour)},
		{},
		{Digest: digest.SHA512.FromString("x"), Type: 3, Size: 1 << 40, FetchedAt: at.In(east), CheckedAt: time.Date(1960, 1, 2, 3, 4, 5, 999999999, time.UTC)},
		{Digest: "sha256:not-a-digest-but-kept", Type: 250, Size: -3, FetchedAt: time.Unix(0, 1), CheckedAt: time.Unix(-1, 0)},
	}
}

// sameTagRecord says whether two tag records hold the same: digest, type,
// size and the same instants (a zone is not kept).
func sameTagRecord(a, b TagRecord) bool {
	return a.Digest == b.Digest && a.Type == b.Type && a.Size == b.Size && a.FetchedAt.Equal(b.FetchedAt) && a.CheckedAt.Equal(b.CheckedAt)
}

// A tag record's binary form reads back as the record, at most 100 bytes
// for a sha256 digest (its JSON ~175–200); its digest and times read alone
// (tagDigestBytes in place, tagDigestAndTimes) as the whole; its JSON
// reads through the same decoders.
func TestTagRecordBinary(t *testing.T) {
	for _, rec := range tagRecordCases() {
		raw, err := rec.MarshalBinary()
		if err != nil {
			t.Fatal(err)
		}
		var got TagRecord
		if err := got.UnmarshalBinary(raw); err != nil || !sameTagRecord(got, rec) {
			t.Errorf("%+v: read back as %+v, %v", rec, got, err)
		}
		if d, ok := tagDigestBytes(raw); !ok || string(d) != string(rec.Digest) || (len(d) > 0 && &d[0] != &raw[1+len(binary.AppendUvarint(nil, uint64(len(d))))]) {
			t.Errorf("%+v: tagDigestBytes = %q %v, want the digest in place", rec, d, ok)
		}
		if d, f, c, err := tagDigestAndTimes(nil, raw); err != nil || string(d) != string(rec.Digest) || !f.Equal(rec.FetchedAt) || !c.Equal(rec.CheckedAt) {
			t.Errorf("%+v: tagDigestAndTimes = %q %v %v %v", rec, d, f, c, err)
		}
		js, err := json.Marshal(rec)
		if err != nil {
			t.Fatal(err)
		}
		if rec.Digest.Validate() == nil && rec.Digest.Algorithm() == digest.SHA256 && len(raw) > 100 {
			t.Errorf("%+v: binary %d bytes (JSON %d), want at most 100", rec, len(raw), len(js))
		}
		if d, f, c, err := tagDigestAndTimes(nil, js); err != nil || string(d) != string(rec.Digest) || !f.Equal(rec.FetchedAt) || !c.Equal(rec.CheckedAt) {
			t.Errorf("%s: tagDigestAndTimes = %q %v %v %v", js, d, f, c, err)
		}
		got = TagRecord{Digest: "left over", Size: 9}
		if err := got.UnmarshalBinary(js); err != nil || !sameTagRecord(got, rec) {
			t.Errorf("%s: read as %+v, %v", js, got, err)
		}
	}
}

// A binary record cut short, or with a byte more, or with nanoseconds out
// of range, is refused, never read as another record.
func TestTagRecordBinaryMalformed(t *testing.T) {
	for _, rec := range tagRecordCases() {
		raw, err := rec.MarshalBinary()
		if err != nil {
			t.Fatal(err)
		}
		for n := 1; n < len(raw); n++ {
			var got TagRecord
			if err := got.UnmarshalBinary(raw[:n]); err == nil {
				t.Errorf("%+v cut to %d of %d bytes read as %+v", rec, n, len(raw), got)
			}
			if _, ok := tagDigestBytes(raw[:n]); ok && n < len(raw) {
				t.Errorf("%+v cut to %d bytes: tagDigestBytes read it", rec, n)
			}
		}
		var got TagRecord
		if err := got.UnmarshalBinary(append(raw, 0)); err == nil {
			t.Errorf("%+v with a byte more read as %+v", rec, got)
		}
	}
	// A digest longer than the record; nanoseconds of 1e9.
	for _, raw := range [][]byte{{tagBinary, 200, 1}, {tagBinary, 0, 0, 0, 0, 0x80, 0x94, 0xeb, 0xdc, 0x03, 0, 0}} {
		var got TagRecord
		if err := got.UnmarshalBinary(raw); err == nil {
			t.Errorf("% x read as %+v", raw, got)
		}
	}
}

// FuzzTagRecord: any bytes either fail to read as a tag record or read as
// one whose binary form reads back the same, with tagDigestBytes and
// tagDigestAndTimes agreeing with the whole.
func FuzzTagRecord(f *testing.F) {
	for _, rec := range tagRecordCases() {
		raw, err := rec.MarshalBinary()
		if err != nil {
			f.Fatal(err)
		}
		f.Add(raw)
		js, err := json.Marshal(rec)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(js)
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		var rec TagRecord
		if rec.UnmarshalBinary(raw) != nil {
			return
		}
		if isTagBinary(raw) {
			d, ok := tagDigestBytes(raw)
			if !ok || string(d) != string(rec.Digest) {
				t.Fatalf("% x: tagDigestBytes = %q %v, the record %q", raw, d, ok, rec.Digest)
			}
			if d, f, c, err := tagDigestAndTimes(nil, raw); err != nil || string(d) != string(rec.Digest) || !f.Equal(rec.FetchedAt) || !c.Equal(rec.CheckedAt) {
				t.Fatalf("% x: tagDigestAndTimes = %q %v %v %v, the record %+v", raw, d, f, c, err, rec)
			}
		}
		again, err := rec.MarshalBinary()
		if err != nil {
			t.Fatal(err)
		}
		var back TagRecord
		if err := back.UnmarshalBinary(again); err != nil || !sameTagRecord(back, rec) {
			t.Fatalf("% x read as %+v; its binary form read back as %+v, %v", raw, rec, back, err)
		}
	})
}

// The index writes a tag in binary; TagsOf reads both forms.
func TestTagRecordWrittenBinary(t *testing.T) {
	ix := openTestIndex(t)
	at := time.Date(2026, 12, 5, 15, 0, 0, 0, time.UTC)
	d := digest.FromString("m")
	if err := ix.RecordManifest(ManifestEntry{Upstream: "docker.io", Repo: "library/a", Digest: d, Tag: "new",
		Record: ManifestRecord{MediaType: ociManifest, Size: 77, FetchedAt: at}}); err != nil {
		t.Fatal(err)
	}
	putJSONTag(t, ix, "old", TagRecord{Digest: d, FetchedAt: at, CheckedAt: at})
	if v := rawTag(t, ix, "new"); !isTagBinary(v) {
		t.Fatalf("a recorded tag is %q, want the binary form", v)
	}
	if tags, err := ix.TagsOf("docker.io", "library/a", d); err != nil || !slices.Equal(tags, []string{"new", "old"}) {
		t.Errorf("TagsOf = %v %v, want both forms", tags, err)
	}
}

// putJSONTag writes v's JSON as the record of docker.io/library/a's tag,
// as an index of schema 2 or older holds it.
func putJSONTag(t *testing.T, ix *Index, tag string, v any) {
	t.Helper()
	raw, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	if err := ix.db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketTags).Put(tagKey("docker.io", "library/a", tag), raw)
	}); err != nil {
		t.Fatal(err)
	}
}

// rawTag is the record of docker.io/library/a's tag as stored.
func rawTag(t *testing.T, ix *Index, tag string) []byte {
	t.Helper()
	var v []byte
	if err := ix.db.View(func(tx *bolt.Tx) error {
		v = bytes.Clone(tx.Bucket(bucketTags).Get(tagKey("docker.io", "library/a", tag)))
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return v
}

// Refresh ages a local tag record of either form by its latest time.
func TestTagRecordPruneAge(t *testing.T) {
	at := time.Date(2026, 12, 5, 15, 0, 0, 0, time.UTC)
	rec := TagRecord{Digest: digest.FromString("m"), FetchedAt: at, CheckedAt: at.Add(time.Hour)}
	bin, err := rec.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	js, err := json.Marshal(rec)
	if err != nil {
		t.Fatal(err)
	}
	for _, raw := range [][]byte{bin, js} {
		if got := prunable[string(bucketTags)](raw); !got.Equal(rec.CheckedAt) {
			t.Errorf("%q aged by %v, want %v", raw, got, rec.CheckedAt)
		}
	}
}
