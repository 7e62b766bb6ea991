package storage_test

import (
	"bytes"
	"slices"
	"testing"
	"time"

	"github.com/distribution/distribution/v3/registry/storage/driver/inmemory"
	"github.com/opencontainers/go-digest"

	"github.com/docker-mirror/docker-mirror/storage"
)

// Referrers answers are kept per repository, subject and filter, byte for
// byte, survive a reopen, and are forgotten per subject, every filter.
func TestReferrersRecords(t *testing.T) {
	path := t.TempDir() + "/index.db"
	ix := openIndex(t, path)
	sub, other := digest.FromString("subject"), digest.FromString("other")
	at := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	body := []byte(" {\"manifests\": []}\n")
	must(t, ix.PutReferrers("docker.io", "library/a", sub, "", storage.ReferrersRecord{Body: body, FetchedAt: at, CheckedAt: at}))
	must(t, ix.PutReferrers("docker.io", "library/a", sub, "x/y", storage.ReferrersRecord{Body: []byte("{}"), Filtered: true, FetchedAt: at, CheckedAt: at}))
	must(t, ix.PutReferrers("docker.io", "library/a", other, "", storage.ReferrersRecord{Body: []byte("{}"), FetchedAt: at, CheckedAt: at}))
	must(t, ix.TouchReferrers("docker.io", "library/a", sub, "", at.Add(time.Hour)))
	must(t, ix.Close())

	ix = openIndex(t, path)
	rec, ok, err := ix.Referrers("docker.io", "library/a", sub, "")
	if err != nil || !ok || !bytes.Equal(rec.Body, body) || !rec.CheckedAt.Equal(at.Add(time.Hour)) || !rec.FetchedAt.Equal(at) || rec.Filtered {
		t.Fatalf("Referrers: %+v %v %v", rec, ok, err)
	}
	if _, ok, _ := ix.Referrers("docker.io", "library/b", sub, ""); ok {
		t.Fatal("another repository's referrers")
	}
	if rec, ok, _ := ix.Referrers("docker.io", "library/a", sub, "x/y"); !ok || !rec.Filtered {
		t.Fatalf("filtered record %+v %v", rec, ok)
	}
	must(t, ix.DeleteReferrers("docker.io", "library/a", sub, time.Now()))
	for _, f := range []string{"", "x/y"} {
		if _, ok, _ := ix.Referrers("docker.io", "library/a", sub, f); ok {
			t.Errorf("filter %q kept after DeleteReferrers", f)
		}
	}
	if _, ok, _ := ix.Referrers("docker.io", "library/a", other, ""); !ok {
		t.Error("another subject's record went too")
	}
}

// Repositories lists each upstream repository with content once.
func TestRepositories(t *testing.T) {
	ix := newIndex(t)
	now := time.Now()
	for _, l := range []struct{ host, repo, content string }{
		{"docker.io", "library/a", "1"}, {"docker.io", "library/a", "2"},
		{"docker.io", "library/a-b", "3"}, {"docker.io", "library/a/b", "4"},
		{"ghcr.io", "o/app", "5"}, {"ghcr.io", "o/app", "1"},
	} {
		must(t, ix.RecordBlob(l.host, l.repo, digest.FromString(l.content), 1, now))
	}
	got, err := ix.Repositories()
	if err != nil {
		t.Fatal(err)
	}
	want := []storage.Repository{{"docker.io", "library/a"}, {"docker.io", "library/a-b"}, {"docker.io", "library/a/b"}, {"ghcr.io", "o/app"}}
	slices.SortFunc(got, func(a, b storage.Repository) int {
		return bytes.Compare([]byte(a.Upstream+"/"+a.Repo), []byte(b.Upstream+"/"+b.Repo))
	})
	if !slices.Equal(got, want) {
		t.Fatalf("Repositories %v, want %v", got, want)
	}
}

// Forgetting a digest forgets its referrers lists in the repositories it
// was linked to.
func TestForgetDropsReferrers(t *testing.T) {
	ix := newIndex(t)
	now := time.Now()
	sub, kept := digest.FromString("subject"), digest.FromString("kept")
	for _, d := range []digest.Digest{sub, kept} {
		must(t, ix.RecordManifest(storage.ManifestEntry{Upstream: "docker.io", Repo: "library/a", Digest: d,
			Record: storage.ManifestRecord{MediaType: "application/vnd.oci.image.manifest.v1+json", Size: 10, FetchedAt: now}}))
		for _, f := range []string{"", "x/y"} {
			must(t, ix.PutReferrers("docker.io", "library/a", d, f, storage.ReferrersRecord{Body: []byte("{}"), FetchedAt: now, CheckedAt: now}))
		}
	}
	if _, err := ix.Forget([]digest.Digest{sub}, nil); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"", "x/y"} {
		if _, ok, _ := ix.Referrers("docker.io", "library/a", sub, f); ok {
			t.Errorf("referrers (filter %q) of a forgotten digest kept", f)
		}
		if _, ok, _ := ix.Referrers("docker.io", "library/a", kept, f); !ok {
			t.Errorf("referrers (filter %q) of a kept digest forgotten", f)
		}
	}
}

