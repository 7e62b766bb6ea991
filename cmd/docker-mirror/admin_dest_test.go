package main

import (
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	bolt "go.etcd.io/bbolt"

	"github.com/docker-mirror/docker-mirror/config"
	"github.com/docker-mirror/docker-mirror/server"
	"github.com/docker-mirror/docker-mirror/storage"
	"github.com/docker-mirror/docker-mirror/tests/fixture"
	"github.com/docker-mirror/docker-mirror/tests/servertest"
)

// destDataDir runs a --destination server (the production wiring, from a
// configuration), pulls an image through it, stops it, and returns its
// data directory and the destination's --destination value.
func destDataDir(t *testing.T) (dir, destURL string) {
	dir, destURL, _, _ = destServerRun(t)
	return dir, destURL
}

// destServerRun is destDataDir, which also returns the destination and
// the image pulled (library/app:v1).
func destServerRun(t *testing.T) (dir, destURL string, dest *fixture.Destination, img *fixture.Image) {
	t.Helper()
	up := fixture.StartUpstream(t)
	img = up.SeedImage(t, "library/app", "v1", 2, 4<<10)
	dest = fixture.StartDestination(t, nil)
	destURL = dest.URL() + "/mirror"
	cfg := config.Default()
	cfg.Data = t.TempDir()
	cfg.Upstream = up.URL()
	cfg.Upstreams = map[string]config.Upstream{"docker.io": {URL: up.URL()}}
	cfg.Destination.URL = destURL
	s, err := server.New(t.Context(), cfg, server.WithLogger(servertest.Logger()))
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(s.Handler())
	for _, ref := range []string{"manifests/v1", "blobs/" + img.Layers[0]} {
		req, _ := http.NewRequest(http.MethodGet, srv.URL+"/v2/app/"+ref, nil)
		req.Header.Set("Accept", "application/vnd.oci.image.manifest.v1+json")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("pull %s: %s", ref, resp.Status)
		}
	}
	if err := s.Proxy.WaitIdle(t.Context()); err != nil {
		t.Fatal(err)
	}
	srv.Close()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	return cfg.Data, destURL, dest, img
}

// indexCounts opens a data directory's index and counts its tags, blob
// and manifest records.
func indexCounts(t *testing.T, dir string) (tags, blobs, manifests int) {
	t.Helper()
	ix, err := storage.OpenIndex(filepath.Join(dir, "index.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer ix.Close()
	snap, err := ix.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	return len(snap.Tags), len(snap.Blobs), len(snap.Manifests)
}

// The data directory of a --destination server, checked as the docs
// once said, without --destination: the commands refuse in one line
// naming the flag, and nothing in the index is deleted. With
// --destination, verify checks the index against the registry, reports
// what is missing (exit 1), and removes it only with --repair.
func TestAdminOnDestinationDataDir(t *testing.T) {
	dir, destURL := destDataDir(t)
	tags, blobs, manifests := indexCounts(t, dir)
	if tags != 1 || blobs != 3 || manifests != 1 {
		t.Fatalf("index of the destination server: %d tags, %d blobs, %d manifests", tags, blobs, manifests)
	}
	unchanged := func(after string) {
		t.Helper()
		if gt, gb, gm := indexCounts(t, dir); gt != tags || gb != blobs || gm != manifests {
			t.Fatalf("after %s: %d tags, %d blobs, %d manifests; want %d, %d, %d", after, gt, gb, gm, tags, blobs, manifests)
		}
	}

	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"verify", "--data", dir}, "pass --destination " + destURL},
		{[]string{"verify", "--data", dir, "--repair"}, "pass --destination " + destURL},
		{[]string{"ls", "--data", dir}, "verify --destination " + destURL},
		{[]string{"gc", "--data", dir}, "verify --destination " + destURL},
		{[]string{"gc", "--data", dir, "--destination", destURL}, "embedded store only"},
	} {
		code, out, stderr := runAdmin(t, c.args...)
		if code != 2 || out != "" || !strings.Contains(stderr, c.want) || strings.Count(stderr, "\n") != 1 {
			t.Errorf("%v: exit %d, stdout %q, stderr %q; want exit 2 and one line with %q", c.args, code, out, stderr, c.want)
		}
		unchanged(strings.Join(c.args, " "))
	}

	code, out, stderr := runAdmin(t, "verify", "--data", dir, "--destination", destURL)
	if code != 0 || !strings.Contains(out, "checked 3 blobs and 1 manifest") || !strings.Contains(out, ": 0 indexed but missing") {
		t.Fatalf("verify --destination: exit %d, %q %q", code, out, stderr)
	}

	// An entry naming a blob the registry lacks: reported, kept, and
	// removed with --repair.
	ghost := digest.FromString("ghost")
	ix, err := storage.OpenIndex(filepath.Join(dir, "index.db"))
	if err != nil {
		t.Fatal(err)
	}
	if err := ix.RecordBlob("docker.io", "library/app", ghost, 100, time.Now()); err != nil {
		t.Fatal(err)
	}
	ix.Close()
	blobs++
	code, out, _ = runAdmin(t, "verify", "--data", dir, "--destination", destURL)
	if code != 1 || !strings.Contains(out, "missing: "+ghost.String()) || !strings.Contains(out, "1 indexed but missing (nothing removed") {
		t.Fatalf("verify --destination with a ghost: exit %d, %q", code, out)
	}
	unchanged("verify --destination")
	code, out, _ = runAdmin(t, "verify", "--data", dir, "--destination", destURL, "--repair")
	if code != 1 || !strings.Contains(out, "1 indexed but missing; removed") {
		t.Fatalf("verify --destination --repair: exit %d, %q", code, out)
	}
	blobs--
	unchanged("verify --destination --repair")
	if code, out, _ := runAdmin(t, "verify", "--data", dir, "--destination", destURL); code != 0 {
		t.Fatalf("verify --destination after the repair: exit %d, %q", code, out)
	}
}

