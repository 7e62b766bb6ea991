package storage_test

import (
	"fmt"
	"maps"
	"slices"
	"testing"
	"time"
	"unsafe"

	"github.com/opencontainers/go-digest"

	"github.com/docker-mirror/docker-mirror/storage"
)

// TestReadImageRecords checks the compact read against Snapshot on the
// same index: every tag (parts, digest, times, pin), manifest, blob,
// access time (flushed and not), fill, pin, and each pinned digest's
// first linked repository; and that digests are shared strings.
func TestReadImageRecords(t *testing.T) {
	ix := newIndex(t)
	var ds []digest.Digest
	for i := range 6 {
		d := digest.FromString(fmt.Sprintf("manifest %d", i))
		ds = append(ds, d)
		repo := fmt.Sprintf("library/app%d", i%3)
		fill := &storage.FillRecord{Upstream: "docker.io", Repo: repo, State: storage.FillComplete, Platforms: []string{"linux/amd64"}, UpdatedAt: t0}
		if i%2 == 1 {
			fill = nil
		}
		if err := ix.RecordManifest(storage.ManifestEntry{Upstream: "docker.io", Repo: repo, Digest: d,
			Record: storage.ManifestRecord{MediaType: "application/vnd.oci.image.manifest.v1+json", Size: int64(100 + i), FetchedAt: t0.Add(time.Duration(i) * time.Second)},
			Tag:    fmt.Sprintf("v%d", i), Fill: fill}); err != nil {
			t.Fatal(err)
		}
		if err := ix.RecordBlob("ghcr.io", repo, digest.FromString(fmt.Sprintf("blob %d", i)), int64(1000+i), t0.Add(time.Minute)); err != nil {
			t.Fatal(err)
		}
	}
	// A second tag, a tag revalidated later, pins by tag and digest, a
	// digest pinned with two holders, access times flushed and not.
	if err := ix.RecordManifest(storage.ManifestEntry{Upstream: "quay.io", Repo: "x/y", Digest: ds[0], Record: storage.ManifestRecord{Size: 100, FetchedAt: t0}, Tag: "latest"}); err != nil {
		t.Fatal(err)
	}
	if err := ix.TouchTag("docker.io", "library/app1", "v1", t0.Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	for _, ref := range []string{storage.TagKey("docker.io", "library/app2", "v2"), ds[0].String(), ds[3].String(), digest.FromString("unknown").String()} {
		if err := ix.Pin(t.Context(), ref, storage.PinRecord{PinnedAt: t0, Reason: "test"}); err != nil {
			t.Fatal(err)
		}
	}
	if err := ix.TouchManifest(ds[1], t0.Add(2*time.Hour)); err != nil {
		t.Fatal(err)
	}
	if err := ix.Flush(); err != nil {
		t.Fatal(err)
	}
	if err := ix.TouchManifest(ds[2], t0.Add(3*time.Hour)); err != nil { // not flushed
		t.Fatal(err)
	}

	snap, err := ix.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	in := &storage.Interner{}
	tags := map[string]storage.TagRecord{}
	pinned := map[string]bool{}
	recs, err := ix.ReadImageRecords(in, func(ti *storage.TagInfo) {
		key := string(ti.Key)
		host, repo, tag, ok := storage.ParseTagKey(key)
		if ti.OK != ok || ti.Upstream != host || ti.Repo != repo || ti.Tag != tag {
			t.Errorf("tag %q: parts %q %q %q %v, want %q %q %q %v", key, ti.Upstream, ti.Repo, ti.Tag, ti.OK, host, repo, tag, ok)
		}
		if in.Digest(ti.Digest) != ti.Digest || unsafe.StringData(string(in.Digest(ti.Digest))) != unsafe.StringData(string(ti.Digest)) {
			t.Errorf("tag %q: digest not interned", key)
		}
		tags[key] = storage.TagRecord{Digest: ti.Digest, FetchedAt: ti.FetchedAt, CheckedAt: ti.CheckedAt}
		pinned[key] = ti.Pinned
	})
	if err != nil {
		t.Fatal(err)
	}
	// TagInfo has no manifest type and size (TagRecord's since round 10).
	want := map[string]storage.TagRecord{}
	for k, v := range snap.Tags {
		want[k] = storage.TagRecord{Digest: v.Digest, FetchedAt: v.FetchedAt, CheckedAt: v.CheckedAt}
	}
	if !maps.Equal(tags, want) {
		t.Errorf("tags:\n%v\nwant\n%v", tags, want)
	}
	for key := range snap.Tags {
		if _, want := snap.Pins[key]; pinned[key] != want {
			t.Errorf("tag %q pinned %v, want %v", key, pinned[key], want)
		}
	}
	if len(snap.Manifests) != len(recs.Manifests) || len(snap.Blobs) != len(recs.Blobs) {
		t.Errorf("%d manifests and %d blobs, want %d and %d", len(recs.Manifests), len(recs.Blobs), len(snap.Manifests), len(snap.Blobs))
	}
	for d, m := range snap.Manifests {
		if got := recs.Manifests[d]; got != storage.ManifestInfo(m) {
			t.Errorf("manifest %s: %+v, want %+v", d, got, m)
		}
	}
	for d, b := range snap.Blobs {
		if got := recs.Blobs[d]; got != (storage.BlobInfo{Size: b.Size, LastAccess: b.LastAccess}) {
			t.Errorf("blob %s: %+v, want %+v", d, got, b)
		}
	}
	if !maps.Equal(recs.Access, snap.Access) || !recs.Access[ds[2]].Equal(t0.Add(3*time.Hour)) {
		t.Errorf("access %v, want %v (with the unflushed pull)", recs.Access, snap.Access)
	}
	sortFills := func(f []storage.FillEntry) []string {
		var out []string
		for _, e := range f {
			out = append(out, fmt.Sprintf("%+v", e))
		}
		slices.Sort(out)
		return out
	}
	if got, want := sortFills(recs.Fills), sortFills(snap.Fills); !slices.Equal(got, want) || len(got) != 3 {
		t.Errorf("fills %v, want %v", got, want)
	}
	if !maps.Equal(recs.Pins, map[string]bool{storage.TagKey("docker.io", "library/app2", "v2"): true, ds[0].String(): true, ds[3].String(): true, digest.FromString("unknown").String(): true}) {
		t.Errorf("pins %v", recs.Pins)
	}
	// ds[0] is linked from docker.io and quay.io: the first in key order.
	wantHolders := map[digest.Digest]string{}
	for key := range snap.Pins {
		if d, err := digest.Parse(key); err == nil && len(snap.Links[d]) > 0 {
			wantHolders[d] = snap.Links[d][0]
		}
	}
	if !maps.Equal(recs.FirstHolder, wantHolders) || recs.FirstHolder[ds[0]] != "docker.io/library/app0" {
		t.Errorf("first holders %v, want %v", recs.FirstHolder, wantHolders)
	}

	// Without a tag callback, the rest is the same.
	bare, err := ix.ReadImageRecords(nil, nil)
	if err != nil || !maps.Equal(bare.Manifests, recs.Manifests) || !maps.Equal(bare.Blobs, recs.Blobs) {
		t.Errorf("without tags: %+v, %v", bare, err)
	}
}

// TestReadImageTableFills checks that the fill records given one by one
// are those ReadImageTableRaw lists, in its order, each after every tag,
// with the table; and that none is kept.
func TestReadImageTableFills(t *testing.T) {
	ix := newIndex(t)
	for i := range 40 {
		d := digest.FromString(fmt.Sprintf("manifest %d", i))
		repo := fmt.Sprintf("library/app%d", i%7)
		var fill *storage.FillRecord
		if i%3 != 2 {
			fill = &storage.FillRecord{Upstream: "docker.io", Repo: repo, State: []string{storage.FillComplete, storage.FillPartial}[i%2],
				Platforms: []string{"linux/amd64", fmt.Sprintf("linux/arm/v%d", i%3)}[:1+i%2], UpdatedAt: t0.Add(time.Duration(i) * time.Minute)}
		}
		tag := fmt.Sprintf("v%d", i)
		if i%5 == 4 {
			tag = "" // a fill record alone
		}
		if err := ix.RecordManifest(storage.ManifestEntry{Upstream: "docker.io", Repo: repo, Digest: d,
			Record: storage.ManifestRecord{MediaType: "application/vnd.oci.image.manifest.v1+json", Size: int64(100 + i), FetchedAt: t0},
			Tag:    tag, Fill: fill}); err != nil {
			t.Fatal(err)
		}
	}
	want, err := ix.ReadImageTableRaw(nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(want.Fills) < 20 {
		t.Fatalf("%d fill records", len(want.Fills))
	}
	tags, tagsWant := 0, 0
	if _, err := ix.ReadImageTableRaw(nil, func(*storage.TagInfo) { tagsWant++ }); err != nil {
		t.Fatal(err)
	}
	var got []storage.FillEntry
	tab, err := ix.ReadImageTableFills(nil, func(*storage.TagInfo) {
		tags++
		if len(got) > 0 {
			t.Error("a tag after a fill record")
		}
	}, func(ct *storage.ContentTable, f *storage.FillEntry) {
		if ct == nil || ct.Len() != want.Content.Len() {
			t.Error("a fill record without the table")
		}
		got = append(got, *f)
	})
	if err != nil {
		t.Fatal(err)
	}
	if tags != tagsWant || tab.Fills != nil {
		t.Errorf("%d tags (want %d), %d fills kept", tags, tagsWant, len(tab.Fills))
	}
	if fmt.Sprint(got) != fmt.Sprint(want.Fills) {
		t.Errorf("fills given:\n%v\nwant\n%v", got, want.Fills)
	}
}
