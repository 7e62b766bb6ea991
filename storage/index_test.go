package storage_test

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	bolt "go.etcd.io/bbolt"

	"github.com/docker-mirror/docker-mirror/storage"
	"github.com/docker-mirror/docker-mirror/tests/fixture"
)

const (
	hub  = "registry-1.docker.io"
	ghcr = "ghcr.io"
)

// t0 is a fixed time with nanoseconds, so the tests see whether times
// survive the index exactly.
var t0 = time.Date(2025, 3, 4, 5, 6, 7, 890123456, time.UTC)

func openIndex(t *testing.T, path string) *storage.Index {
	t.Helper()
	ix, err := storage.OpenIndex(path)
	if err != nil {
		t.Fatalf("OpenIndex(%s): %v", path, err)
	}
	return ix
}

// newIndex opens a fresh index that is closed when the test ends.
func newIndex(t *testing.T) *storage.Index {
	t.Helper()
	ix := openIndex(t, filepath.Join(t.TempDir(), "index.db"))
	t.Cleanup(func() {
		if err := ix.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return ix
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func recordTag(t *testing.T, ix *storage.Index, host, repo, tag string, dgst digest.Digest, at time.Time) {
	t.Helper()
	must(t, ix.RecordManifest(storage.ManifestEntry{
		Upstream: host, Repo: repo, Digest: dgst, Tag: tag,
		Record: storage.ManifestRecord{MediaType: "application/vnd.oci.image.manifest.v1+json", Size: 100, FetchedAt: at},
	}))
}

func checkTag(t *testing.T, ix *storage.Index, host, repo, tag string, want storage.TagRecord) {
	t.Helper()
	got, ok, err := ix.Tag(host, repo, tag)
	if err != nil || !ok {
		t.Fatalf("Tag(%s, %s, %s) = %v, %v, %v; want a record", host, repo, tag, got, ok, err)
	}
	if got.Digest != want.Digest || !got.FetchedAt.Equal(want.FetchedAt) || !got.CheckedAt.Equal(want.CheckedAt) {
		t.Fatalf("Tag(%s, %s, %s) = %+v, want %+v", host, repo, tag, got, want)
	}
}

func checkNoTag(t *testing.T, ix *storage.Index, host, repo, tag string) {
	t.Helper()
	if got, ok, err := ix.Tag(host, repo, tag); err != nil || ok {
		t.Fatalf("Tag(%s, %s, %s) = %+v, %v, %v; want none", host, repo, tag, got, ok, err)
	}
}

func checkTags(t *testing.T, ix *storage.Index, host, repo string, want ...string) {
	t.Helper()
	got, err := ix.Tags(host, repo)
	if err != nil {
		t.Fatalf("Tags(%s, %s): %v", host, repo, err)
	}
	if !slices.Equal(got, want) {
		t.Fatalf("Tags(%s, %s) = %q, want %q", host, repo, got, want)
	}
}

func TestIndexTags(t *testing.T) {
	ix := newIndex(t)
	d1, d2, d3 := digest.FromString("one"), digest.FromString("two"), digest.FromString("three")

	// Recorded out of order, and in repositories and upstreams whose keys
	// share prefixes with each other.
	recordTag(t, ix, hub, "a", "v2", d2, t0)
	recordTag(t, ix, hub, "a", "latest", d1, t0)
	recordTag(t, ix, hub, "a", "v1", d1, t0)
	recordTag(t, ix, hub, "a", "1.0-alpine", d3, t0)
	recordTag(t, ix, hub, "ab", "ab-only", d3, t0)
	recordTag(t, ix, hub, "a/b", "nested-only", d3, t0)
	recordTag(t, ix, hub, "library/a", "library-only", d3, t0)
	recordTag(t, ix, ghcr, "a", "ghcr-only", d3, t0)

	checkTags(t, ix, hub, "a", "1.0-alpine", "latest", "v1", "v2")
	checkTags(t, ix, hub, "ab", "ab-only")
	checkTags(t, ix, hub, "a/b", "nested-only")
	checkTags(t, ix, hub, "library/a", "library-only")
	checkTags(t, ix, ghcr, "a", "ghcr-only")
	checkTags(t, ix, hub, "nothing")
	checkTags(t, ix, hub, "")
	checkTags(t, ix, "registry-1.docker", "io/a")

	checkTag(t, ix, hub, "a", "latest", storage.TagRecord{Digest: d1, FetchedAt: t0, CheckedAt: t0})
	checkTag(t, ix, hub, "a", "v2", storage.TagRecord{Digest: d2, FetchedAt: t0, CheckedAt: t0})
	checkTag(t, ix, ghcr, "a", "ghcr-only", storage.TagRecord{Digest: d3, FetchedAt: t0, CheckedAt: t0})
	checkNoTag(t, ix, hub, "a", "ghcr-only")
	checkNoTag(t, ix, ghcr, "a", "latest")
	checkNoTag(t, ix, hub, "ab", "latest")
	checkNoTag(t, ix, hub, "a", "ab-only")
	checkNoTag(t, ix, hub, "a", "missing")

	// TouchTag moves CheckedAt only.
	t1 := t0.Add(time.Hour)
	must(t, ix.TouchTag(hub, "a", "latest", t1))
	checkTag(t, ix, hub, "a", "latest", storage.TagRecord{Digest: d1, FetchedAt: t0, CheckedAt: t1})
	checkTag(t, ix, hub, "a", "v1", storage.TagRecord{Digest: d1, FetchedAt: t0, CheckedAt: t0})
	checkTag(t, ix, ghcr, "a", "ghcr-only", storage.TagRecord{Digest: d3, FetchedAt: t0, CheckedAt: t0})
	// TouchTag of an unknown tag creates nothing.
	must(t, ix.TouchTag(hub, "a", "missing", t1))
	checkNoTag(t, ix, hub, "a", "missing")
	checkTags(t, ix, hub, "a", "1.0-alpine", "latest", "v1", "v2")

	// Recording a tag again repoints it.
	t2 := t1.Add(time.Hour)
	recordTag(t, ix, hub, "a", "latest", d2, t2)
	checkTag(t, ix, hub, "a", "latest", storage.TagRecord{Digest: d2, FetchedAt: t2, CheckedAt: t2})

	// DeleteTag forgets one tag of one repository of one upstream.
	must(t, ix.DeleteTag(hub, "a", "latest"))
	checkNoTag(t, ix, hub, "a", "latest")
	checkTags(t, ix, hub, "a", "1.0-alpine", "v1", "v2")
	checkTags(t, ix, hub, "ab", "ab-only")
	checkTags(t, ix, ghcr, "a", "ghcr-only")
	must(t, ix.DeleteTag(hub, "a", "latest"))
	must(t, ix.DeleteTag(hub, "never", "recorded"))
	// The manifest the tag pointed to is still known.
	if _, ok, err := ix.Manifest(d2); err != nil || !ok {
		t.Fatalf("Manifest(%s) after DeleteTag = %v, %v", d2, ok, err)
	}
}

func TestIndexManifests(t *testing.T) {
	ix := newIndex(t)
	d := digest.FromString("manifest")
	if _, ok, err := ix.Manifest(d); err != nil || ok {
		t.Fatalf("Manifest of unknown digest = %v, %v", ok, err)
	}
	rec := storage.ManifestRecord{MediaType: "application/vnd.oci.image.index.v1+json", Size: 1234, FetchedAt: t0}
	must(t, ix.RecordManifest(storage.ManifestEntry{Upstream: hub, Repo: "library/alpine", Digest: d, Record: rec}))
	got, ok, err := ix.Manifest(d)
	if err != nil || !ok {
		t.Fatalf("Manifest = %v, %v", ok, err)
	}
	if got.MediaType != rec.MediaType || got.Size != rec.Size || !got.FetchedAt.Equal(rec.FetchedAt) {
		t.Fatalf("Manifest = %+v, want %+v", got, rec)
	}
	// Without a tag, no tag is recorded; without a mirror state, none.
	checkTags(t, ix, hub, "library/alpine")
	if _, ok, err := ix.Fill(hub, "library/alpine", d); err != nil || ok {
		t.Fatalf("Mirror of a manifest recorded without one = %v, %v", ok, err)
	}
	// The manifest is linked to its repository, and only to it.
	checkLinked(t, ix, hub, "library/alpine", d, true)
	checkLinked(t, ix, hub, "library/alpin", d, false)
	checkLinked(t, ix, hub, "library/alpine2", d, false)
	checkLinked(t, ix, ghcr, "library/alpine", d, false)
	// Recording it for another repository links it there too.
	must(t, ix.RecordManifest(storage.ManifestEntry{Upstream: ghcr, Repo: "x/alpine", Digest: d, Record: rec}))
	checkLinked(t, ix, ghcr, "x/alpine", d, true)
	checkLinked(t, ix, hub, "library/alpine", d, true)
	// Blobs are not manifests.
	must(t, ix.RecordBlob(hub, "library/alpine", digest.FromString("blob"), 1, t0))
	if _, ok, err := ix.Manifest(digest.FromString("blob")); err != nil || ok {
		t.Fatalf("Manifest of a blob = %v, %v", ok, err)
	}
}

func checkLinked(t *testing.T, ix *storage.Index, host, repo string, d digest.Digest, want bool) {
	t.Helper()
	got, err := ix.Linked(host, repo, d)
	if err != nil {
		t.Fatalf("Linked(%s, %s, %s): %v", host, repo, d, err)
	}
	if got != want {
		t.Fatalf("Linked(%s, %s, %s) = %v, want %v", host, repo, d.Encoded()[:12], got, want)
	}
}

func TestIndexLinks(t *testing.T) {
	ix := newIndex(t)
	d, other := digest.FromString("content"), digest.FromString("other")
	checkLinked(t, ix, hub, "a", d, false)
	must(t, ix.Link(hub, "a", d))
	checkLinked(t, ix, hub, "a", d, true)
	checkLinked(t, ix, hub, "ab", d, false)
	checkLinked(t, ix, hub, "", d, false)
	checkLinked(t, ix, hub, "library/a", d, false)
	checkLinked(t, ix, ghcr, "a", d, false)
	checkLinked(t, ix, hub, "a", other, false)
	// Linking twice is harmless.
	must(t, ix.Link(hub, "a", d))
	checkLinked(t, ix, hub, "a", d, true)
	// Links are kept per host and repository.
	must(t, ix.Link(ghcr, "ab", other))
	checkLinked(t, ix, ghcr, "ab", other, true)
	checkLinked(t, ix, hub, "ab", other, false)
	checkLinked(t, ix, ghcr, "a", other, false)
	checkLinked(t, ix, ghcr, "ab", d, false)
}

// Link and RecordBlob are batched: concurrent calls must all land.
func TestIndexConcurrentLinks(t *testing.T) {
	ix := newIndex(t)
	const n = 32
	var wg sync.WaitGroup
	errs := make([]error, 2*n)
	for i := range n {
		d := digest.FromString(strings.Repeat("x", i))
		wg.Go(func() { errs[i] = ix.Link(hub, "a", d) })
		wg.Go(func() { errs[n+i] = ix.RecordBlob(ghcr, "b", d, int64(i), t0) })
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("call %d: %v", i, err)
		}
	}
	for i := range n {
		d := digest.FromString(strings.Repeat("x", i))
		checkLinked(t, ix, hub, "a", d, true)
		checkLinked(t, ix, ghcr, "b", d, true)
		checkLinked(t, ix, hub, "b", d, false)
		if rec, ok, err := ix.Blob(d); err != nil || !ok || rec.Size != int64(i) {
			t.Fatalf("Blob #%d = %+v, %v, %v", i, rec, ok, err)
		}
	}
}

func TestIndexBlobs(t *testing.T) {
	ix := newIndex(t)
	d := digest.FromString("layer")
	if _, ok, err := ix.Blob(d); err != nil || ok {
		t.Fatalf("Blob of unknown digest = %v, %v", ok, err)
	}
	must(t, ix.RecordBlob(hub, "library/alpine", d, 3<<20, t0))
	rec, ok, err := ix.Blob(d)
	if err != nil || !ok {
		t.Fatalf("Blob = %v, %v", ok, err)
	}
	if rec.Size != 3<<20 || !rec.FetchedAt.Equal(t0) || !rec.LastAccess.Equal(t0) {
		t.Fatalf("Blob = %+v, want size %d fetched and accessed at %v", rec, 3<<20, t0)
	}
	checkLinked(t, ix, hub, "library/alpine", d, true)
	checkLinked(t, ix, hub, "library/busybox", d, false)
	checkLinked(t, ix, ghcr, "library/alpine", d, false)
	// Manifests are not blobs.
	recordTag(t, ix, hub, "library/alpine", "latest", digest.FromString("m"), t0)
	if _, ok, err := ix.Blob(digest.FromString("m")); err != nil || ok {
		t.Fatalf("Blob of a manifest = %v, %v", ok, err)
	}
}

func TestIndexMirrors(t *testing.T) {
	ix := newIndex(t)
	partial, complete, plain := digest.FromString("partial"), digest.FromString("complete"), digest.FromString("plain")

	if m, err := ix.IncompleteFills(); err != nil || len(m) != 0 {
		t.Fatalf("IncompleteFills of an empty index = %v, %v", m, err)
	}
	entry := func(d digest.Digest, state string) storage.ManifestEntry {
		return storage.ManifestEntry{
			Upstream: hub, Repo: "library/alpine", Digest: d, Tag: "t-" + d.Encoded()[:6],
			Record: storage.ManifestRecord{MediaType: "application/vnd.oci.image.index.v1+json", Size: 1, FetchedAt: t0},
			Fill:   &storage.FillRecord{Upstream: hub, Repo: "library/alpine", State: state, UpdatedAt: t0},
		}
	}
	must(t, ix.RecordManifest(entry(partial, storage.FillPartial)))
	must(t, ix.RecordManifest(entry(complete, storage.FillPartial)))
	must(t, ix.RecordManifest(storage.ManifestEntry{Upstream: hub, Repo: "library/alpine", Digest: plain}))

	rec, ok, err := ix.Fill(hub, "library/alpine", partial)
	if err != nil || !ok || rec.State != storage.FillPartial || rec.Upstream != hub || rec.Repo != "library/alpine" || !rec.UpdatedAt.Equal(t0) {
		t.Fatalf("Mirror(partial) = %+v, %v, %v", rec, ok, err)
	}
	if _, ok, err := ix.Fill(hub, "library/alpine", plain); err != nil || ok {
		t.Fatalf("Mirror of a manifest recorded without one = %v, %v", ok, err)
	}

	t1 := t0.Add(time.Minute)
	done := storage.FillRecord{Upstream: hub, Repo: "library/alpine", State: storage.FillComplete,
		Platforms: []string{"linux/amd64", "linux/arm64/v8"}, UpdatedAt: t1}
	must(t, ix.PutFill(complete, done))
	rec, ok, err = ix.Fill(hub, "library/alpine", complete)
	if err != nil || !ok || rec.State != storage.FillComplete || !slices.Equal(rec.Platforms, done.Platforms) || !rec.UpdatedAt.Equal(t1) {
		t.Fatalf("Mirror(complete) = %+v, %v, %v; want %+v", rec, ok, err, done)
	}

	// Recording the manifest again (e.g. pulled by another tag) must not
	// reset a mirror state that is already recorded.
	must(t, ix.RecordManifest(entry(complete, storage.FillPartial)))
	if rec, _, _ := ix.Fill(hub, "library/alpine", complete); rec.State != storage.FillComplete || !slices.Equal(rec.Platforms, done.Platforms) {
		t.Fatalf("RecordManifest overwrote a complete mirror state: %+v", rec)
	}
	// Not even with another partial state.
	e := entry(partial, storage.FillPartial)
	e.Fill.Platforms = []string{"changed"}
	must(t, ix.RecordManifest(e))
	if rec, _, _ := ix.Fill(hub, "library/alpine", partial); rec.Platforms != nil {
		t.Fatalf("RecordManifest overwrote a partial mirror state: %+v", rec)
	}
	// The state is per repository: the same digest elsewhere is separate.
	if _, ok, _ := ix.Fill(ghcr, "library/alpine", partial); ok {
		t.Fatal("a mirror state leaked into another upstream")
	}

	incomplete, err := ix.IncompleteFills()
	if err != nil {
		t.Fatal(err)
	}
	if len(incomplete) != 1 || incomplete[0].Digest != partial || incomplete[0].State != storage.FillPartial || incomplete[0].Repo != "library/alpine" {
		t.Fatalf("IncompleteFills = %+v, want only %s", incomplete, partial)
	}

	// PutFill overwrites: a finished partial mirror leaves the list.
	must(t, ix.PutFill(partial, storage.FillRecord{Upstream: hub, Repo: "library/alpine", State: storage.FillComplete, UpdatedAt: t1}))
	if m, err := ix.IncompleteFills(); err != nil || len(m) != 0 {
		t.Fatalf("IncompleteFills after completing all = %+v, %v", m, err)
	}
	// And back: a restarted mirror is listed again.
	must(t, ix.PutFill(complete, storage.FillRecord{Upstream: ghcr, Repo: "x", State: storage.FillPartial, UpdatedAt: t1}))
	if m, err := ix.IncompleteFills(); err != nil || len(m) != 1 || m[0].Digest != complete || m[0].Upstream != ghcr {
		t.Fatalf("IncompleteFills = %+v, %v; want %s from %s", m, err, complete, ghcr)
	}
}

func checkLastAccess(t *testing.T, ix *storage.Index, d digest.Digest, want time.Time) {
	t.Helper()
	rec, ok, err := ix.Blob(d)
	if err != nil || !ok {
		t.Fatalf("Blob(%s) = %v, %v", d, ok, err)
	}
	if !rec.LastAccess.Equal(want) {
		t.Fatalf("LastAccess of %s = %v, want %v", d.Encoded()[:12], rec.LastAccess, want)
	}
	if !rec.FetchedAt.Equal(t0) {
		t.Fatalf("FetchedAt of %s changed to %v", d.Encoded()[:12], rec.FetchedAt)
	}
}

func TestIndexTouchFlush(t *testing.T) {
	ix := newIndex(t)
	a, b := digest.FromString("a"), digest.FromString("b")
	must(t, ix.RecordBlob(hub, "r", a, 1, t0))
	must(t, ix.RecordBlob(hub, "r", b, 1, t0))

	must(t, ix.Flush()) // nothing to flush
	t1, t2 := t0.Add(time.Hour), t0.Add(2*time.Hour)
	ix.Touch(a, t1)
	ix.Touch(a, t2) // the last touch wins
	// Touching manifests or unknown content is harmless and creates no
	// blob record.
	m := digest.FromString("manifest")
	recordTag(t, ix, hub, "r", "latest", m, t0)
	ix.Touch(m, t1)
	ix.Touch(digest.FromString("unknown"), t1)

	checkLastAccess(t, ix, a, t0) // not written before Flush
	must(t, ix.Flush())
	checkLastAccess(t, ix, a, t2)
	checkLastAccess(t, ix, b, t0)
	for _, d := range []digest.Digest{m, digest.FromString("unknown")} {
		if _, ok, err := ix.Blob(d); err != nil || ok {
			t.Fatalf("Blob(%s) after Touch = %v, %v; want none", d, ok, err)
		}
	}
	if _, ok, _ := ix.Manifest(m); !ok {
		t.Fatal("Flush lost a manifest")
	}
	// A time older than the one recorded (a flush that failed, whose
	// times were put back, ending after a later one) never moves it back.
	ix.Touch(a, t1)
	must(t, ix.Flush())
	checkLastAccess(t, ix, a, t2)
	// Flushed times are not written again.
	must(t, ix.RecordBlob(hub, "r", a, 1, t0))
	must(t, ix.Flush())
	checkLastAccess(t, ix, a, t0)
}

func TestIndexConcurrentTouch(t *testing.T) {
	ix := newIndex(t)
	const n = 32
	ds := make([]digest.Digest, n)
	for i := range ds {
		ds[i] = digest.FromString(strings.Repeat("b", i+1))
		must(t, ix.RecordBlob(hub, "r", ds[i], 1, t0))
	}
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i, d := range ds {
		wg.Go(func() {
			ix.Touch(d, t0.Add(time.Duration(i+1)*time.Second))
			errs[i] = ix.Flush()
		})
	}
	wg.Wait()
	must(t, ix.Flush())
	for i, d := range ds {
		if errs[i] != nil {
			t.Fatalf("Flush #%d: %v", i, errs[i])
		}
		checkLastAccess(t, ix, d, t0.Add(time.Duration(i+1)*time.Second))
	}
}

func TestIndexPersists(t *testing.T) {
	path := filepath.Join(t.TempDir(), "index.db")
	ix := openIndex(t, path)
	must(t, ix.Ping())
	m, b := digest.FromString("manifest"), digest.FromString("blob")
	must(t, ix.RecordManifest(storage.ManifestEntry{
		Upstream: hub, Repo: "library/alpine", Digest: m, Tag: "3.20",
		Record: storage.ManifestRecord{MediaType: "application/vnd.oci.image.index.v1+json", Size: 42, FetchedAt: t0},
		Fill:   &storage.FillRecord{Upstream: hub, Repo: "library/alpine", State: storage.FillPartial, UpdatedAt: t0},
	}))
	must(t, ix.RecordBlob(hub, "library/alpine", b, 7, t0))
	must(t, ix.Link(ghcr, "x/y", b))
	t1 := t0.Add(time.Hour)
	ix.Touch(b, t1) // written by Close
	must(t, ix.Close())

	ix = openIndex(t, path)
	defer ix.Close()
	must(t, ix.Ping())
	checkTag(t, ix, hub, "library/alpine", "3.20", storage.TagRecord{Digest: m, FetchedAt: t0, CheckedAt: t0})
	checkTags(t, ix, hub, "library/alpine", "3.20")
	if rec, ok, err := ix.Manifest(m); err != nil || !ok || rec.Size != 42 {
		t.Fatalf("Manifest after reopen = %+v, %v, %v", rec, ok, err)
	}
	if rec, ok, err := ix.Blob(b); err != nil || !ok || rec.Size != 7 || !rec.LastAccess.Equal(t1) {
		t.Fatalf("Blob after reopen = %+v, %v, %v; want size 7 accessed at %v", rec, ok, err, t1)
	}
	checkLinked(t, ix, hub, "library/alpine", m, true)
	checkLinked(t, ix, hub, "library/alpine", b, true)
	checkLinked(t, ix, ghcr, "x/y", b, true)
	if inc, err := ix.IncompleteFills(); err != nil || len(inc) != 1 || inc[0].Digest != m || inc[0].State != storage.FillPartial {
		t.Fatalf("IncompleteFills after reopen = %+v, %v", inc, err)
	}
}

func TestOpenIndexLocked(t *testing.T) {
	path := filepath.Join(t.TempDir(), "index.db")
	ix := openIndex(t, path)
	recordTag(t, ix, hub, "a", "latest", digest.FromString("m"), t0)

	// bbolt's lock is per open file, so a second open in this process
	// conflicts just like another process would.
	second, err := storage.OpenIndex(path)
	if err == nil {
		second.Close()
		ix.Close()
		t.Fatal("second OpenIndex of an open index succeeded")
	}
	if !strings.Contains(err.Error(), "locked") || !strings.Contains(err.Error(), path) {
		t.Fatalf("second OpenIndex error = %q; want it to say the index at %s is locked", err, path)
	}
	// The first index is unharmed, and once it is closed the file opens.
	checkTags(t, ix, hub, "a", "latest")
	must(t, ix.Close())
	ix = openIndex(t, path)
	checkTags(t, ix, hub, "a", "latest")
	must(t, ix.Close())
}

func TestOpenIndexErrors(t *testing.T) {
	dir := t.TempDir()
	missing := filepath.Join(dir, "no", "such", "dir", "index.db")
	if ix, err := storage.OpenIndex(missing); err == nil {
		ix.Close()
		t.Fatal("OpenIndex in a missing directory succeeded")
	} else if !strings.Contains(err.Error(), missing) {
		t.Fatalf("OpenIndex error %q does not name %s", err, missing)
	}

	garbage := filepath.Join(dir, "garbage.db")
	must(t, os.WriteFile(garbage, []byte(strings.Repeat("not a bbolt database\n", 1000)), 0o600))
	if ix, err := storage.OpenIndex(garbage); err == nil {
		ix.Close()
		t.Fatal("OpenIndex of a file that is not a database succeeded")
	} else if !strings.Contains(err.Error(), garbage) {
		t.Fatalf("OpenIndex error %q does not name %s", err, garbage)
	}
}

// An index whose pages past its header were damaged (a disk's bad
// sectors, a filesystem's repair zeroing blocks) is refused with an error
// naming it and what to do, as a cut-short one is: bbolt's open panicked
// reading its freelist, and the server died at start with a stack trace.
func TestOpenIndexDamaged(t *testing.T) {
	path := filepath.Join(t.TempDir(), "index.db")
	ix := openIndex(t, path)
	for i := range 50 {
		recordTag(t, ix, hub, "a", fmt.Sprint("t", i), digest.FromString(fmt.Sprint(i)), t0)
	}
	must(t, ix.Close())
	b, err := os.ReadFile(path)
	must(t, err)
	const pageSize = 4096
	for i := 2 * pageSize; i < len(b); i++ { // every page but the two meta pages
		b[i] = 0xA5
	}
	must(t, os.WriteFile(path, b, 0o600))
	var panicked any
	func() {
		defer func() { panicked = recover() }()
		if ix, err = storage.OpenIndex(path); err == nil {
			ix.Close()
			t.Error("OpenIndex of a damaged index succeeded")
		} else if !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), "damaged") || !strings.Contains(err.Error(), "move it aside") {
			t.Errorf("OpenIndex error %q; want it to say %s is damaged, and what to do", err, path)
		}
	}()
	if panicked != nil {
		t.Fatalf("OpenIndex of a damaged index panicked: %v", panicked)
	}
}

