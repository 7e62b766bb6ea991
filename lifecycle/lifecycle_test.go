package lifecycle_test

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	"go.uber.org/goleak"

	"github.com/docker-mirror/docker-mirror/lifecycle"
	"github.com/docker-mirror/docker-mirror/storage"
	"github.com/docker-mirror/docker-mirror/storage/storetest"
	"github.com/docker-mirror/docker-mirror/tests/fixture"
	"github.com/docker-mirror/docker-mirror/tests/servertest"
)

func TestMain(m *testing.M) {
	// The upstream fixture's distribution app never stops its
	// notification broadcaster; that is the fixture's.
	goleak.VerifyTestMain(m, goleak.IgnoreTopFunction("github.com/docker/go-events.(*Broadcaster).run"))
}

const accept = "application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json"

// env is an upstream and a mirror whose embedded store lives in the index's
// directory, as serve lays out --data.
type env struct {
	up    *fixture.Upstream
	m     *servertest.Server
	store *storage.DriverStore
}

func newEnv(t *testing.T) *env {
	t.Helper()
	up := fixture.StartUpstream(t)
	m := servertest.StartWithStore(t, up.URL(), func(ix *storage.Index) (storage.Store, error) {
		return storage.OpenDriverStore(context.Background(), "filesystem", map[string]any{"rootdirectory": filepath.Dir(ix.Path())})
	})
	return &env{up: up, m: m, store: m.Store.(*storage.DriverStore)}
}

// collector returns a Collector on the mirror's store, on its clock,
// without a grace period.
func (e *env) collector(opts lifecycle.Options) *lifecycle.Collector {
	if opts.Now == nil {
		opts.Now = e.m.Clock.Now
	}
	return lifecycle.New(e.store, e.m.Index, opts)
}

// image is what a pull of repo:tag gets: its manifests (the index and
// the mirrored platforms' images and attestations) and blobs.
type image struct {
	repo, tag string
	digest    string
	manifests map[string][]byte
	blobs     []string
}

func single(repo, tag string, im *fixture.Image) image {
	return image{repo: repo, tag: tag, digest: im.Digest, manifests: map[string][]byte{im.Digest: im.Manifest}, blobs: im.Blobs()}
}

func multi(ma *fixture.MultiArch) image {
	img := image{repo: ma.Repo, tag: ma.Tag, digest: ma.Digest, manifests: map[string][]byte{ma.Digest: ma.Index}}
	for p, im := range ma.Platforms {
		if strings.HasPrefix(p, "linux/") {
			img.manifests[im.Digest] = im.Manifest
			img.blobs = append(img.blobs, im.Blobs()...)
		}
	}
	for _, a := range ma.Attestations {
		img.manifests[a.Digest] = a.Manifest
		img.blobs = append(img.blobs, a.Blobs()...)
	}
	slices.Sort(img.blobs)
	img.blobs = slices.Compact(img.blobs)
	return img
}

// content lists every digest of the image.
func (im image) content() []string {
	out := slices.Clone(im.blobs)
	for d := range im.manifests {
		out = append(out, d)
	}
	return out
}

func get(t *testing.T, url string) (int, []byte, http.Header) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Accept", accept)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	return resp.StatusCode, body, resp.Header
}

func sha(b []byte) string {
	s := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(s[:])
}

// pull pulls an image's tag through the mirror and waits for the
// background fill to store everything.
func (e *env) pull(t *testing.T, im image) {
	t.Helper()
	status, body, _ := get(t, e.m.URL()+"/v2/"+im.repo+"/manifests/"+im.tag)
	if status != http.StatusOK || sha(body) != im.digest {
		t.Fatalf("pull %s:%s: status %d, digest %s, want %s", im.repo, im.tag, status, sha(body), im.digest)
	}
	e.m.WaitIdle()
}

// wantPull pulls all of an image through the mirror, checking every byte.
func (e *env) wantPull(t *testing.T, im image) {
	t.Helper()
	status, body, _ := get(t, e.m.URL()+"/v2/"+im.repo+"/manifests/"+im.tag)
	if status != http.StatusOK || sha(body) != im.digest {
		t.Fatalf("%s:%s: status %d, digest %s, want %s (%.200s)", im.repo, im.tag, status, sha(body), im.digest, body)
	}
	for d, raw := range im.manifests {
		status, body, _ := get(t, e.m.URL()+"/v2/"+im.repo+"/manifests/"+d)
		if status != http.StatusOK || string(body) != string(raw) {
			t.Fatalf("%s@%s: status %d, body %.200s", im.repo, d, status, body)
		}
	}
	for _, d := range im.blobs {
		status, body, _ := get(t, e.m.URL()+"/v2/"+im.repo+"/blobs/"+d)
		if status != http.StatusOK || sha(body) != d {
			t.Fatalf("%s blob %s: status %d, digest %s", im.repo, d, status, sha(body))
		}
	}
}

// wantStored checks that each digest is in the store (or not).
func (e *env) wantStored(t *testing.T, stored bool, ds ...string) {
	t.Helper()
	for _, d := range ds {
		_, err := e.store.Stat(t.Context(), "", digest.Digest(d))
		switch {
		case stored && err != nil:
			t.Errorf("%s: not stored: %v", d, err)
		case !stored && !errors.Is(err, storage.ErrNotFound):
			t.Errorf("%s: still stored (%v)", d, err)
		}
	}
}

// path is where the filesystem store keeps a digest.
func (e *env) path(d string) string {
	dg := digest.Digest(d)
	return filepath.Join(filepath.Dir(e.m.Index.Path()), "blobs", string(dg.Algorithm()), dg.Encoded()[:2], dg.Encoded(), "data")
}

func findImage(t *testing.T, images []lifecycle.Image, d string) lifecycle.Image {
	t.Helper()
	for _, im := range images {
		if im.Digest.String() == d {
			return im
		}
	}
	t.Fatalf("image %s not listed in %+v", d, images)
	return lifecycle.Image{}
}

