package storage_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/docker-mirror/docker-mirror/storage"
)

func TestDriverStoreWalk(t *testing.T) {
	root := t.TempDir()
	s := openFilesystem(t, root)
	ctx := t.Context()

	count := 0
	if err := s.Walk(ctx, func(storage.StoredContent) error { count++; return nil }); err != nil || count != 0 {
		t.Fatalf("Walk of an empty store: %d entries, %v", count, err)
	}
	want := map[digest.Digest]int64{}
	for _, body := range []string{"one", "two two", ""} {
		d := digest.FromString(body)
		must(t, s.Put(ctx, "r", d, int64(len(body)), strings.NewReader(body)))
		want[d] = int64(len(body))
	}
	// Stray files are not content: a file where a directory belongs, a
	// content directory under another prefix, without data, with a
	// directory as data, a name that is no digest, an unknown algorithm.
	blobs := filepath.Join(root, "blobs")
	hex := digest.FromString("stray").Encoded()
	other := "00"
	if hex[:2] == other {
		other = "01"
	}
	must(t, os.MkdirAll(filepath.Join(blobs, "sha256", "zz"), 0o755))
	must(t, os.WriteFile(filepath.Join(blobs, "sha256", "zz", "junk"), []byte("x"), 0o644))
	must(t, os.WriteFile(filepath.Join(blobs, "README"), []byte("x"), 0o644))
	must(t, os.WriteFile(filepath.Join(blobs, "sha256", "junk"), []byte("x"), 0o644))
	must(t, os.MkdirAll(filepath.Join(blobs, "sha256", other, hex), 0o755))
	must(t, os.WriteFile(filepath.Join(blobs, "sha256", other, hex, "data"), []byte("x"), 0o644))
	must(t, os.MkdirAll(filepath.Join(blobs, "sha256", hex[:2], hex), 0o755))
	noData := digest.FromString("no data").Encoded()
	must(t, os.MkdirAll(filepath.Join(blobs, "sha256", noData[:2], noData, "data", "x"), 0o755))
	notHex := hex[:2] + "not-a-digest"
	must(t, os.MkdirAll(filepath.Join(blobs, "sha256", hex[:2], notHex), 0o755))
	must(t, os.WriteFile(filepath.Join(blobs, "sha256", hex[:2], notHex, "data"), []byte("x"), 0o644))
	must(t, os.MkdirAll(filepath.Join(blobs, "md5", hex[:2], hex), 0o755))
	must(t, os.WriteFile(filepath.Join(blobs, "md5", hex[:2], hex, "data"), []byte("x"), 0o644))

	// The store reads the directories itself; the driver's own walk (a
	// store on the driver alone) is the oracle.
	before := time.Now().Add(-time.Hour)
	for name, s := range map[string]*storage.DriverStore{"filesystem": s, "driver": storage.NewDriverStore(s.Driver())} {
		got := map[digest.Digest]int64{}
		err := s.Walk(ctx, func(sc storage.StoredContent) error {
			got[sc.Digest] = sc.Size
			if sc.ModTime.Before(before) {
				t.Errorf("%s: %s: ModTime %v", name, sc.Digest, sc.ModTime)
			}
			return nil
		})
		must(t, err)
		if len(got) != len(want) {
			t.Fatalf("%s: Walk = %v, want %v", name, got, want)
		}
		for d, n := range want {
			if got[d] != n {
				t.Errorf("%s: Walk: %s has size %d, want %d", name, d, got[d], n)
			}
		}
	}
}

// A walk stops at its function's first error, and at the context's end.
func TestDriverStoreWalkStops(t *testing.T) {
	s := openFilesystem(t, t.TempDir())
	ctx, cancel := context.WithCancel(t.Context())
	for _, body := range []string{"one", "two", "three"} {
		must(t, s.Put(ctx, "r", digest.FromString(body), int64(len(body)), strings.NewReader(body)))
	}
	errStop := errors.New("stop")
	calls := 0
	if err := s.Walk(ctx, func(storage.StoredContent) error { calls++; return errStop }); !errors.Is(err, errStop) || calls != 1 {
		t.Errorf("Walk = %v after %d calls, want the function's error after 1", err, calls)
	}
	cancel()
	if err := s.Walk(ctx, func(storage.StoredContent) error { return nil }); !errors.Is(err, context.Canceled) {
		t.Errorf("Walk with its context canceled = %v", err)
	}
}

