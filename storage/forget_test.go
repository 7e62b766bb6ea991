package storage_test

import (
	"errors"
	"testing"
	"time"

	"github.com/distribution/distribution/v3/registry/storage/driver/inmemory"
	"github.com/opencontainers/go-digest"

	"github.com/docker-mirror/docker-mirror/storage"
)

// ForgetRooted trusts the roots it is given only if nothing was written
// to the index since they were read: a tag recorded in between makes it
// refuse (strict) or read the roots itself (fallback), never forget
// content the new tag names. Given current roots, it removes a rooted
// digest's tags as Forget does.
func TestForgetRooted(t *testing.T) {
	ix := newIndex(t)
	const repo = "library/alpine"
	old, fresh := digest.FromString("old"), digest.FromString("fresh")
	must(t, ix.RecordBlob(hub, repo, old, 10, t0))
	must(t, ix.RecordBlob(hub, repo, fresh, 10, t0))
	roots, err := ix.Roots()
	must(t, err)
	if v, err := ix.Version(); err != nil || v != roots.Version {
		t.Fatalf("Version = %d, %v; want the roots' %d", v, err, roots.Version)
	}
	// A tag now names fresh: the roots read before are stale.
	must(t, ix.RecordManifest(storage.ManifestEntry{
		Upstream: hub, Repo: repo, Digest: fresh, Tag: "new",
		Record: storage.ManifestRecord{MediaType: "application/vnd.oci.image.manifest.v1+json", Size: 1, FetchedAt: t0},
	}))
	if v, _ := ix.Version(); v == roots.Version {
		t.Fatal("a write left the version as it was")
	}
	keepRooted := func(_ digest.Digest, e storage.ContentEntry) bool { return e.Rooted }
	if _, err := ix.ForgetRooted([]digest.Digest{fresh}, roots, false, keepRooted); !errors.Is(err, storage.ErrStaleRoots) {
		t.Fatalf("ForgetRooted on stale roots = %v, want ErrStaleRoots", err)
	}
	res, err := ix.ForgetRooted([]digest.Digest{fresh, old}, roots, true, keepRooted)
	must(t, err)
	if gone := res.Forgotten; len(gone) != 1 || gone[0].Digest != old || res.Done != 2 {
		t.Fatalf("ForgetRooted (fallback) = %+v, want only the unrooted digest, both considered", res)
	}
	if v, _ := ix.Version(); v != res.Version {
		t.Fatalf("Version after ForgetRooted = %d, want the %d it made", v, res.Version)
	}

	roots, err = ix.Roots()
	must(t, err)
	if !roots.Has(fresh) || roots.Has(old) {
		t.Fatalf("roots (%d) lack the tagged digest, or have the forgotten one", roots.Set.Len())
	}
	res, err = ix.ForgetRooted([]digest.Digest{fresh}, roots, false, nil)
	must(t, err)
	if gone := res.Forgotten; len(gone) != 1 || len(gone[0].Tags) != 1 {
		t.Fatalf("ForgetRooted of a rooted digest = %+v, want its tag removed", res)
	}
	if _, ok, _ := ix.Tag(hub, repo, "new"); ok {
		t.Error("the tag of a forgotten manifest survived")
	}
}

// A tag the upstream says is gone (DeleteTagIf, the digest this replica
// read) that another replica has meanwhile recorded moved, the tag pushed
// again, stays in the records the replicas share: deleted only while it
// names that digest, as an eviction's (the other's record adopted here).
// Before, the bucket's record was deleted whatever it named, the tag lost
// for every replica (its image then unrooted for their collections).
func TestSharedDeleteTagIfLeavesATagAnotherReplicaMoved(t *testing.T) {
	r := storage.NewDriverRecords(inmemory.New())
	a, b := openShared(t, r), openShared(t, r)
	gone, moved := digest.FromString("gone"), digest.FromString("moved")
	record := func(ix *storage.Index, d digest.Digest) {
		t.Helper()
		must(t, ix.RecordManifest(storage.ManifestEntry{Upstream: hub, Repo: "library/x", Digest: d, Tag: "v1",
			Record: storage.ManifestRecord{MediaType: "application/vnd.oci.image.manifest.v1+json", Size: 10, FetchedAt: t0}}))
	}
	record(a, gone)
	record(b, moved)
	if deleted, err := a.DeleteTagIf(hub, "library/x", "v1", gone, t0); err != nil || !deleted {
		t.Fatalf("DeleteTagIf = %v, %v; want the tag a read deleted", deleted, err)
	}
	for name, ix := range map[string]*storage.Index{"a": a, "a new replica": openShared(t, r)} {
		if rec, ok, err := ix.Tag(hub, "library/x", "v1"); err != nil || !ok || rec.Digest != moved {
			t.Errorf("%s reads the tag %+v, %v, %v; want it naming %s, where it moved", name, rec, ok, err, moved)
		}
	}
}

// A tag the upstream says is gone that another replica recorded moved
// before the upstream was asked (its record checked earlier: the tag was
// deleted upstream since) is gone from the bucket too, not adopted:
// before, the replica that answered the upstream's 404 served the other's
// record from its next pull on (the tag back), as did every replica
// reading the bucket, until that record's tag TTL ran out.
func TestSharedDeleteTagIfDeletesAMovedTagCheckedBeforeTheUpstreamWasAsked(t *testing.T) {
	r := storage.NewDriverRecords(inmemory.New())
	a, b := openShared(t, r), openShared(t, r)
	gone, moved := digest.FromString("gone"), digest.FromString("moved")
	record := func(ix *storage.Index, d digest.Digest, at time.Time) {
		t.Helper()
		must(t, ix.RecordManifest(storage.ManifestEntry{Upstream: hub, Repo: "library/x", Digest: d, Tag: "v1",
			Record: storage.ManifestRecord{MediaType: "application/vnd.oci.image.manifest.v1+json", Size: 10, FetchedAt: at}}))
	}
	record(a, gone, t0)
	record(b, moved, t0.Add(time.Minute))
	if deleted, err := a.DeleteTagIf(hub, "library/x", "v1", gone, t0.Add(2*time.Minute)); err != nil || !deleted {
		t.Fatalf("DeleteTagIf = %v, %v; want the tag a read deleted", deleted, err)
	}
	for name, ix := range map[string]*storage.Index{"a": a, "a new replica": openShared(t, r)} {
		if rec, ok, err := ix.Tag(hub, "library/x", "v1"); err != nil || ok {
			t.Errorf("%s reads the tag %+v, %v, %v; want it gone, as the upstream said after it moved", name, rec, ok, err)
		}
	}
}
