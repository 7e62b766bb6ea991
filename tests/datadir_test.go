package tests

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"testing"

	"github.com/docker-mirror/docker-mirror/storage"
	"github.com/docker-mirror/docker-mirror/tests/fixture"
	"github.com/docker-mirror/docker-mirror/tests/servertest"
)

// A data directory written by an older version (index.db, blobs/, the
// spool in DIR/tmp, uploads in DIR/_uploads, no marker) still starts and
// serves what it holds without asking the upstream; it gets the marker,
// and loses the old leftovers but not the files that are not the
// mirror's.
func TestOldLayoutDataDirectoryStillServes(t *testing.T) {
	up := fixture.StartUpstream(t)
	img := up.SeedImage(t, "library/old", "1", 2, 8<<10)
	m := servertest.Start(t, up.URL())
	wantImage(t, m, "old", img)
	m.WaitIdle()
	m.Stop()

	// Turn the directory into the old layout.
	dir := m.Dir()
	if err := os.RemoveAll(filepath.Join(dir, storage.OwnDir)); err != nil {
		t.Fatal(err)
	}
	leftovers := []string{"tmp/blob-42", "_uploads/ABCDEFGHIJKLMNOPQRSTUVWXYZ"}
	kept := []string{"tmp/operator-notes.txt"}
	for _, f := range append(leftovers, kept...) {
		p := filepath.Join(dir, filepath.FromSlash(f))
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, []byte("half a blob"), 0o644); err != nil {
			t.Fatal(err)
		}
	}

	up.ResetCounts()
	m.Restart()
	wantImage(t, m, "old", img)
	if reqs := up.Requests(); len(reqs) != 0 {
		t.Errorf("the old layout's content was fetched again: %v", reqs)
	}
	if _, err := os.Stat(filepath.Join(dir, storage.OwnDir, "marker")); err != nil {
		t.Errorf("no marker after the migration: %v", err)
	}
	for _, f := range leftovers {
		if _, err := os.Stat(filepath.Join(dir, filepath.FromSlash(f))); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("leftover %s still there (%v)", f, err)
		}
	}
	for _, f := range kept {
		if _, err := os.Stat(filepath.Join(dir, filepath.FromSlash(f))); err != nil {
			t.Errorf("%s was removed: %v", f, err)
		}
	}
}

// A tag whose record in the index cannot be read (its pages sound: a
// flipped bit in it) is a miss: fetched from the upstream and recorded
// again, as one in a shared bucket is. It was answered 500 at every pull
// of the tag (Docker then pulled from Docker Hub) until the index was
// repaired offline; the other tags were served meanwhile.
func TestUnreadableTagRecordIsAMiss(t *testing.T) {
	up := fixture.StartUpstream(t)
	x := up.SeedImage(t, "library/x", "v1", 1, 4<<10)
	y := up.SeedImage(t, "library/y", "v1", 1, 4<<10)
	m := servertest.Start(t, up.URL())
	wantManifest(t, get(t, m.URL()+"/v2/library/x/manifests/v1"), x.Manifest, x.MediaType)
	wantManifest(t, get(t, m.URL()+"/v2/library/y/manifests/v1"), y.Manifest, y.MediaType)
	m.WaitIdle()
	m.Stop()
	fixture.DamageRecord(t, filepath.Join(m.Dir(), "index.db"), "tags", storage.TagKey("docker.io", "library/x", "v1"))

	m.Restart()
	wantManifest(t, get(t, m.URL()+"/v2/library/y/manifests/v1"), y.Manifest, y.MediaType)
	wantManifest(t, get(t, m.URL()+"/v2/library/x/manifests/v1"), x.Manifest, x.MediaType)
	m.WaitIdle()
	up.Stop() // recorded again: served with the upstream down
	wantManifest(t, get(t, m.URL()+"/v2/library/x/manifests/v1"), x.Manifest, x.MediaType)
}