// A page of the tags damaged while the server runs (bad sectors under
// it) made the read of the tags for the memo after a pass panic in bbolt,
// in the server's background: the process died with a stack trace. It is
// now an ErrDamaged naming the index and what to do.
func TestRememberTagsDamaged(t *testing.T) {
	ix := newIndex(t)
	for i := range 50 {
		recordTag(t, ix, hub, "a", fmt.Sprint("t", i), digest.FromString(fmt.Sprint(i)), t0)
	}
	pg, ok := fixture.BucketPages(t, ix.Path())["tags"]
	if !ok {
		t.Fatal("the tags have no page of their own")
	}
	fixture.DamagePage(t, ix.Path(), pg)
	if err := ix.RememberTags(t.Context()); !errors.Is(err, storage.ErrDamaged) || !strings.Contains(err.Error(), ix.Path()) || !strings.Contains(err.Error(), "move it aside") {
		t.Fatalf("RememberTags with the tags' page damaged = %v; want it to say %s is damaged, and what to do", err, ix.Path())
	}
}

// A panic of a reader's own code, called by the index from inside a
// transaction (a bug in a pass's callback), is not taken for a damaged
// index: RecoverDamaged found bbolt's frames under it, and gc, verify and
// ls said the index was damaged, telling the operator to move it aside
// (and so lose its pins and records), where the bug's stack was due.
func TestRecoverDamagedRepanicsOthers(t *testing.T) {
	ix := newIndex(t)
	recordTag(t, ix, hub, "a", "1", digest.FromString("1"), t0)
	var err error
	defer func() {
		if r := recover(); r != "a bug, not damage" {
			t.Fatalf("a reader's own panic under a read of the index: recovered %v, error %v; want it panicked again", r, err)
		}
	}()
	func() {
		defer ix.RecoverDamaged(&err)
		err = ix.ReadTagDigests(func(key, d []byte) { panic("a bug, not damage") })
	}()
}