func images(t *testing.T, c *lifecycle.Collector) []lifecycle.Image {
	t.Helper()
	list, err := c.Images(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	return list
}

// seedThree pulls a multi-platform image a, then single images b and c,
// an hour apart each.
// unreferencedB seeds three images and leaves b unreferenced (its tag and
// fill record gone); retag records b's tag again, as a pull would.
func unreferencedB(t *testing.T, e *env) (b image, retag func()) {
	t.Helper()
	_, b, _ = seedThree(t, e)
	if err := e.m.Index.DeleteTag("docker.io", "library/b", "v1"); err != nil {
		t.Fatal(err)
	}
	if err := e.m.Index.DeleteFill("docker.io", "library/b", digest.Digest(b.digest)); err != nil {
		t.Fatal(err)
	}
	rec, ok, err := e.m.Index.Manifest(digest.Digest(b.digest))
	if err != nil || !ok {
		t.Fatalf("b's manifest record: %v, %v", ok, err)
	}
	return b, func() {
		if err := e.m.Index.RecordManifest(storage.ManifestEntry{Upstream: "docker.io", Repo: "library/b", Digest: digest.Digest(b.digest), Record: rec, Tag: "v1"}); err != nil {
			t.Error(err)
		}
	}
}

func seedThree(t *testing.T, e *env) (a, b, c image) {
	t.Helper()
	a = multi(e.up.SeedMultiArch(t, "library/a", "v1", fixture.OCI))
	b = single("library/b", "v1", e.up.SeedImage(t, "library/b", "v1", 2, 8<<10))
	c = single("library/c", "v1", e.up.SeedImage(t, "library/c", "v1", 2, 8<<10))
	a.repo, b.repo, c.repo = "a", "b", "c"
	for _, im := range []image{a, b, c} {
		e.pull(t, im)
		e.m.Clock.Advance(time.Hour)
	}
	return a, b, c
}

func TestImages(t *testing.T) {
	e := newEnv(t)
	t0 := e.m.Clock.Now()
	a, b, _ := seedThree(t, e)
	col := e.collector(lifecycle.Options{})
	list := images(t, col)
	if len(list) != 3 {
		t.Fatalf("Images = %+v, want 3", list)
	}
	ia := findImage(t, list, a.digest)
	if ia.Name() != "docker.io/library/a" || !slices.Equal(ia.Tags, []string{"v1"}) || ia.State != storage.FillComplete ||
		!slices.Equal(ia.Platforms, []string{"linux/amd64", "linux/arm/v7", "linux/arm64"}) || ia.Pinned ||
		ia.MediaType != "application/vnd.oci.image.index.v1+json" || !ia.LastPull.Equal(t0) ||
		!slices.Equal(ia.PlatformsLeftOut, []string{"windows/amd64"}) {
		t.Errorf("image a = %+v", ia)
	}
	if ia.Manifests != len(a.manifests) || ia.Blobs != len(a.blobs) {
		t.Errorf("image a keeps %d manifests and %d blobs, want %d and %d", ia.Manifests, ia.Blobs, len(a.manifests), len(a.blobs))
	}
	var want int64
	for _, d := range a.content() {
		fi, err := os.Stat(e.path(d))
		if err != nil {
			t.Fatal(err)
		}
		want += fi.Size()
	}
	if ia.Size != want {
		t.Errorf("image a: size %d, want %d", ia.Size, want)
	}
	ib := findImage(t, list, b.digest)
	if !slices.Equal(ib.Platforms, []string{"linux/amd64"}) || ib.PlatformsLeftOut != nil || !ib.LastPull.Equal(t0.Add(time.Hour)) || ib.State != storage.FillComplete {
		t.Errorf("image b = %+v", ib)
	}
	var total int64
	for _, im := range list {
		total += im.Size
	}
	if total != e.m.Index.StoredBytes() {
		t.Errorf("images' sizes add up to %d, the index stores %d", total, e.m.Index.StoredBytes())
	}
}

// The least recently pulled image goes; the others stay whole, and pull
// with the upstream down.
func TestEvictMaxSizeKeepsRecentImagesWhole(t *testing.T) {
	e := newEnv(t)
	a, b, c := seedThree(t, e)
	col := e.collector(lifecycle.Options{})
	list := images(t, col)
	limit := findImage(t, list, b.digest).Size + findImage(t, list, c.digest).Size

	r, err := col.Evict(t.Context(), limit, 0, e.m.Clock.Now())
	if err != nil {
		t.Fatal(err)
	}
	if r.ImagesEvicted != 1 || r.Evicted[0].Digest.String() != a.digest {
		t.Fatalf("evicted %+v, want image a", r.Evicted)
	}
	if r.ManifestsRemoved != len(a.manifests) || r.BlobsRemoved != len(a.blobs) || r.BytesFreed != findImage(t, list, a.digest).Size {
		t.Errorf("report %+v, want %d manifests and %d blobs removed", r, len(a.manifests), len(a.blobs))
	}
	if r.StoredAfter != limit || e.m.Index.StoredBytes() != limit {
		t.Errorf("stored %d (report %d), want %d", e.m.Index.StoredBytes(), r.StoredAfter, limit)
	}
	e.wantStored(t, false, a.content()...)
	e.wantStored(t, true, b.content()...)
	e.wantStored(t, true, c.content()...)
	if len(images(t, col)) != 2 {
		t.Errorf("images after eviction: %+v", images(t, col))
	}

	e.up.Stop()
	e.wantPull(t, b)
	e.wantPull(t, c)
	if status, _, _ := get(t, e.m.URL()+"/v2/a/manifests/v1"); status == http.StatusOK {
		t.Error("evicted image a still served with the upstream down")
	}
	e.up.Restart()
	e.pull(t, a)
	e.wantPull(t, a)
}

// A layer an evicted image shares with a kept one stays.
func TestEvictKeepsSharedLayers(t *testing.T) {
	e := newEnv(t)
	v1 := e.up.SeedImage(t, "library/app", "v1", 2, 8<<10)
	// v2: the same config and layers, another manifest.
	var doc map[string]any
	if err := json.Unmarshal(v1.Manifest, &doc); err != nil {
		t.Fatal(err)
	}
	doc["annotations"] = map[string]string{"version": "2"}
	raw, err := json.Marshal(doc)
	if err != nil {
		t.Fatal(err)
	}
	v2d := e.up.PutManifest(t, "library/app", "v2", v1.MediaType, raw)
	old := single("app", "v1", v1)
	cur := image{repo: "app", tag: "v2", digest: v2d, manifests: map[string][]byte{v2d: raw}, blobs: v1.Blobs()}

	e.pull(t, old)
	e.m.Clock.Advance(time.Hour)
	e.pull(t, cur)
	col := e.collector(lifecycle.Options{})
	r, err := col.Evict(t.Context(), findImage(t, images(t, col), v2d).Size, 0, e.m.Clock.Now())
	if err != nil {
		t.Fatal(err)
	}
	if r.ImagesEvicted != 1 || r.Evicted[0].Digest.String() != v1.Digest || r.ManifestsRemoved != 1 || r.BlobsRemoved != 0 {
		t.Fatalf("report %+v, want v1's manifest alone removed", r)
	}
	e.wantStored(t, false, v1.Digest)
	e.wantStored(t, true, cur.content()...)
	e.up.Stop()
	e.wantPull(t, cur)
}

// Pinned images (by digest or by tag) are never evicted.
func TestEvictSparesPinned(t *testing.T) {
	e := newEnv(t)
	a, b, c := seedThree(t, e)
	col := e.collector(lifecycle.Options{})
	if err := col.Pin(t.Context(), a.digest, "sync"); err != nil {
		t.Fatal(err)
	}
	if err := col.Pin(t.Context(), storage.TagKey("docker.io", "library/b", "v1"), "admin"); err != nil {
		t.Fatal(err)
	}
	r, err := col.Evict(t.Context(), 1, 0, e.m.Clock.Now())
	if err != nil {
		t.Fatal(err)
	}
	if r.ImagesEvicted != 1 || r.Evicted[0].Digest.String() != c.digest {
		t.Fatalf("evicted %+v, want c alone", r.Evicted)
	}
	if r.StoredAfter <= 1 {
		t.Errorf("stored %d after eviction, yet a and b are pinned", r.StoredAfter)
	}
	list := images(t, col)
	if len(list) != 2 || !findImage(t, list, a.digest).Pinned || !findImage(t, list, b.digest).Pinned {
		t.Errorf("images = %+v", list)
	}
	e.up.Stop()
	e.wantPull(t, a)
	e.wantPull(t, b)

	if err := col.Unpin(t.Context(), a.digest); err != nil {
		t.Fatal(err)
	}
	if r, err := col.Evict(t.Context(), 1, 0, e.m.Clock.Now()); err != nil || r.ImagesEvicted != 1 || r.Evicted[0].Digest.String() != a.digest {
		t.Fatalf("after Unpin: %+v, %v", r, err)
	}
}

// A pin of a tag (a prefetch's or a sync's of repo:tag) follows the tag:
// once the upstream moved it and the mirror recorded the move, the image
// it names now is kept, and the one it named before is evicted as any
// unpinned one; a pin of a digest keeps its image whatever its tags.
func TestEvictPinnedTagFollowsTheTag(t *testing.T) {
	e := newEnv(t)
	old := single("app", "v1", e.up.SeedImage(t, "library/app", "v1", 2, 8<<10))
	e.pull(t, old)
	col := e.collector(lifecycle.Options{})
	if err := col.Pin(t.Context(), storage.TagKey("docker.io", "library/app", "v1"), "prefetch"); err != nil {
		t.Fatal(err)
	}
	e.m.Clock.Advance(time.Hour) // the tag's record older than its TTL
	cur := single("app", "v1", e.up.SeedImage(t, "library/app", "v1", 2, 8<<10))
	e.pull(t, cur)
	r, err := col.Evict(t.Context(), 1, 0, e.m.Clock.Now())
	if err != nil {
		t.Fatal(err)
	}
	if r.ImagesEvicted != 1 || r.Evicted[0].Digest.String() != old.digest {
		t.Fatalf("evicted %+v, want the image the pinned tag named before it moved (%s) alone", r.Evicted, old.digest)
	}
	e.wantStored(t, false, old.digest)
	e.wantStored(t, true, cur.content()...)
	e.up.Stop()
	e.wantPull(t, cur)
}

// A pin of repo:tag keeps nothing once the upstream deleted the tag: the
// tag, answered 404 on its revalidation, is forgotten, and the image it
// named evicted as any other, as operations.md says (pin by digest to keep
// an image whatever becomes of its tags).
func TestEvictPinnedTagDeletedUpstream(t *testing.T) {
	e := newEnv(t)
	im := single("app", "v1", e.up.SeedImage(t, "library/app", "v1", 2, 8<<10))
	e.pull(t, im)
	col := e.collector(lifecycle.Options{})
	if err := col.Pin(t.Context(), storage.TagKey("docker.io", "library/app", "v1"), "prefetch"); err != nil {
		t.Fatal(err)
	}
	e.up.Delete(t, "library/app", "v1")
	e.m.Clock.Advance(time.Hour) // the tag's record older than its TTL
	if status, _, _ := get(t, e.m.URL()+"/v2/library/app/manifests/v1"); status != http.StatusNotFound {
		t.Fatalf("pull of the tag deleted upstream: status %d, want 404", status)
	}
	e.m.WaitIdle()
	r, err := col.Evict(t.Context(), 1, 0, e.m.Clock.Now())
	if err != nil {
		t.Fatal(err)
	}
	if r.ImagesEvicted != 1 || r.Evicted[0].Digest.String() != im.digest {
		t.Fatalf("evicted %+v, want the image the pinned tag named before the upstream deleted it (%s)", r.Evicted, im.digest)
	}
	e.wantStored(t, false, im.digest)
}

// --evict-after evicts what was not pulled for that long; a manifest pull
// (TouchManifest) or a blob pull counts.
func TestEvictAfter(t *testing.T) {
	e := newEnv(t)
	a, b, c := seedThree(t, e) // pulled 3h, 2h and 1h ago
	now := e.m.Clock.Now()
	// a's manifest was pulled 30 minutes ago (as the proxy records it).
	if err := e.m.Index.TouchManifest(digest.Digest(a.digest), now.Add(-30*time.Minute)); err != nil {
		t.Fatal(err)
	}
	col := e.collector(lifecycle.Options{})
	r, err := col.Evict(t.Context(), 0, 90*time.Minute, now)
	if err != nil {
		t.Fatal(err)
	}
	if r.ImagesEvicted != 1 || r.Evicted[0].Digest.String() != b.digest {
		t.Fatalf("evicted %+v, want b alone", r.Evicted)
	}
	e.wantStored(t, false, b.content()...)
	e.wantStored(t, true, a.content()...)
	e.wantStored(t, true, c.content()...)

	// A blob served from the cache counts as a pull of the image using it.
	e.m.Clock.Advance(2 * time.Hour)
	if status, _, _ := get(t, e.m.URL()+"/v2/c/blobs/"+c.blobs[1]); status != http.StatusOK {
		t.Fatalf("blob of c: status %d", status)
	}
	r, err = col.Evict(t.Context(), 0, time.Hour, e.m.Clock.Now())
	if err != nil {
		t.Fatal(err)
	}
	if r.ImagesEvicted != 1 || r.Evicted[0].Digest.String() != a.digest {
		t.Fatalf("evicted %+v, want a alone", r.Evicted)
	}
	e.wantStored(t, true, c.content()...)
}

func TestEvictDryRun(t *testing.T) {
	e := newEnv(t)
	a, _, _ := seedThree(t, e)
	before := e.m.Index.StoredBytes()
	col := e.collector(lifecycle.Options{DryRun: true})
	r, err := col.Evict(t.Context(), before-1, 0, e.m.Clock.Now())
	if err != nil {
		t.Fatal(err)
	}
	if !r.DryRun || r.ImagesEvicted != 1 || r.Evicted[0].Digest.String() != a.digest ||
		r.ManifestsRemoved != len(a.manifests) || r.BlobsRemoved != len(a.blobs) {
		t.Fatalf("dry run report %+v", r)
	}
	if e.m.Index.StoredBytes() != before || len(images(t, col)) != 3 {
		t.Fatal("a dry run changed the cache")
	}
	e.wantStored(t, true, a.content()...)
}

// Collect removes what no image references, and nothing else.
func TestCollect(t *testing.T) {
	e := newEnv(t)
	a, b, c := seedThree(t, e)
	ctx := t.Context()
	junk := make([]byte, 4096)
	rand.Read(junk)
	jd := digest.FromBytes(junk)
	if err := e.store.Put(ctx, "", jd, int64(len(junk)), strings.NewReader(string(junk))); err != nil {
		t.Fatal(err)
	}
	before := e.m.Index.StoredBytes()

	// Within the grace period (on the wall clock the files were written
	// by): kept.
	if r, err := lifecycle.New(e.store, e.m.Index, lifecycle.Options{Grace: time.Hour}).Collect(ctx); err != nil || r.BlobsRemoved != 0 || r.Kept != 1 {
		t.Fatalf("Collect within the grace period = %+v, %v", r, err)
	}
	// In use: kept. An index entry whose content is gone goes.
	ghost := digest.FromString("ghost")
	if err := e.m.Index.RecordBlob("docker.io", "library/a", ghost, 100, e.m.Clock.Now()); err != nil {
		t.Fatal(err)
	}
	inUse := lifecycle.NewInUse()
	release, err := inUse.Acquire(ctx, jd)
	if err != nil {
		t.Fatal(err)
	}
	// (A held digest is kept as a root is: it is not even a candidate.)
	r, err := e.collector(lifecycle.Options{Guard: inUse}).Collect(ctx)
	if err != nil || r.BlobsRemoved != 1 || r.BytesFreed != 0 {
		t.Fatalf("Collect with the junk in use = %+v, %v", r, err)
	}
	if _, ok, _ := e.m.Index.Blob(ghost); ok {
		t.Error("the entry of missing content survived")
	}
	if got := e.m.Index.StoredBytes(); got != before {
		t.Errorf("stored %d, want %d", got, before)
	}
	e.wantStored(t, true, jd.String())
	release()

	r, err = e.collector(lifecycle.Options{}).Collect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if r.BlobsRemoved != 1 || r.ManifestsRemoved != 0 || r.BytesFreed != int64(len(junk)) {
		t.Fatalf("Collect = %+v, want the junk removed", r)
	}
	e.wantStored(t, false, jd.String())
	for _, im := range []image{a, b, c} {
		e.wantStored(t, true, im.content()...)
	}
	if r, err := e.collector(lifecycle.Options{}).Collect(ctx); err != nil || r.BlobsRemoved+r.ManifestsRemoved != 0 {
		t.Fatalf("second Collect = %+v, %v", r, err)
	}
}

// A manifest recorded without a root (a child fetched for an image whose
// tag is gone) is collected with its blobs.
func TestCollectUnreferencedImage(t *testing.T) {
	e := newEnv(t)
	_, b, _ := seedThree(t, e)
	if err := e.m.Index.DeleteTag("docker.io", "library/b", "v1"); err != nil {
		t.Fatal(err)
	}
	if err := e.m.Index.DeleteFill("docker.io", "library/b", digest.Digest(b.digest)); err != nil {
		t.Fatal(err)
	}
	r, err := e.collector(lifecycle.Options{}).Collect(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if r.ManifestsRemoved != 1 || r.BlobsRemoved != len(b.blobs) {
		t.Fatalf("Collect = %+v", r)
	}
	e.wantStored(t, false, b.content()...)
	if ok, _ := e.m.Index.Linked("docker.io", "library/b", digest.Digest(b.blobs[0])); ok {
		t.Error("a collected blob is still linked")
	}
}

func flipByte(t *testing.T, path string) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)/2] ^= 0xff
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// Verify finds corrupt blobs and manifests, removes them and what points
// to them, and the proxy fetches them again cleanly.
func TestVerify(t *testing.T) {
	e := newEnv(t)
	a, b, c := seedThree(t, e)
	ctx := t.Context()
	col := e.collector(lifecycle.Options{})

	if r, err := col.Verify(ctx); err != nil || r.CorruptFound() != 0 || r.Missing != 0 ||
		r.ManifestsChecked != len(a.manifests)+2 || r.BlobsChecked != len(a.blobs)+len(b.blobs)+len(c.blobs) {
		t.Fatalf("Verify of a sound store = %+v, %v", r, err)
	}

	layer := b.blobs[1]
	var child string // a platform image of a
	for d := range a.manifests {
		if d != a.digest {
			child = d
			break
		}
	}
	flipByte(t, e.path(layer))
	flipByte(t, e.path(child))
	flipByte(t, e.path(c.digest)) // c's (tagged) manifest

	dry, err := e.collector(lifecycle.Options{DryRun: true}).Verify(ctx)
	if err != nil || dry.CorruptBlobs != 1 || dry.CorruptManifests != 2 {
		t.Fatalf("dry-run Verify = %+v, %v", dry, err)
	}
	e.wantStored(t, true, layer, child, c.digest)

	r, err := col.Verify(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if r.CorruptBlobs != 1 || r.CorruptManifests != 2 || r.BlobsRemoved != 1 || r.ManifestsRemoved != 2 || r.TagsRemoved != 1 || r.FillsReset != 2 {
		t.Fatalf("Verify = %+v", r)
	}
	if !slices.Contains(r.Corrupt, digest.Digest(layer)) || !slices.Contains(r.Corrupt, digest.Digest(child)) {
		t.Errorf("Corrupt = %v", r.Corrupt)
	}
	e.wantStored(t, false, layer, child, c.digest)
	if _, ok, _ := e.m.Index.Blob(digest.Digest(layer)); ok {
		t.Error("the corrupt blob's record survived")
	}
	if _, ok, _ := e.m.Index.Manifest(digest.Digest(child)); ok {
		t.Error("the corrupt manifest's record survived")
	}
	if ok, _ := e.m.Index.Linked("docker.io", "library/a", digest.Digest(child)); ok {
		t.Error("the corrupt manifest is still linked")
	}
	if _, ok, _ := e.m.Index.Tag("docker.io", "library/c", "v1"); ok {
		t.Error("the tag of a corrupt manifest survived")
	}
	for _, im := range []image{a, b} {
		if rec, _, _ := e.m.Index.Fill("docker.io", "library/"+im.repo, digest.Digest(im.digest)); rec.State != storage.FillPartial {
			t.Errorf("%s's mirror state is %q, want partial", im.repo, rec.State)
		}
	}

	// Pulls fetch them again, and they verify.
	for _, im := range []image{a, b, c} {
		e.pull(t, im)
		e.wantPull(t, im)
	}
	e.m.WaitIdle()
	if r, err := col.Verify(ctx); err != nil || r.CorruptFound() != 0 || r.Missing != 0 {
		t.Fatalf("Verify after the refetch = %+v, %v", r, err)
	}
	if rec, _, _ := e.m.Index.Fill("docker.io", "library/a", digest.Digest(a.digest)); rec.State != storage.FillComplete {
		t.Errorf("a's mirror state is %q after the pull, want complete", rec.State)
	}
}

// Verify removes the entries of content missing from the store.
func TestVerifyMissing(t *testing.T) {
	e := newEnv(t)
	_, b, _ := seedThree(t, e)
	if err := os.RemoveAll(filepath.Dir(e.path(b.blobs[0]))); err != nil {
		t.Fatal(err)
	}
	r, err := e.collector(lifecycle.Options{}).Verify(t.Context())
	if err != nil || r.Missing != 1 || r.CorruptFound() != 0 || r.BlobsRemoved != 1 || r.BytesFreed != 0 {
		t.Fatalf("Verify = %+v, %v", r, err)
	}
	if _, ok, _ := e.m.Index.Blob(digest.Digest(b.blobs[0])); ok {
		t.Error("the missing blob's record survived")
	}
	e.wantPull(t, b)
}

func TestMetrics(t *testing.T) {
	e := newEnv(t)
	seedThree(t, e)
	// The server's own collector, whose metrics /metrics serves, past its
	// grace period.
	e.m.Clock.Advance(lifecycle.DefaultGrace + time.Minute)
	if _, err := e.m.Server.Collector.Evict(t.Context(), 1, 0, e.m.Clock.Now()); err != nil {
		t.Fatal(err)
	}
	_, body, _ := get(t, e.m.URL()+"/metrics")
	for _, want := range []string{
		"docker_mirror_evictions_total 3",
		`docker_mirror_removed_content_total{kind="manifest",reason="evict"} 9`,
		`docker_mirror_lifecycle_runs_total{operation="evict",result="ok"} 1`,
		"docker_mirror_freed_bytes_total",
		"docker_mirror_store_size_bytes 0",
	} {
		if !strings.Contains(string(body), want) {
			t.Errorf("metrics lack %q", want)
		}
	}
}

// Run evicts on each tick.
func TestRun(t *testing.T) {
	e := newEnv(t)
	seedThree(t, e)
	m := lifecycle.NewMetrics()
	col := e.collector(lifecycle.Options{Metrics: m})
	ctx, cancel := context.WithCancel(t.Context())
	ticks := make(chan time.Time)
	done := make(chan struct{})
	go func() {
		defer close(done)
		col.Run(ctx, ticks, nil, lifecycle.Policy{MaxSize: 1})
	}()
	ticks <- time.Time{}
	ticks <- time.Time{} // taken once the first run is over
	cancel()
	<-done
	if got := e.m.Index.StoredBytes(); got != 0 {
		t.Errorf("stored %d after Run", got)
	}
}

func TestInUse(t *testing.T) {
	u := lifecycle.NewInUse()
	d := digest.FromString("x")
	release, err := u.Acquire(t.Context(), d)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := u.Claim(d); ok || !u.Busy(d) {
		t.Fatal("claimed a digest in use")
	}
	release()
	release() // idempotent
	done, ok := u.Claim(d)
	if !ok {
		t.Fatal("could not claim a released digest")
	}
	if _, ok := u.Claim(d); ok {
		t.Fatal("claimed twice")
	}
	acquired := make(chan func())
	go func() {
		rel, err := u.Acquire(context.Background(), d)
		if err != nil {
			t.Error(err)
		}
		acquired <- rel
	}()
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if _, err := u.Acquire(ctx, d); !errors.Is(err, context.Canceled) {
		t.Fatalf("Acquire during a removal with a cancelled context = %v", err)
	}
	done()
	(<-acquired)()
	if u.Busy(d) {
		t.Fatal("busy after every release")
	}
	if _, ok := lifecycle.BusyFunc(func(digest.Digest) bool { return true }).Claim(d); ok {
		t.Fatal("BusyFunc claimed a busy digest")
	}
}

// A set of claims: each digest claimed once (not by another set, not
// twice, not while acquired), sha256 and other digests alike; Acquire
// waits for the set's release; and it keeps less than ~100 bytes a claim
// (a channel, a closure and a digest string each were ~230).
func TestInUseClaims(t *testing.T) {
	u := lifecycle.NewInUse()
	a, b, sha512 := digest.FromString("a"), digest.FromString("b"), digest.SHA512.FromString("c")
	rel, err := u.Acquire(t.Context(), b)
	if err != nil {
		t.Fatal(err)
	}
	set, other := u.Claims(), u.Claims()
	if !set.Claim(a) || !set.Claim(sha512) || set.Claim(a) || set.Claim(b) || other.Claim(a) || other.Claim(sha512) {
		t.Fatal("a claim granted twice, or on a digest in use")
	}
	if _, ok := u.Claim(sha512); ok || !u.Busy(a) || !u.Busy(sha512) {
		t.Fatal("claimed digests not busy")
	}
	rel()
	if !other.Claim(b) {
		t.Fatal("a released digest not claimed")
	}
	other.Release()
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	for _, d := range []digest.Digest{a, sha512} {
		if _, err := u.Acquire(ctx, d); !errors.Is(err, context.Canceled) {
			t.Fatalf("Acquire(%s) during a removal = %v, want it waiting", d, err)
		}
	}
	acquired := make(chan func())
	go func() {
		rel, err := u.Acquire(context.Background(), a)
		if err != nil {
			t.Error(err)
		}
		acquired <- rel
	}()
	set.Release()
	set.Release() // idempotent
	(<-acquired)()
	if set.Claim(b) || u.Busy(a) || u.Busy(sha512) || u.Busy(b) {
		t.Fatal("claims outlive the set's release")
	}

	const n = 20000
	ds := make([]digest.Digest, n)
	for i := range ds {
		ds[i] = digest.FromString(fmt.Sprint(i))
	}
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	many := u.Claims()
	for _, d := range ds {
		if !many.Claim(d) {
			t.Fatalf("%s not claimed", d)
		}
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	runtime.KeepAlive(ds)
	per := (int64(after.HeapAlloc) - int64(before.HeapAlloc)) / n
	t.Logf("%d bytes a claim", per)
	if per > 100 {
		t.Errorf("%d bytes a claim, want at most 100", per)
	}
	many.Release()
}

func TestNewForStore(t *testing.T) {
	if _, err := lifecycle.NewForStore(nil, nil, lifecycle.Options{}); !errors.Is(err, lifecycle.ErrRegistryDestination) {
		t.Fatalf("NewForStore(not the embedded store) = %v", err)
	}
}

// A child manifest a client pulled by digest has a mirror record of its
// own; it is part of its index's image, and goes with it.
func TestChildPulledByDigestFoldsIntoIndex(t *testing.T) {
	e := newEnv(t)
	ma := e.up.SeedMultiArch(t, "library/a", "v1", fixture.OCI)
	a := multi(ma)
	a.repo = "a"
	child := ma.Platforms["linux/arm64"].Digest
	if status, _, _ := get(t, e.m.URL()+"/v2/a/manifests/"+child); status != http.StatusOK {
		t.Fatalf("child: status %d", status)
	}
	e.m.WaitIdle()
	if _, ok, _ := e.m.Index.Fill("docker.io", "library/a", digest.Digest(child)); !ok {
		t.Fatal("the child pulled by digest has no mirror record")
	}
	e.pull(t, a)
	col := e.collector(lifecycle.Options{})
	list := images(t, col)
	if len(list) != 1 || list[0].Digest.String() != a.digest {
		t.Fatalf("Images = %+v, want the index alone", list)
	}
	r, err := col.Evict(t.Context(), 1, 0, e.m.Clock.Now())
	if err != nil {
		t.Fatal(err)
	}
	if r.ImagesEvicted != 1 || r.ManifestsRemoved != len(a.manifests) || r.BlobsRemoved != len(a.blobs) || e.m.Index.StoredBytes() != 0 {
		t.Fatalf("Evict = %+v, stored %d", r, e.m.Index.StoredBytes())
	}
	if _, ok, _ := e.m.Index.Fill("docker.io", "library/a", digest.Digest(child)); ok {
		t.Error("the child's mirror record survived its index")
	}
}

// pullAll is wantPull for goroutines: it returns the first problem.
func (e *env) pullAll(ctx context.Context, im image) error {
	fetch := func(path string) ([]byte, error) {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, e.m.URL()+"/v2/"+im.repo+path, nil)
		if err != nil {
			return nil, err
		}
		req.Header.Set("Accept", accept)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return nil, err
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		if err == nil && resp.StatusCode != http.StatusOK {
			err = errors.New(path + ": " + resp.Status)
		}
		return body, err
	}
	refs := []string{"/manifests/" + im.tag}
	for d := range im.manifests {
		refs = append(refs, "/manifests/"+d)
	}
	for _, d := range im.blobs {
		refs = append(refs, "/blobs/"+d)
	}
	for _, ref := range refs {
		body, err := fetch(ref)
		if err != nil {
			return err
		}
		if want := ref[strings.LastIndexByte(ref, '/')+1:]; strings.HasPrefix(want, "sha256:") && sha(body) != want {
			return errors.New(ref + ": wrong bytes")
		}
	}
	return nil
}

// Evictions and collections running while clients pull never touch what
// a kept image needs.
func TestEvictWhilePulling(t *testing.T) {
	e := newEnv(t)
	a, b, c := seedThree(t, e)
	col := e.collector(lifecycle.Options{})
	if err := col.Pin(t.Context(), a.digest, "test"); err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	errs := make(chan error, 1)
	go func() {
		var first error
		for range 5 {
			if err := e.pullAll(ctx, a); err != nil && first == nil {
				first = err
			}
			_ = e.pullAll(ctx, b) // evicted meanwhile or not: refetched
			_ = e.pullAll(ctx, c)
		}
		errs <- first
	}()
	for range 5 {
		if _, err := col.Evict(ctx, 1, 0, e.m.Clock.Now()); err != nil {
			t.Error(err)
		}
		if _, err := col.Collect(ctx); err != nil {
			t.Error(err)
		}
	}
	if err := <-errs; err != nil {
		t.Fatalf("pulling the pinned image: %v", err)
	}
	e.m.WaitIdle()
	e.up.Stop()
	e.wantPull(t, a)
}

// The same image cached in two repositories is two images; evicting one
// keeps the content the other needs, and its mirror state.
func TestEvictSameDigestInTwoRepositories(t *testing.T) {
	e := newEnv(t)
	im := e.up.SeedImage(t, "library/x", "v1", 2, 4<<10)
	for _, d := range im.Blobs() {
		status, body, _ := get(t, e.up.URL()+"/v2/library/x/blobs/"+d)
		if status != http.StatusOK {
			t.Fatalf("upstream blob %s: %d", d, status)
		}
		e.up.PushBlob(t, "library/y", body)
	}
	e.up.PutManifest(t, "library/y", "v1", im.MediaType, im.Manifest)
	x, y := single("x", "v1", im), single("y", "v1", im)
	e.pull(t, x)
	e.m.Clock.Advance(time.Hour)
	e.pull(t, y)

	col := e.collector(lifecycle.Options{})
	list := images(t, col)
	if len(list) != 2 || list[0].Repo != "library/x" || list[1].Repo != "library/y" || list[0].Size != list[1].Size {
		t.Fatalf("Images = %+v", list)
	}
	// The size limit is met already: both keep the same bytes.
	if r, err := col.Evict(t.Context(), list[1].Size, 0, e.m.Clock.Now()); err != nil || r.ImagesEvicted != 0 {
		t.Fatalf("Evict to the size of one = %+v, %v", r, err)
	}
	// A pull of either is one of the manifest both have as their root:
	// by age, they go together; y's tag pinned, x goes alone.
	if err := col.Pin(t.Context(), storage.TagKey("docker.io", "library/y", "v1"), "test"); err != nil {
		t.Fatal(err)
	}
	e.m.Clock.Advance(time.Hour)
	r, err := col.Evict(t.Context(), 0, 30*time.Minute, e.m.Clock.Now())
	if err != nil {
		t.Fatal(err)
	}
	if r.ImagesEvicted != 1 || r.Evicted[0].Repo != "library/x" || r.BlobsRemoved+r.ManifestsRemoved != 0 {
		t.Fatalf("Evict = %+v", r)
	}
	d := digest.Digest(im.Digest)
	if _, ok, _ := e.m.Index.Fill("docker.io", "library/x", d); ok {
		t.Error("x's mirror state survived")
	}
	if rec, ok, _ := e.m.Index.Fill("docker.io", "library/y", d); !ok || rec.State != storage.FillComplete {
		t.Errorf("y's mirror state = %+v, %v", rec, ok)
	}
	e.up.Stop()
	e.wantPull(t, y)
}

// A dry-run collection counts nothing of an image a root keeps: a tag, a
// mirror record (an image pulled by digest) or a pin, each alone.
func TestCollectDryRunKeepsRoots(t *testing.T) {
	e := newEnv(t)
	a, b, c := seedThree(t, e)
	// a: its tag alone.
	if err := e.m.Index.DeleteFill("docker.io", "library/a", digest.Digest(a.digest)); err != nil {
		t.Fatal(err)
	}
	// b: its mirror record alone.
	if err := e.m.Index.DeleteTag("docker.io", "library/b", "v1"); err != nil {
		t.Fatal(err)
	}
	// c: its pin alone.
	if err := e.m.Index.DeleteTag("docker.io", "library/c", "v1"); err != nil {
		t.Fatal(err)
	}
	if err := e.m.Index.DeleteFill("docker.io", "library/c", digest.Digest(c.digest)); err != nil {
		t.Fatal(err)
	}
	col := e.collector(lifecycle.Options{DryRun: true})
	if err := col.Pin(t.Context(), c.digest, "admin"); err != nil {
		t.Fatal(err)
	}
	r, err := col.Collect(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if !r.DryRun || r.BlobsRemoved != 0 || r.ManifestsRemoved != 0 || r.BytesFreed != 0 {
		t.Errorf("dry-run Collect = %+v, want nothing removable (a tagged, b mirrored, c pinned)", r)
	}
	for _, im := range []image{a, b, c} {
		e.wantStored(t, true, im.content()...)
	}
}

// claimHook is a Guard that runs first before its first claim, and
// grants every claim.
type claimHook struct {
	first func()
	once  sync.Once
}

func (g *claimHook) Claim(digest.Digest) (func(), bool) {
	g.once.Do(g.first)
	return func() {}, true
}

// A root recorded while a collection runs (after the marking, before the
// removal) keeps its content: a pull tags an unreferenced old image again.
func TestCollectRereadsRoots(t *testing.T) {
	e := newEnv(t)
	b, retag := unreferencedB(t, e)
	retagged := false
	guard := &claimHook{first: func() {
		retag()
		retagged = true
	}}
	r, err := e.collector(lifecycle.Options{Guard: guard}).Collect(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if !retagged {
		t.Fatal("the collection claimed nothing: b was not unreferenced")
	}
	if r.BlobsRemoved != 0 || r.ManifestsRemoved != 0 {
		t.Errorf("Collect = %+v, want b kept by its new tag", r)
	}
	e.wantStored(t, true, b.content()...)
}

// With an Owned filter, a collector removes only the unreferenced content
// it owns: another replica's digests are left for that replica.
func TestCollectOwnedOnly(t *testing.T) {
	e := newEnv(t)
	ctx := t.Context()
	var mine, theirs digest.Digest
	for i, b := range [][]byte{[]byte("junk one"), []byte("junk two")} {
		d := digest.FromBytes(b)
		if err := e.store.Put(ctx, "", d, int64(len(b)), strings.NewReader(string(b))); err != nil {
			t.Fatal(err)
		}
		if i == 0 {
			mine = d
		} else {
			theirs = d
		}
	}
	r, err := e.collector(lifecycle.Options{Owned: func(d digest.Digest) bool { return d == mine }}).Collect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if r.BlobsRemoved != 1 || r.Kept != 1 {
		t.Fatalf("Collect = %+v; want the owned junk removed, the other kept", r)
	}
	e.wantStored(t, false, mine.String())
	e.wantStored(t, true, theirs.String())
}

// An image held by its digest's pin alone (no tag, no mirror record) is
// listed under the first repository it is linked to, pinned, whole.
func TestImagesPinOnly(t *testing.T) {
	e := newEnv(t)
	_, _, c := seedThree(t, e)
	if err := e.m.Index.DeleteTag("docker.io", "library/c", "v1"); err != nil {
		t.Fatal(err)
	}
	if err := e.m.Index.DeleteFill("docker.io", "library/c", digest.Digest(c.digest)); err != nil {
		t.Fatal(err)
	}
	col := e.collector(lifecycle.Options{})
	if err := col.Pin(t.Context(), c.digest, "admin"); err != nil {
		t.Fatal(err)
	}
	ic := findImage(t, images(t, col), c.digest)
	if ic.Name() != "docker.io/library/c" || !ic.Pinned || len(ic.Tags) != 0 || ic.State != "" ||
		ic.Manifests != len(c.manifests) || ic.Blobs != len(c.blobs) || !slices.Equal(ic.Platforms, []string{"linux/amd64"}) {
		t.Errorf("pinned image c = %+v", ic)
	}
}

// An image pulled while its upstream is down (the tag served from the
// cache, not revalidated) counts as pulled, even though the same image in
// another repository keeps its root manifest: evict_after keeps it, and
// its next pull is still served.
func TestEvictAfterCountsPullOfSharedRootDuringOutage(t *testing.T) {
	e := newEnv(t)
	im := e.up.SeedImage(t, "library/x", "v1", 2, 4<<10)
	for _, d := range im.Blobs() {
		status, body, _ := get(t, e.up.URL()+"/v2/library/x/blobs/"+d)
		if status != http.StatusOK {
			t.Fatalf("upstream blob %s: %d", d, status)
		}
		e.up.PushBlob(t, "library/y", body)
	}
	e.up.PutManifest(t, "library/y", "v1", im.MediaType, im.Manifest)
	x, y := single("x", "v1", im), single("y", "v1", im)
	e.pull(t, x)
	e.m.Clock.Advance(time.Hour)
	e.pull(t, y)
	e.up.Stop()
	e.m.Clock.Advance(2 * time.Hour)
	e.wantPull(t, x) // from the cache: the tag cannot be revalidated

	col := e.collector(lifecycle.Options{})
	if ix := findImage(t, images(t, col), im.Digest); ix.Repo != "library/x" || !ix.LastPull.Equal(e.m.Clock.Now()) {
		t.Errorf("x's last pull = %v, want now (%v)", ix.LastPull, e.m.Clock.Now())
	}
	r, err := col.Evict(t.Context(), 0, 90*time.Minute, e.m.Clock.Now())
	if err != nil {
		t.Fatal(err)
	}
	if r.ImagesEvicted != 0 {
		t.Errorf("evicted %+v, pulled just now", r.Evicted)
	}
	e.wantPull(t, x)
}

// A client that cannot read an index, pulling a tag of one while the
// upstream is down, is answered its linux/amd64 image: that is a pull of
// the index's image too, even though another image (the same platform's
// image under a tag of its own) keeps that child. evict_after keeps it.
func TestEvictAfterCountsPullThroughIndexDuringOutage(t *testing.T) {
	e := newEnv(t)
	ma := e.up.SeedMultiArch(t, "library/a", "v1", fixture.OCI)
	a := multi(ma)
	a.repo = "a"
	child := ma.Platforms["linux/amd64"]
	for _, d := range child.Blobs() {
		status, body, _ := get(t, e.up.URL()+"/v2/library/a/blobs/"+d)
		if status != http.StatusOK {
			t.Fatalf("upstream blob %s: %d", d, status)
		}
		e.up.PushBlob(t, "library/a-amd64", body)
	}
	e.up.PutManifest(t, "library/a-amd64", "v1", child.MediaType, child.Manifest)
	e.pull(t, a)
	e.pull(t, single("a-amd64", "v1", child))
	e.up.Stop()
	e.m.Clock.Advance(2 * time.Hour)
	pullAmd64 := func() {
		t.Helper()
		req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, e.m.URL()+"/v2/a/manifests/v1", nil)
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Accept", child.MediaType)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil || resp.StatusCode != http.StatusOK || sha(body) != child.Digest {
			t.Fatalf("a:v1 as a single image: status %d, digest %s, want %s (%.200s)", resp.StatusCode, sha(body), child.Digest, body)
		}
	}
	pullAmd64() // from the cache: the tag cannot be revalidated

	col := e.collector(lifecycle.Options{})
	if ia := findImage(t, images(t, col), a.digest); !ia.LastPull.Equal(e.m.Clock.Now()) {
		t.Errorf("a's last pull = %v, want now (%v)", ia.LastPull, e.m.Clock.Now())
	}
	r, err := col.Evict(t.Context(), 0, 90*time.Minute, e.m.Clock.Now())
	if err != nil {
		t.Fatal(err)
	}
	for _, im := range r.Evicted {
		if im.Digest.String() == a.digest {
			t.Errorf("evicted a, pulled just now: %+v", r.Evicted)
		}
	}
	pullAmd64()
}

// A stored layer that cannot be read (bad sectors: EIO) is reported by
// verify as corrupt, and the rest checked: verify stopped at it, failing
// with the read's error, and --repair removed nothing, so the server kept
// serving a layer no client could read to its end.
func TestVerifyUnreadable(t *testing.T) {
	e := newEnv(t)
	_, b, _ := seedThree(t, e)
	layer := digest.Digest(b.blobs[1])
	bad := storetest.NewBadSectors(e.store.Driver())
	bad.FailBlob(layer)
	store := storage.NewDriverStore(bad)
	col := lifecycle.New(store, e.m.Index, lifecycle.Options{Now: e.m.Clock.Now})
	r, err := col.Verify(t.Context())
	if err != nil || r.CorruptBlobs != 1 || !slices.Contains(r.Corrupt, layer) || r.BlobsRemoved != 1 {
		t.Fatalf("Verify with %s unreadable = %+v, %v; want it corrupt and removed", layer, r, err)
	}
	if _, ok, _ := e.m.Index.Blob(layer); ok {
		t.Error("the unreadable layer's record survived")
	}
	e.wantStored(t, false, layer.String())
	e.wantPull(t, b)
}

// A page of the index damaged while the server runs (bad sectors under
// it) made the periodic pass's read of the index panic in bbolt, in the
// lifecycle's goroutine: the server died with a stack trace. Run now ends
// with the error, saying the index is damaged, naming it and what to do.
func TestRunEndsOnDamagedIndex(t *testing.T) {
	e := newEnv(t)
	seedThree(t, e)
	path := e.m.Index.Path()
	pg, ok := fixture.BucketPages(t, path)["blobs"]
	if !ok {
		t.Fatal("the blobs bucket has no page of its own")
	}
	fixture.DamagePage(t, path, pg)
	col := e.collector(lifecycle.Options{})
	ticks := make(chan time.Time)
	done := make(chan error, 1)
	go func() { done <- col.Run(t.Context(), ticks, nil, lifecycle.Policy{}) }()
	ticks <- time.Time{}
	if err := <-done; !errors.Is(err, storage.ErrDamaged) || !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), "move it aside") {
		t.Fatalf("Run on a damaged index = %v; want it to end saying %s is damaged, and what to do", err, path)
	}
}