// A blob the registry lost (its garbage collection, a retention policy, an
// operator's delete) and verify --destination --repair removed from the
// index takes the image it belongs to out of the complete mirror state, as
// verify --repair does on the embedded store: the next pull mirrors it
// again, rather than trust an image the registry no longer holds whole.
func TestAdminVerifyDestinationRepairReopensTheImage(t *testing.T) {
	dir, destURL, dest, img := destServerRun(t)
	state := func() string {
		t.Helper()
		ix, err := storage.OpenIndex(filepath.Join(dir, "index.db"))
		if err != nil {
			t.Fatal(err)
		}
		defer ix.Close()
		rec, ok, err := ix.Fill("docker.io", "library/app", digest.Digest(img.Digest))
		if err != nil || !ok {
			t.Fatalf("the image's mirror record: %v, %v", ok, err)
		}
		return rec.State
	}
	if got := state(); got != storage.FillComplete {
		t.Fatalf("mirror state %q after the pull, want complete", got)
	}
	lost := img.Layers[1]
	req, err := http.NewRequest(http.MethodDelete, dest.URL()+"/v2/mirror/library/app/blobs/"+lost, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := dest.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("DELETE of the layer at the destination: %s", resp.Status)
	}

	code, out, _ := runAdmin(t, "verify", "--data", dir, "--destination", destURL, "--repair")
	if code != 1 || !strings.Contains(out, "missing: "+lost) {
		t.Fatalf("verify --destination --repair: exit %d, %q", code, out)
	}
	if got := state(); got != storage.FillPartial {
		t.Errorf("mirror state %q after the repair removed one of its layers, want partial", got)
	}
}

// The same data directory with an index from before the index recorded
// its store: the embedded store at --data holds none of what the index
// names, so ls, gc and verify refuse rather than take every entry for
// missing.
func TestAdminOnUnrecordedDestinationDataDir(t *testing.T) {
	dir, _ := destDataDir(t)
	db, err := bolt.Open(filepath.Join(dir, "index.db"), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Update(func(tx *bolt.Tx) error { return tx.DeleteBucket([]byte("meta")) }); err != nil {
		t.Fatal(err)
	}
	db.Close()
	tags, blobs, manifests := indexCounts(t, dir)
	for _, args := range [][]string{{"verify", "--data", dir}, {"verify", "--data", dir, "--repair"}, {"gc", "--data", dir}, {"ls", "--data", dir}} {
		code, out, stderr := runAdmin(t, args...)
		if code != 2 || out != "" || !strings.Contains(stderr, "does not record its store") || !strings.Contains(stderr, "pass --destination") || strings.Count(stderr, "\n") != 1 {
			t.Errorf("%v: exit %d, stdout %q, stderr %q", args, code, out, stderr)
		}
		if gt, gb, gm := indexCounts(t, dir); gt != tags || gb != blobs || gm != manifests {
			t.Fatalf("after %v: %d tags, %d blobs, %d manifests; want %d, %d, %d", args, gt, gb, gm, tags, blobs, manifests)
		}
	}
}