// A write whose commit comes upon a damaged index (a bucket naming as its
// page one bbolt has freed: bad sectors) is refused as damaged, and lets
// go of the index's write lock: bbolt panicked inside the commit, past
// the rollback, and the index, recovered by RecoverDamaged, could not be
// closed (gc and verify said nothing, hanging in the Close after it).
func TestDamagedPageInCommitUnlocks(t *testing.T) {
	path := filepath.Join(t.TempDir(), "index.db")
	ix := openIndex(t, path)
	for i := range 30 {
		recordTag(t, ix, hub, "a", fmt.Sprint("t", i), digest.FromString(fmt.Sprint(i)), t0)
	}
	must(t, ix.Close())
	db, err := bolt.Open(path, 0o600, nil)
	must(t, err)
	var root, freed uint64
	err = db.View(func(tx *bolt.Tx) error {
		root = uint64(tx.Bucket([]byte("tags")).Root())
		for id := 2; ; id++ {
			info, err := tx.Page(id)
			if err != nil || info == nil {
				return err
			}
			if info.Type == "free" && freed == 0 {
				freed = uint64(id)
			}
		}
	})
	must(t, db.Close())
	must(t, err)
	b, err := os.ReadFile(path)
	must(t, err)
	// A freed page that held a leaf (an older version of one).
	ps := uint64(os.Getpagesize())
	for ; freed*ps < uint64(len(b)); freed++ {
		h := b[freed*ps:]
		if binary.LittleEndian.Uint64(h) == freed && binary.LittleEndian.Uint16(h[8:]) == 0x02 {
			break
		}
	}
	if root == 0 || freed*ps >= uint64(len(b)) {
		t.Fatalf("tags bucket's page %d, a freed leaf %d: nothing to damage", root, freed)
	}
	// The tags bucket names the freed page as its own: a write to it
	// frees it again at the commit.
	old := append([]byte("tags"), binary.LittleEndian.AppendUint64(nil, root)...)
	n := strings.Count(string(b), string(old))
	b = []byte(strings.ReplaceAll(string(b), string(old), "tags"+string(binary.LittleEndian.AppendUint64(nil, freed))))
	if n == 0 {
		t.Fatal("the tags bucket's header not found")
	}
	must(t, os.WriteFile(path, b, 0o600))

	ix = openIndex(t, path)
	func() {
		defer ix.RecoverDamaged(&err)
		recordTag(t, ix, hub, "a", "new", digest.FromString("new"), t0)
	}()
	if err == nil || !strings.Contains(err.Error(), "damaged") {
		t.Errorf("a write committing to a damaged index: %v, want it said damaged", err)
	}
	must(t, ix.Close()) // hangs on a write lock held
}