func TestTagKey(t *testing.T) {
	for _, c := range []struct{ host, repo, tag string }{
		{"docker.io", "library/nginx", "1.27"},
		{"127.0.0.1:5000", "a/b/c", "latest"},
	} {
		key := storage.TagKey(c.host, c.repo, c.tag)
		h, r, tg, ok := storage.ParseTagKey(key)
		if !ok || h != c.host || r != c.repo || tg != c.tag {
			t.Errorf("ParseTagKey(%q) = %q %q %q %v", key, h, r, tg, ok)
		}
	}
	for _, bad := range []string{"", "nohost", "/repo:tag", "host/repo", "host/repo:", "host/:tag"} {
		if _, _, _, ok := storage.ParseTagKey(bad); ok {
			t.Errorf("ParseTagKey(%q) accepted", bad)
		}
	}
}

func TestIndexPins(t *testing.T) {
	ix := newIndex(t)
	d := digest.FromString("image")
	tag := storage.TagKey(hub, "library/alpine", "3")
	must(t, ix.Pin(t.Context(), d.String(), storage.PinRecord{PinnedAt: t0, Reason: "sync"}))
	must(t, ix.Pin(t.Context(), tag, storage.PinRecord{PinnedAt: t0}))
	if err := ix.Pin(t.Context(), "not a ref", storage.PinRecord{}); err == nil {
		t.Error("Pin of an invalid reference accepted")
	}
	pins, err := ix.Pins()
	must(t, err)
	if len(pins) != 2 || pins[d.String()].Reason != "sync" || !pins[tag].PinnedAt.Equal(t0) {
		t.Fatalf("Pins = %v", pins)
	}
	roots, err := ix.RootDigests()
	must(t, err)
	if !roots[d] || len(roots) != 1 {
		t.Fatalf("RootDigests = %v, want the pinned digest", roots)
	}
	must(t, ix.Unpin(t.Context(), d.String()))
	must(t, ix.Unpin(t.Context(), d.String()))
	pins, err = ix.Pins()
	must(t, err)
	if _, ok := pins[d.String()]; ok || len(pins) != 1 {
		t.Fatalf("Pins after Unpin = %v", pins)
	}
}

func TestIndexTouchManifest(t *testing.T) {
	ix := newIndex(t)
	d := digest.FromString("manifest")
	if at, err := ix.ManifestAccess(d); err != nil || !at.IsZero() {
		t.Fatalf("ManifestAccess before any pull = %v, %v", at, err)
	}
	must(t, ix.TouchManifest(d, t0))
	must(t, ix.TouchManifest(d, t0.Add(storage.AccessGranularity/2))) // too soon: not written
	if at, err := ix.ManifestAccess(d); err != nil || !at.Equal(t0) {
		t.Fatalf("ManifestAccess = %v, %v, want %v", at, err, t0)
	}
	later := t0.Add(storage.AccessGranularity)
	must(t, ix.TouchManifest(d, later))
	must(t, ix.TouchManifest(d, t0)) // older: ignored
	if at, err := ix.ManifestAccess(d); err != nil || !at.Equal(later) {
		t.Fatalf("ManifestAccess = %v, %v, want %v", at, err, later)
	}
	snap, err := ix.Snapshot()
	must(t, err)
	if !snap.Access[d].Equal(later) {
		t.Fatalf("Snapshot.Access = %v", snap.Access)
	}
}