// Absent artifact tags are kept per repository, subject and suffix,
// survive a reopen, are forgotten when a lookup finds the tag, and go
// with their subject.
func TestAbsentTags(t *testing.T) {
	path := t.TempDir() + "/index.db"
	ix := openIndex(t, path)
	sub, other := digest.FromString("subject"), digest.FromString("other")
	now := time.Now()
	must(t, ix.RecordBlob("docker.io", "library/a", sub, 1, now))
	must(t, ix.RecordBlob("docker.io", "library/a", other, 1, now))
	must(t, ix.SetTagsAbsent("docker.io", "library/a", sub, []string{"att", "sbom"}, []string{"sig"}, now))
	must(t, ix.SetTagsAbsent("docker.io", "library/a", other, []string{"att"}, nil, now))
	must(t, ix.Close())

	ix = openIndex(t, path)
	absent := func(repo string, d digest.Digest, suffix string) bool {
		t.Helper()
		ok, err := ix.TagAbsent("docker.io", repo, d, suffix)
		must(t, err)
		return ok
	}
	if !absent("library/a", sub, "att") || !absent("library/a", sub, "sbom") || absent("library/a", sub, "sig") || absent("library/b", sub, "att") {
		t.Fatal("absent tags not as recorded")
	}
	must(t, ix.SetTagsAbsent("docker.io", "library/a", sub, []string{"sbom"}, []string{"att"}, now))
	if absent("library/a", sub, "att") || !absent("library/a", sub, "sbom") {
		t.Error("a tag found is still absent, or one still absent was forgotten")
	}
	if _, err := ix.Forget([]digest.Digest{sub}, nil); err != nil {
		t.Fatal(err)
	}
	if absent("library/a", sub, "sbom") {
		t.Error("an absent tag kept after its subject was forgotten")
	}
	if !absent("library/a", other, "att") {
		t.Error("another subject's absent tag went too")
	}
}

// ForgetUnheldReferrers deletes, every filter alike, the referrers lists
// whose subject is not linked in their repository and that drop lets go
// (given the subject and when the list was fetched), and keeps the others:
// a subject held, a list drop keeps, and on shared records a subject
// another replica holds, which this one has not adopted.
func TestForgetUnheldReferrers(t *testing.T) {
	r := storage.NewDriverRecords(inmemory.New())
	a, b := openShared(t, r), openShared(t, r)
	old, recent := time.Unix(1700000000, 0).UTC(), time.Unix(1700090000, 0).UTC()
	held, heldElsewhere, unheld, young := digest.FromString("held"), digest.FromString("held by a"), digest.FromString("unheld"), digest.FromString("young")
	must(t, b.RecordManifest(storage.ManifestEntry{Upstream: "docker.io", Repo: "library/a", Digest: held,
		Record: storage.ManifestRecord{MediaType: "application/vnd.oci.image.manifest.v1+json", Size: 10, FetchedAt: old}}))
	must(t, a.RecordManifest(storage.ManifestEntry{Upstream: "docker.io", Repo: "library/a", Digest: heldElsewhere,
		Record: storage.ManifestRecord{MediaType: "application/vnd.oci.image.manifest.v1+json", Size: 10, FetchedAt: old}}))
	put := func(d digest.Digest, fetched time.Time) {
		for _, f := range []string{"", "x/y"} {
			must(t, b.PutReferrers("docker.io", "library/a", d, f, storage.ReferrersRecord{Body: []byte("{}"), FetchedAt: fetched, CheckedAt: fetched}))
		}
	}
	put(held, old)
	put(heldElsewhere, old)
	put(unheld, old)
	put(young, recent)
	asked := map[digest.Digest]time.Time{}
	n, err := b.ForgetUnheldReferrers(func(d digest.Digest, fetched time.Time) bool {
		asked[d] = fetched
		return fetched.Before(recent)
	})
	if err != nil || n != 2 {
		t.Fatalf("ForgetUnheldReferrers = %d, %v; want the 2 lists of the unheld subject", n, err)
	}
	if _, ok := asked[held]; ok {
		t.Error("drop asked of a subject held in the list's repository")
	}
	if !asked[unheld].Equal(old) || !asked[young].Equal(recent) {
		t.Errorf("drop given %v", asked)
	}
	for d, want := range map[digest.Digest]bool{held: true, heldElsewhere: true, unheld: false, young: true} {
		for _, f := range []string{"", "x/y"} {
			if _, ok, _ := b.Referrers("docker.io", "library/a", d, f); ok != want {
				t.Errorf("list of %s (filter %q) kept %v, want %v", d, f, ok, want)
			}
			if _, err := r.Get(t.Context(), "referrers", "docker.io/library/a@"+d.String()+"\x00"+f); (err == nil) != want {
				t.Errorf("shared list of %s (filter %q): %v, want kept %v", d, f, err, want)
			}
		}
	}
}