// A fill record that cannot be read (a flipped bit in it, its pages
// sound) stopped the start's read of the fill records: no interrupted
// fill was resumed, at this start or any later one, until the index was
// repaired offline. It is passed over, and the others are resumed.
func TestScanAtStartPassesOverAnUnreadableFillRecord(t *testing.T) {
	path := filepath.Join(t.TempDir(), "index.db")
	ix := openIndex(t, path)
	a, b := digest.FromString("a"), digest.FromString("b")
	for _, d := range []digest.Digest{a, b} {
		must(t, ix.RecordManifest(storage.ManifestEntry{
			Upstream: hub, Repo: "library/x", Digest: d,
			Record: storage.ManifestRecord{MediaType: "application/vnd.oci.image.index.v1+json", Size: 1, FetchedAt: t0},
			Fill:   &storage.FillRecord{Upstream: hub, Repo: "library/x", State: storage.FillPartial, UpdatedAt: t0},
		}))
	}
	must(t, ix.Close())
	fixture.DamageRecord(t, path, "mirrors", hub+"/library/x@"+b.String())

	ix = openIndex(t, path)
	defer ix.Close()
	inc, err := ix.ScanAtStart(t.Context())
	if err != nil || len(inc) != 1 || inc[0].Digest != a || inc[0].Repo != "library/x" {
		t.Fatalf("ScanAtStart with b's fill record unreadable = %+v, %v; want a's fill to resume", inc, err)
	}
}

