package tests

import (
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/docker-mirror/docker-mirror/lifecycle"
	"github.com/docker-mirror/docker-mirror/storage"
	"github.com/docker-mirror/docker-mirror/tests/fixture"
	"github.com/docker-mirror/docker-mirror/tests/servertest"
)

// Eviction under a size limit while pulls go on: every pull still gets
// correct content (what was evicted is fetched again), and the store ends
// under the limit.
func TestEvictionWhilePulling(t *testing.T) {
	up := fixture.StartUpstream(t)
	var images []*fixture.MultiArch
	for _, name := range []string{"alpha", "beta", "gamma", "delta"} {
		images = append(images, up.SeedMultiArch(t, "library/"+name, "1", fixture.OCI, fixture.WithLayerSize(64<<10)))
	}
	m := servertest.Start(t, up.URL())
	// The server's own collector: it shares the proxy's content guard, so
	// a fill in progress survives (the proxy holds the image and each
	// digest it stores until recorded; the collector keeps what held
	// digests reference), while the clock runs far past the grace period.
	col := m.Server.Collector
	// Fill the cache once to learn the size of one image.
	cranePull(t, ref(t, m, "alpha:1"), remote.WithPlatform(v1.Platform{OS: "linux", Architecture: "amd64"}))
	m.WaitIdle()
	limit := m.Index.StoredBytes() * 2 // room for about two of the four images

	var wg sync.WaitGroup
	stop := make(chan struct{})
	wg.Go(func() {
		for {
			select {
			case <-stop:
				return
			default:
			}
			m.Clock.Advance(time.Second)
			if _, err := col.Evict(t.Context(), limit, 0, m.Clock.Now()); err != nil {
				t.Errorf("evict: %v", err)
				return
			}
		}
	})
	var pulls sync.WaitGroup
	for round := range 3 {
		for i, ma := range images {
			pulls.Go(func() {
				p := []string{"linux/amd64", "linux/arm64", "linux/arm/v7"}[(round+i)%3]
				plat, _ := v1.ParsePlatform(p)
				name := ma.Repo[len("library/"):]
				if got := cranePull(t, ref(t, m, name+":1"), remote.WithPlatform(*plat)); got != ma.Platforms[p].Digest {
					t.Errorf("%s %s: pulled %s, want %s", name, p, got, ma.Platforms[p].Digest)
				}
			})
		}
		pulls.Wait()
	}
	close(stop)
	wg.Wait()
	m.WaitIdle()
	m.Clock.Advance(time.Hour) // past the grace period
	if _, err := col.Evict(t.Context(), limit, 0, m.Clock.Now()); err != nil {
		t.Fatal(err)
	}
	if size := m.Index.StoredBytes(); size > limit {
		t.Errorf("store holds %d bytes after eviction, limit %d", size, limit)
	}
	// What is kept is whole: pull it with the upstream down.
	up.Stop()
	kept := 0
	for _, ma := range images {
		name := ma.Repo[len("library/"):]
		r := get(t, m.URL()+"/v2/"+name+"/manifests/1")
		if r.status != 200 {
			continue
		}
		kept++
		for _, p := range []string{"linux/amd64", "linux/arm64", "linux/arm/v7"} {
			wantImage(t, m, name, ma.Platforms[p])
		}
	}
	if kept == 0 || kept == len(images) {
		t.Errorf("%d of %d images kept; want some evicted and some kept", kept, len(images))
	}
}

// A record of the index that cannot be read (its pages sound: a flipped
// bit in it) is dropped by the running server's pass that meets it, as
// verify --repair drops it, and the pass goes on: every pass failed on it
// (a warning a minute), the store growing past max_size, until the index
// was repaired offline.
func TestUnreadableRecordStopsNoEviction(t *testing.T) {
	for _, bucket := range []string{"tags", "manifests", "blobs", "mirrors", "access", "referrers"} {
		t.Run(bucket, func(t *testing.T) {
			up := fixture.StartUpstream(t)
			x := up.SeedImage(t, "library/x", "v1", 1, 4<<10)
			y := up.SeedImage(t, "library/y", "v1", 1, 4<<10)
			m := servertest.Start(t, up.URL())
			wantManifest(t, get(t, m.URL()+"/v2/library/x/manifests/v1"), x.Manifest, x.MediaType)
			wantManifest(t, get(t, m.URL()+"/v2/library/y/manifests/v1"), y.Manifest, y.MediaType)
			m.WaitIdle()
			m.Stop()
			fixture.DamageRecord(t, filepath.Join(m.Dir(), "index.db"), bucket, "")
			m.Restart()
			m.WaitIdle()

			m.Clock.Advance(time.Hour) // past the grace period
			rep, err := m.Server.Collector.Pass(t.Context(), lifecycle.Policy{MaxSize: 1, CollectEvery: lifecycle.DefaultCollectEvery})
			// (An image whose content went with the record is partial,
			// just now: kept for the grace period.)
			if err != nil || rep.ImagesEvicted == 0 || len(rep.UnreadableRecords) != 1 {
				t.Fatalf("a pass over max_size beside an unreadable %s record: %v, %d images evicted, %v dropped; want it dropped and images evicted", bucket, err, rep.ImagesEvicted, rep.UnreadableRecords)
			}
			wantImage(t, m, "x", x) // fetched again
		})
	}
}

// A directory of the store the mirror cannot list (permission denied:
// restored as another user; a bad sector under it) failed every
// collection, and so every eviction, the store staying past max_size for
// as long as it was there: the listing stopped at it. The content the
// index records is removed all the same (by its path), and what the
// directory may hold unrecorded is kept, with a warning.
func TestUnlistableDirectoryStopsNoEviction(t *testing.T) {
	if os.Geteuid() == 0 {
		t.Skip("root lists any directory")
	}
	up, y, m, file := pulledOnDisk(t, "y")
	x := up.SeedImage(t, "library/x", "1", 1, 1<<10)
	wantManifest(t, get(t, m.URL()+"/v2/x/manifests/1"), x.Manifest, x.MediaType)
	m.WaitIdle()
	if err := m.Index.Pin(t.Context(), y.Digest, storage.PinRecord{Reason: "test"}); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Dir(filepath.Dir(file)) // y's manifest's prefix directory
	if err := os.Chmod(dir, 0o300); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Chmod(dir, 0o755) })

	m.Clock.Advance(time.Hour) // past the grace period
	rep, err := m.Server.Collector.Pass(t.Context(), lifecycle.Policy{MaxSize: 1, CollectEvery: lifecycle.DefaultCollectEvery})
	if err != nil || rep.ImagesEvicted != 1 || rep.ManifestsRemoved == 0 {
		t.Fatalf("a pass over max_size beside a directory it cannot list: %v, %d images evicted, %d manifests removed; want x evicted and removed", err, rep.ImagesEvicted, rep.ManifestsRemoved)
	}
	wantManifest(t, get(t, m.URL()+"/v2/y/manifests/1"), y.Manifest, y.MediaType)
}
