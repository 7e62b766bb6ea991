package storage_test

import (
	"fmt"
	"maps"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/docker-mirror/docker-mirror/storage"
)

// TestReadImageTable checks the table read against ReadImageRecords on
// the same index: every digest's records (sha256, sha512 and a sha256
// digest in upper-case hex, kept as strings; a digest that is a manifest
// and a blob; a blob with a last pull; last pulls flushed and not, of a
// digest without records too, whose ID the callbacks see; the newest
// time a collection looks at),
// the fills, pins and first holders, and the tags.
func TestReadImageTable(t *testing.T) {
	ix := newIndex(t)
	var ds []digest.Digest
	for i := range 4 {
		ds = append(ds, digest.FromString(fmt.Sprintf("manifest %d", i)), digest.SHA512.FromString(fmt.Sprintf("manifest %d", i)))
	}
	upper := digest.Digest("sha256:" + strings.ToUpper(digest.FromString("upper").Encoded()))
	ds = append(ds, upper)
	media := []string{"application/vnd.oci.image.manifest.v1+json", "application/vnd.oci.image.index.v1+json"}
	for i, d := range ds {
		repo := fmt.Sprintf("library/app%d", i%3)
		var fill *storage.FillRecord
		if i%2 == 0 {
			fill = &storage.FillRecord{Upstream: "docker.io", Repo: repo, State: storage.FillPartial, Platforms: []string{"linux/amd64"}, UpdatedAt: t0}
		}
		if err := ix.RecordManifest(storage.ManifestEntry{Upstream: "docker.io", Repo: repo, Digest: d,
			Record: storage.ManifestRecord{MediaType: media[i%2], Size: int64(100 + i), FetchedAt: t0.Add(time.Duration(i) * time.Second)},
			Tag:    fmt.Sprintf("v%d", i), Fill: fill}); err != nil {
			t.Fatal(err)
		}
		blob := digest.FromString(fmt.Sprintf("blob %d", i))
		if i%2 == 1 {
			blob = digest.SHA512.FromString(fmt.Sprintf("blob %d", i))
		}
		if err := ix.RecordBlob("docker.io", repo, blob, int64(1000+i), t0.Add(time.Minute)); err != nil {
			t.Fatal(err)
		}
	}
	if err := ix.RecordBlob("docker.io", "library/app0", ds[2], 7, t0); err != nil { // a manifest and a blob
		t.Fatal(err)
	}
	if err := ix.Pin(t.Context(), ds[1].String(), storage.PinRecord{PinnedAt: t0}); err != nil {
		t.Fatal(err)
	}
	unknown := digest.FromString("pulled, never recorded")
	for _, pull := range []struct {
		d  digest.Digest
		at time.Time
	}{{ds[1], t0.Add(time.Hour)}, {unknown, t0.Add(time.Hour)}, {digest.FromString("blob 0"), t0.Add(90 * time.Minute)}} {
		if err := ix.TouchManifest(pull.d, pull.at); err != nil {
			t.Fatal(err)
		}
	}
	if err := ix.Flush(); err != nil {
		t.Fatal(err)
	}
	// Not flushed: later than the flushed one, and digests of their own,
	// one first in the table (every ID after it moves when it goes in).
	first := digest.Digest("sha256:" + strings.Repeat("0", 64))
	for _, pull := range []struct {
		d  digest.Digest
		at time.Time
	}{{ds[1], t0.Add(2 * time.Hour)}, {first, t0.Add(time.Hour)}, {ds[3], t0.Add(3 * time.Hour)}, {digest.SHA512.FromString("pulled"), t0.Add(4 * time.Hour)}, {digest.FromString("blob 2"), t0.Add(5 * time.Hour)}, {ds[2], t0.Add(6 * time.Hour)}} {
		if err := ix.TouchManifest(pull.d, pull.at); err != nil {
			t.Fatal(err)
		}
	}

	var wantTags, gotTags []storage.TagInfo
	recs, err := ix.ReadImageRecords(nil, func(ti *storage.TagInfo) {
		if string(ti.RawTag) != ti.Tag {
			t.Errorf("%s: raw tag %s", ti.Tag, ti.RawTag)
		}
		ti.Key, ti.Records, ti.RawDigest, ti.RawTag = nil, nil, nil, nil
		wantTags = append(wantTags, *ti)
	})
	if err != nil {
		t.Fatal(err)
	}
	var table *storage.ContentTable
	ids := map[digest.Digest]int{} // as the callback sees them
	tab, err := ix.ReadImageTable(nil, func(ti *storage.TagInfo) {
		if string(ti.RawDigest) != string(ti.Digest) {
			t.Errorf("%s: raw digest %s", ti.Digest, ti.RawDigest)
		}
		table = ti.Table
		ids[ti.Digest], _ = ti.Table.ID(ti.Digest)
		ti.Key, ti.RawDigest, ti.RawTag, ti.Table = nil, nil, nil, nil
		gotTags = append(gotTags, *ti)
	})
	if err != nil {
		t.Fatal(err)
	}
	if table != tab.Content {
		t.Error("TagInfo.Table is not the table read")
	}
	// The raw read: the same tags, their digests as bytes only.
	var rawTags []storage.TagInfo
	if _, err := ix.ReadImageTableRaw(nil, func(ti *storage.TagInfo) {
		if ti.Digest != "" || ti.Tag != "" {
			t.Errorf("raw read: digest %s or tag %s made", ti.Digest, ti.Tag)
		}
		ti.Digest, ti.Tag = digest.Digest(ti.RawDigest), string(ti.RawTag)
		ti.Key, ti.RawDigest, ti.RawTag, ti.Table = nil, nil, nil, nil
		rawTags = append(rawTags, *ti)
	}); err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(rawTags) != fmt.Sprint(wantTags) {
		t.Errorf("raw tags %v, want %v", rawTags, wantTags)
	}
	all := map[digest.Digest]bool{}
	for _, m := range []map[digest.Digest]bool{keySet(recs.Manifests), keySet(recs.Blobs), keySet(recs.Access)} {
		maps.Copy(all, m)
	}
	if tab.Content.Len() != len(all) || len(all) != len(ds)*2+3 {
		t.Errorf("%d digests in the table, %d with records, want %d", tab.Content.Len(), len(all), len(ds)*2+3)
	}
	if id, ok := tab.Content.ID(first); !ok || id != 0 {
		t.Errorf("%s: ID %d, %v; want 0", first, id, ok)
	}
	for d, id := range ids {
		if got, ok := tab.Content.ID(d); !ok || got != id {
			t.Errorf("%s: ID %d in the callback, %d (%v) in the table returned", d, id, got, ok)
		}
	}
	for d := range all {
		got, ok := tab.Content.Lookup(d)
		m, isManifest := recs.Manifests[d]
		b, isBlob := recs.Blobs[d]
		if !ok || got.Manifest != isManifest || got.Blob != isBlob || got.Size != m.Size+b.Size || got.ManifestSize != m.Size || got.MediaType != m.MediaType ||
			!got.FetchedAt.Equal(m.FetchedAt) || !got.LastAccess.Equal(b.LastAccess) || !got.Pulled.Equal(recs.Access[d]) {
			t.Errorf("%s: %+v (found %v), want manifest %+v, blob %+v, pulled %v", d, got, ok, m, b, recs.Access[d])
		}
		if id, ok := tab.Content.IDBytes([]byte(d)); !ok || tab.Content.Digest(id) != d {
			t.Errorf("%s: IDBytes %d, %v", d, id, ok)
		}
		id, _ := tab.Content.ID(d)
		// A blob recorded once was fetched when last accessed.
		if newest := latestOf(m.FetchedAt, b.LastAccess); !tab.Content.NewestID(id).Equal(newest) ||
			tab.Content.Recorded(id) != (isManifest || isBlob) || tab.Content.ManifestID(id) != isManifest {
			t.Errorf("%s: newest %v, recorded %v, manifest %v; want %v, %v, %v", d, tab.Content.NewestID(id), tab.Content.Recorded(id),
				tab.Content.ManifestID(id), newest, isManifest || isBlob, isManifest)
		}
		if tab.Content.Size(d) != got.Size || tab.Content.IsManifest(d) != isManifest {
			t.Errorf("%s: Size %d, IsManifest %v; want %d, %v", d, tab.Content.Size(d), tab.Content.IsManifest(d), got.Size, isManifest)
		}
	}
	if got, ok := tab.Content.Lookup(upper); !ok || got.Size != 100+8 {
		t.Errorf("upper-case digest: %+v, %v", got, ok)
	}
	if _, ok := tab.Content.Lookup(digest.FromString("nothing")); ok || tab.Content.Size(digest.FromString("nothing")) != 0 {
		t.Error("a digest without records found")
	}
	if fmt.Sprint(tab.Fills) != fmt.Sprint(recs.Fills) || !maps.Equal(tab.Pins, recs.Pins) || !maps.Equal(tab.FirstHolder, recs.FirstHolder) || len(tab.FirstHolder) != 1 {
		t.Errorf("fills %v, pins %v, holders %v; want %v, %v, %v", tab.Fills, tab.Pins, tab.FirstHolder, recs.Fills, recs.Pins, recs.FirstHolder)
	}
	if fmt.Sprint(gotTags) != fmt.Sprint(wantTags) || len(gotTags) != len(ds) {
		t.Errorf("tags %v, want %v", gotTags, wantTags)
	}
}

func latestOf(ts ...time.Time) time.Time {
	var out time.Time
	for _, t := range ts {
		if t.After(out) {
			out = t
		}
	}
	return out
}

func keySet[V any](m map[digest.Digest]V) map[digest.Digest]bool {
	out := map[digest.Digest]bool{}
	for d := range m {
		out[d] = true
	}
	return out
}