// An image pulled by digest while a pass drops its manifest's unreadable
// record (containerd pulls by digest once it has the tag's; the pull,
// finding no record, fetched the manifest and recorded it again) is kept:
// the pass then forgot the new record with the tags naming it, and
// removed the manifest from the store, as it removes the content of the
// record it dropped; the image just pulled was gone, and with the
// upstream down its next pull failed.
func TestPullDuringADropOfItsRecordKeepsTheImage(t *testing.T) {
	e := newEnv(t)
	x := single("library/x", "v1", e.up.SeedImage(t, "library/x", "v1", 1, 4<<10))
	x.repo = "x"
	e.pull(t, x)
	e.m.Stop()
	fixture.DamageRecord(t, filepath.Join(e.m.Dir(), "index.db"), "manifests", x.digest)
	e.m.Restart()
	e.store = e.m.Store.(*storage.DriverStore)
	// The pull comes at the pass's first claim: the record dropped, the
	// content not yet removed.
	col := e.collector(lifecycle.Options{Guard: &claimHook{first: func() {
		if status, body, _ := get(t, e.m.URL()+"/v2/x/manifests/"+x.digest); status != http.StatusOK || sha(body) != x.digest {
			t.Fatalf("pull of x by digest during the pass: status %d, digest %s", status, sha(body))
		}
		e.m.WaitIdle()
	}}})
	r, err := col.Pass(t.Context(), lifecycle.Policy{})
	if err != nil || len(r.UnreadableRecords) != 1 {
		t.Fatalf("a pass beside an unreadable manifest record: %+v, %v; want it dropped", r, err)
	}
	if _, ok, err := e.m.Index.Tag("docker.io", "library/x", "v1"); err != nil || !ok {
		t.Errorf("x:v1, pulled again during the pass, lost its tag (%v)", err)
	}
	e.up.Stop()
	e.wantPull(t, x)
}
