package storage_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/docker-mirror/docker-mirror/storage"
)

// UnrootImages deletes the tags and mirror records of many images, over
// more than one transaction, and spares a tag that moved to another image.
func TestUnrootImages(t *testing.T) {
	ix := newIndex(t)
	// 330 keys, a transaction per 100: several. (3,300 at the default
	// limits took a synced transaction per tag recorded, 10-16 s under
	// -race on a busy machine, and as many transactions as its time and
	// pages made.)
	ix.SetWriteLimits(100, time.Hour)
	now := time.Now()
	var us []storage.Unroot
	const images, tags = 30, 10
	for i := range images {
		d := digest.FromString(fmt.Sprint("image ", i))
		repo := fmt.Sprint("library/r", i%7)
		u := storage.Unroot{Upstream: "docker.io", Repo: repo, Digest: d, Fills: []storage.FillKey{{Upstream: "docker.io", Repo: repo, Digest: d}}}
		for k := range tags {
			tag := fmt.Sprintf("t%d-%d", i, k)
			fill := &storage.FillRecord{Upstream: "docker.io", Repo: repo, State: storage.FillComplete}
			if err := ix.RecordManifest(storage.ManifestEntry{Upstream: "docker.io", Repo: repo, Digest: d, Tag: tag, Fill: fill,
				Record: storage.ManifestRecord{MediaType: "application/vnd.oci.image.manifest.v1+json", Size: 10, FetchedAt: now}}); err != nil {
				t.Fatal(err)
			}
			u.Tags = append(u.Tags, tag)
		}
		us = append(us, u)
	}
	// One tag moved to another image before the eviction.
	moved := digest.FromString("moved")
	if err := ix.RecordManifest(storage.ManifestEntry{Upstream: "docker.io", Repo: "library/r0", Digest: moved, Tag: "t0-0",
		Record: storage.ManifestRecord{MediaType: "application/vnd.oci.image.manifest.v1+json", Size: 10, FetchedAt: now}}); err != nil {
		t.Fatal(err)
	}
	before := ix.WriteTotals().Commits
	if err := ix.UnrootImages(us); err != nil {
		t.Fatal(err)
	}
	if commits := ix.WriteTotals().Commits - before; commits < 3 {
		t.Fatalf("UnrootImages committed %d transactions, want several", commits)
	}
	for _, u := range us {
		for _, tag := range u.Tags {
			rec, ok, err := ix.Tag("docker.io", u.Repo, tag)
			switch {
			case err != nil:
				t.Fatal(err)
			case tag == "t0-0":
				if !ok || rec.Digest != moved {
					t.Errorf("the moved tag t0-0 = %v, %v; want it kept on %s", rec.Digest, ok, moved)
				}
			case ok:
				t.Fatalf("tag %s:%s survived", u.Repo, tag)
			}
		}
		if _, ok, err := ix.Fill("docker.io", u.Repo, u.Digest); err != nil || ok {
			t.Fatalf("mirror record of %s survived (%v)", u.Digest, err)
		}
	}
}