func TestIndexForget(t *testing.T) {
	ix := newIndex(t)
	const repo = "library/alpine"
	manifest, blob, kept := digest.FromString("manifest"), digest.FromString("blob"), digest.FromString("kept")
	must(t, ix.RecordManifest(storage.ManifestEntry{
		Upstream: hub, Repo: repo, Digest: manifest, Tag: "3",
		Record: storage.ManifestRecord{MediaType: "application/vnd.oci.image.manifest.v1+json", Size: 100, FetchedAt: t0},
		Fill:   &storage.FillRecord{Upstream: hub, Repo: repo, State: storage.FillComplete},
	}))
	must(t, ix.Link(ghcr, "o/alpine", manifest))
	must(t, ix.RecordBlob(hub, repo, blob, 1000, t0))
	must(t, ix.RecordBlob(hub, repo, kept, 10, t0))
	must(t, ix.TouchManifest(manifest, t0))
	if got := ix.StoredBytes(); got != 1110 {
		t.Fatalf("StoredBytes = %d", got)
	}

	var seen []storage.ContentEntry
	gone, err := ix.Forget([]digest.Digest{manifest, blob, kept, blob}, func(d digest.Digest, e storage.ContentEntry) bool {
		seen = append(seen, e)
		return d == kept
	})
	must(t, err)
	if len(seen) != 3 || !seen[0].Rooted || seen[0].Manifest == nil || seen[1].Rooted || seen[1].Blob == nil {
		t.Fatalf("keep saw %+v", seen)
	}
	if len(gone) != 2 || gone[0].Digest != manifest || !gone[0].Manifest || gone[0].Size != 100 ||
		!slices.Equal(gone[0].Tags, []string{storage.TagKey(hub, repo, "3")}) || gone[1].Digest != blob || !gone[1].Blob {
		t.Fatalf("Forget = %+v", gone)
	}
	if got := ix.StoredBytes(); got != 10 {
		t.Fatalf("StoredBytes after Forget = %d, want 10", got)
	}
	if _, ok, _ := ix.Tag(hub, repo, "3"); ok {
		t.Error("the tag of a forgotten manifest survived")
	}
	if _, ok, _ := ix.Fill(hub, repo, manifest); ok {
		t.Error("the mirror state of a forgotten manifest survived")
	}
	for _, h := range []struct{ host, repo string }{{hub, repo}, {ghcr, "o/alpine"}} {
		if ok, _ := ix.Linked(h.host, h.repo, manifest); ok {
			t.Errorf("link %s/%s survived", h.host, h.repo)
		}
	}
	if holders, _ := ix.Holders(blob); len(holders) != 0 {
		t.Errorf("holders of a forgotten blob: %v", holders)
	}
	if ok, _ := ix.Linked(hub, repo, kept); !ok {
		t.Error("a kept blob lost its link")
	}
	if at, _ := ix.ManifestAccess(manifest); !at.IsZero() {
		t.Error("the access time of a forgotten manifest survived")
	}
}

func TestIndexDeleteTagIfAndMirror(t *testing.T) {
	ix := newIndex(t)
	const repo = "library/alpine"
	a, b := digest.FromString("a"), digest.FromString("b")
	recordTag(t, ix, hub, repo, "3", a, t0)
	if ok, err := ix.DeleteTagIf(hub, repo, "3", b, t0); err != nil || ok {
		t.Fatalf("DeleteTagIf(other digest) = %v, %v", ok, err)
	}
	if ok, err := ix.DeleteTagIf(hub, repo, "3", a, t0); err != nil || !ok {
		t.Fatalf("DeleteTagIf = %v, %v", ok, err)
	}
	must(t, ix.PutFill(a, storage.FillRecord{Upstream: hub, Repo: repo, State: storage.FillComplete}))
	must(t, ix.PutFill(a, storage.FillRecord{Upstream: ghcr, Repo: "o/a", State: storage.FillComplete}))
	must(t, ix.DeleteFill(hub, repo, a))
	if _, ok, _ := ix.Fill(hub, repo, a); ok {
		t.Error("DeleteFill left the state")
	}
	if _, ok, _ := ix.Fill(ghcr, "o/a", a); !ok {
		t.Error("DeleteFill removed another repository's state")
	}
	snap, err := ix.Snapshot()
	must(t, err)
	if len(snap.Fills) != 1 || snap.Fills[0].Digest != a || snap.Fills[0].Upstream != ghcr {
		t.Fatalf("Snapshot.Fills = %+v", snap.Fills)
	}
}
