package storage_test

import (
	"fmt"
	"runtime"
	"slices"
	"testing"

	"github.com/opencontainers/go-digest"
	"golang.org/x/sync/errgroup"

	"github.com/docker-mirror/docker-mirror/storage"
)

// The roots read on a content table: a tagged manifest, a digest with
// only a mirror record, a pinned digest with no record and another
// algorithm's digest are all roots, found by digest and the recorded
// ones by their identifiers in the table; content no root names is not
// one. Read without a table, the same digests.
func TestRootsIn(t *testing.T) {
	ix := newIndex(t)
	const repo = "library/alpine"
	const media = "application/vnd.oci.image.manifest.v1+json"
	tagged, mirrored, unrooted := digest.FromString("tagged"), digest.FromString("mirrored"), digest.FromString("unrooted")
	pinned := digest.FromString("pinned, never stored")
	sha512 := digest.SHA512.FromString("tagged, sha512")
	for i, d := range []digest.Digest{tagged, sha512} {
		for _, tag := range []string{"a", "b"}[:i+1] {
			must(t, ix.RecordManifest(storage.ManifestEntry{Upstream: hub, Repo: repo, Digest: d, Tag: tag + d.Algorithm().String(),
				Record: storage.ManifestRecord{MediaType: media, Size: 1, FetchedAt: t0}}))
		}
	}
	for _, d := range []digest.Digest{mirrored, unrooted} {
		must(t, ix.RecordManifest(storage.ManifestEntry{Upstream: hub, Repo: repo, Digest: d,
			Record: storage.ManifestRecord{MediaType: media, Size: 1, FetchedAt: t0}}))
	}
	must(t, ix.PutFill(mirrored, storage.FillRecord{Upstream: hub, Repo: repo, State: storage.FillComplete, UpdatedAt: t0}))
	must(t, ix.Pin(t.Context(), pinned.String(), storage.PinRecord{PinnedAt: t0}))
	must(t, ix.Pin(t.Context(), storage.TagKey(hub, repo, "asha256"), storage.PinRecord{PinnedAt: t0})) // a pinned tag: tagged, already a root

	view, err := ix.ContentView(nil)
	must(t, err)
	table := view.Table
	roots := []digest.Digest{tagged, sha512, mirrored, pinned}
	for name, r := range map[string]storage.Roots{"ContentView": view.Roots, "RootsIn": mustRoots(t, ix, table), "Roots": mustRoots(t, ix, nil)} {
		for _, d := range roots {
			if !r.Has(d) {
				t.Errorf("%s: %s is not a root", name, d)
			}
		}
		if r.Has(unrooted) {
			t.Errorf("%s: %s, named by nothing, is a root", name, unrooted)
		}
		if r.Set.Len() != len(roots) {
			t.Errorf("%s: %d roots, want %d", name, r.Set.Len(), len(roots))
		}
		var all []digest.Digest
		r.Set.Each(func(d digest.Digest) { all = append(all, d) })
		if slices.Sort(all); !slices.Equal(all, sorted(roots)) {
			t.Errorf("%s: Each = %v, want %v", name, all, sorted(roots))
		}
	}
	// On the table, the recorded roots are its identifiers.
	r := mustRoots(t, ix, table)
	var byID []digest.Digest
	r.Set.EachID(func(id int) {
		byID = append(byID, table.Digest(id))
		if !r.Set.HasID(id) {
			t.Errorf("HasID(%d) false for an identifier EachID gave", id)
		}
	})
	if want := sorted([]digest.Digest{tagged, sha512, mirrored}); !slices.Equal(sorted(byID), want) {
		t.Errorf("roots by identifier %v, want the recorded ones %v", byID, want)
	}
	if id, ok := table.ID(unrooted); !ok || r.Set.HasID(id) {
		t.Errorf("the unrooted digest's identifier %d (%v) is in the set", id, ok)
	}
	var others []digest.Digest
	r.Set.EachOther(func(d digest.Digest) { others = append(others, d) })
	if !slices.Equal(others, []digest.Digest{pinned}) {
		t.Errorf("roots not in the table %v, want only the pinned digest never recorded", others)
	}
}

func mustRoots(t *testing.T, ix *storage.Index, table *storage.ContentTable) storage.Roots {
	t.Helper()
	r, err := ix.RootsIn(table)
	must(t, err)
	return r
}

func sorted(ds []digest.Digest) []digest.Digest {
	out := slices.Clone(ds)
	slices.Sort(out)
	return out
}

// The roots a collection reads hold a bit per digest of its content
// table, not a string per root: 2,000 tagged manifests of 2 tags each.
// As a map of digest strings and their interner (round 8's RootsView)
// they held ~135 bytes a root; now ~1.
func TestRootsMemoryPerRoot(t *testing.T) {
	ix := newIndex(t)
	const n = 2000
	// A write transaction each, its commit synced: 5 tags a root took
	// 30-50 s under -race on a busy machine; 2 still make a root of more
	// than one tag.
	var eg errgroup.Group
	eg.SetLimit(64)
	for i := range n {
		d := digest.FromString(fmt.Sprint("root ", i))
		for tag := range 2 {
			e := storage.ManifestEntry{Upstream: hub, Repo: "library/app", Digest: d, Tag: fmt.Sprintf("v%d-%d", i, tag),
				Record: storage.ManifestRecord{MediaType: "application/vnd.oci.image.manifest.v1+json", Size: 1, FetchedAt: t0}}
			eg.Go(func() error { return ix.RecordManifest(e) })
		}
	}
	must(t, eg.Wait())
	view, err := ix.ContentView(nil)
	must(t, err)
	heap := func() int64 {
		runtime.GC()
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		return int64(ms.HeapAlloc)
	}
	without := heap()
	r, err := ix.RootsIn(view.Table)
	must(t, err)
	with := heap()
	if r.Set.Len() != n {
		t.Fatalf("%d roots, want %d", r.Set.Len(), n)
	}
	runtime.KeepAlive(r)
	runtime.KeepAlive(view)
	per := float64(with-without) / n
	t.Logf("%.1f bytes a root", per)
	if per > 8 {
		t.Errorf("the roots hold %.1f bytes a root, want at most 8", per)
	}
}