// On shared records, a referrers list another replica fetched again while
// this one's collection forgot the list it had read (fetched long ago, of
// a subject no image holds) stays in the bucket, and this replica adopts
// it: deleted, every replica would have lost the new list until the
// upstream was asked again.
func TestForgetUnheldReferrersKeepsAListFetchedAgainElsewhere(t *testing.T) {
	r := storage.NewDriverRecords(inmemory.New())
	a, b := openShared(t, r), openShared(t, r)
	old, recent := time.Unix(1700000000, 0).UTC(), time.Unix(1700090000, 0).UTC()
	subject := digest.FromString("unheld")
	must(t, b.PutReferrers("docker.io", "library/a", subject, "", storage.ReferrersRecord{Body: []byte("{}"), FetchedAt: old, CheckedAt: old}))
	fresh := storage.ReferrersRecord{Body: []byte(`{"manifests":[]}`), FetchedAt: recent, CheckedAt: recent}
	n, err := b.ForgetUnheldReferrers(func(d digest.Digest, fetched time.Time) bool {
		// a fetches the list again while b's collection runs.
		must(t, a.PutReferrers("docker.io", "library/a", subject, "", fresh))
		return fetched.Before(recent)
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.Get(t.Context(), "referrers", "docker.io/library/a@"+subject.String()+"\x00"); err != nil {
		t.Fatalf("the list a fetched again was removed from the bucket (%d forgotten): %v", n, err)
	}
	c := openShared(t, r)
	for name, ix := range map[string]*storage.Index{"b": b, "a new replica": c} {
		if rec, ok, err := ix.Referrers("docker.io", "library/a", subject, ""); err != nil || !ok || !bytes.Equal(rec.Body, fresh.Body) {
			t.Errorf("%s reads %+v, %v, %v; want the list a fetched again", name, rec, ok, err)
		}
	}
}

// A subject's referrers the upstream says are gone (DeleteReferrers, its
// 404) that another replica sharing the records has meanwhile fetched
// again (a signature pushed since) stay in the bucket: each list is
// deleted only while it is the one this replica fetched, as a
// collection's forget (the other's adopted). Before, the bucket's list
// was deleted whatever it was, lost for every replica until the upstream
// was asked again (with it down, the signature not listed).
func TestSharedDeleteReferrersLeavesAListFetchedAgainElsewhere(t *testing.T) {
	r := storage.NewDriverRecords(inmemory.New())
	a, b := openShared(t, r), openShared(t, r)
	old, recent := time.Unix(1700000000, 0).UTC(), time.Unix(1700090000, 0).UTC()
	subject := digest.FromString("signed")
	must(t, b.PutReferrers("docker.io", "library/a", subject, "", storage.ReferrersRecord{Body: []byte("{}"), FetchedAt: old, CheckedAt: old}))
	fresh := storage.ReferrersRecord{Body: []byte(`{"manifests":[]}`), FetchedAt: recent, CheckedAt: recent}
	must(t, a.PutReferrers("docker.io", "library/a", subject, "", fresh))
	must(t, b.DeleteReferrers("docker.io", "library/a", subject, old))
	for name, ix := range map[string]*storage.Index{"b": b, "a new replica": openShared(t, r)} {
		if rec, ok, err := ix.Referrers("docker.io", "library/a", subject, ""); err != nil || !ok || !bytes.Equal(rec.Body, fresh.Body) {
			t.Errorf("%s reads %+v, %v, %v; want the list a fetched again", name, rec, ok, err)
		}
	}
}

// A subject's referrers the upstream says are gone (DeleteReferrers, its
// 404) that another replica fetched again before the upstream was asked
// (its list fetched and checked earlier: the referrers gone upstream
// since) are gone from the bucket too, not adopted: before, the replica
// that answered the upstream's 404 listed the other's referrers again
// from its next request on, as did every replica reading the bucket.
func TestSharedDeleteReferrersDeletesAListFetchedBeforeTheUpstreamWasAsked(t *testing.T) {
	r := storage.NewDriverRecords(inmemory.New())
	a, b := openShared(t, r), openShared(t, r)
	old, recent, asked := time.Unix(1700000000, 0).UTC(), time.Unix(1700090000, 0).UTC(), time.Unix(1700095000, 0).UTC()
	subject := digest.FromString("signed")
	must(t, b.PutReferrers("docker.io", "library/a", subject, "", storage.ReferrersRecord{Body: []byte("{}"), FetchedAt: old, CheckedAt: old}))
	must(t, a.PutReferrers("docker.io", "library/a", subject, "", storage.ReferrersRecord{Body: []byte(`{"manifests":[]}`), FetchedAt: recent, CheckedAt: recent}))
	must(t, b.DeleteReferrers("docker.io", "library/a", subject, asked))
	for name, ix := range map[string]*storage.Index{"b": b, "a new replica": openShared(t, r)} {
		if rec, ok, err := ix.Referrers("docker.io", "library/a", subject, ""); err != nil || ok {
			t.Errorf("%s reads %+v, %v, %v; want none, as the upstream said after a fetched it", name, rec, ok, err)
		}
	}
}