// An index whose first meta page is damaged (a block zeroed by a
// filesystem's repair, bad sectors) while its second is sound is one
// bbolt opens, at the commit the second records: the start refused it
// as "not a bbolt file", and the only remedy it gave, moving it aside,
// lost every tag and record it held.
func TestOpenIndexFirstMetaPageDamaged(t *testing.T) {
	path := filepath.Join(t.TempDir(), "index.db")
	ix := openIndex(t, path)
	recordTag(t, ix, hub, "a", "v1", digest.FromString("a"), t0)
	recordTag(t, ix, hub, "a", "v2", digest.FromString("b"), t0)
	recordTag(t, ix, hub, "a", "v3", digest.FromString("c"), t0)
	must(t, ix.Close())
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	must(t, err)
	_, err = f.WriteAt(make([]byte, 4096), 0)
	must(t, errors.Join(err, f.Close()))

	ix, err = storage.OpenIndex(path)
	if err != nil {
		t.Fatalf("OpenIndex with its first meta page zeroed: %v; want it opened at the second's commit", err)
	}
	defer ix.Close()
	// The second meta page holds the last commit or the one before it.
	checkTag(t, ix, hub, "a", "v1", storage.TagRecord{Digest: digest.FromString("a"), FetchedAt: t0, CheckedAt: t0})
}
