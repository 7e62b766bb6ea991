package lifecycle

import (
	"bytes"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
	"unsafe"

	"github.com/opencontainers/go-digest"

	"github.com/docker-mirror/docker-mirror/storage"
)

// tagIndex is an index of two images in one repository, a with three
// tags and a cosign signature (sha256-<hex>.sig), b with one, their
// manifests not stored; and a collector of it.
func tagIndex(t *testing.T) (c *Collector, ix *storage.Index, a, b digest.Digest) {
	t.Helper()
	ix, store := openIndexStore(t)
	a, b = digest.FromString("a"), digest.FromString("b")
	sig := digest.FromString("signature of a")
	for _, m := range []struct {
		d   digest.Digest
		tag string
	}{{a, "v3"}, {a, "v1"}, {a, "v2"}, {b, "latest"}, {sig, "sha256-" + a.Encoded() + ".sig"}} {
		if err := ix.RecordManifest(storage.ManifestEntry{Upstream: "docker.io", Repo: "library/app", Digest: m.d, Tag: m.tag,
			Record: storage.ManifestRecord{MediaType: "application/vnd.oci.image.manifest.v1+json", Size: 100}}); err != nil {
			t.Fatal(err)
		}
	}
	return New(store, ix, Options{}), ix, a, b
}

// The eviction's model keeps no plain tags (1M at 100k images), only the
// referrers and cosign tags that decide what is folded into what; the
// victims' tags are read again once they are chosen: the report lists
// them, sorted, and they leave the index with the signature's tag.
func TestEvictModelWithoutTags(t *testing.T) {
	c, ix, a, b := tagIndex(t)
	m, err := c.model(t.Context(), false, false)
	if err != nil {
		t.Fatal(err)
	}
	if len(m.images) != 2 {
		t.Fatalf("%d images, want 2 (the signature folded into a)", len(m.images))
	}
	for _, i := range m.images {
		e := &m.entries[i]
		if len(e.tags) != 0 || !e.plainTags {
			t.Errorf("%s: tags %q kept (plain tags noted: %v), want none", m.digest(e), e.tags, e.plainTags)
		}
		if m.digest(e) == a && (len(m.folded[i]) != 1 || len(splitTags(m.entries[m.folded[i][0]].tags)) != 1) {
			t.Errorf("a: folded %v, want its signature with its tag", m.folded[i])
		}
	}

	r, err := c.Evict(t.Context(), 0, time.Hour, time.Now().Add(48*time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	want := map[digest.Digest][]string{a: {"v1", "v2", "v3"}, b: {"latest"}}
	if len(r.Evicted) != 2 {
		t.Fatalf("evicted %+v, want a and b", r.Evicted)
	}
	for _, im := range r.Evicted {
		if !slices.Equal(im.Tags, want[im.Digest]) {
			t.Errorf("%s evicted with tags %q, want %q", im.Digest, im.Tags, want[im.Digest])
		}
	}
	left := 0
	if err := ix.ReadTagDigests(func(key, _ []byte) { left++ }); err != nil || left != 0 {
		t.Errorf("%d tags left after the eviction (%v), want none", left, err)
	}
}

// A last pull not yet flushed, of a digest without records that sorts
// first, takes an identifier in the content table before the tags are
// read: the model's images keep their digests (the identifiers the tags'
// callbacks looked up are the table's).
func TestModelUnflushedPullWithoutRecords(t *testing.T) {
	c, ix, a, b := tagIndex(t)
	if err := ix.TouchManifest(digest.Digest("sha256:"+strings.Repeat("0", 64)), time.Now()); err != nil {
		t.Fatal(err)
	}
	for _, details := range []bool{false, true} {
		m, err := c.model(t.Context(), details, details)
		if err != nil {
			t.Fatal(err)
		}
		var got []digest.Digest
		for _, i := range m.images {
			got = append(got, m.digest(&m.entries[i]))
		}
		slices.Sort(got)
		want := []digest.Digest{a, b}
		slices.Sort(want)
		if !slices.Equal(got, want) {
			t.Errorf("details %v: images %v, want %v", details, got, want)
		}
	}
}

// Digests other than sha256 (sha512) are the identifiers' fallback (kept
// as strings): a sha512 image is listed, kept by a collection that removes
// the unreferenced sha512 blobs (recorded or only stored), and evicted
// whole.
func TestLifecycleSHA512(t *testing.T) {
	ctx := t.Context()
	ix, store := openIndexStore(t)
	put := func(data []byte) digest.Digest {
		d := digest.SHA512.FromBytes(data)
		if err := store.Put(ctx, "library/app", d, int64(len(data)), bytes.NewReader(data)); err != nil {
			t.Fatal(err)
		}
		return d
	}
	cfg := []byte(`{"architecture":"amd64","os":"linux"}`)
	layer := []byte("a sha512 layer")
	cfgD, layerD := put(cfg), put(layer)
	body := []byte(fmt.Sprintf(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",`+
		`"config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":%q,"size":%d},`+
		`"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":%q,"size":%d}]}`, cfgD, len(cfg), layerD, len(layer)))
	man := put(body)
	old := time.Now().Add(-time.Hour)
	if err := ix.RecordManifest(storage.ManifestEntry{Upstream: "docker.io", Repo: "library/app", Digest: man, Tag: "v1",
		Record: storage.ManifestRecord{MediaType: "application/vnd.oci.image.manifest.v1+json", Size: int64(len(body)), FetchedAt: old}}); err != nil {
		t.Fatal(err)
	}
	for _, b := range []struct {
		d digest.Digest
		n int
	}{{cfgD, len(cfg)}, {layerD, len(layer)}} {
		if err := ix.RecordBlob("docker.io", "library/app", b.d, int64(b.n), old); err != nil {
			t.Fatal(err)
		}
	}
	recorded, unrecorded := put([]byte("recorded, unreferenced")), put([]byte("only stored"))
	if err := ix.RecordBlob("docker.io", "library/app", recorded, 22, old); err != nil {
		t.Fatal(err)
	}
	c := New(store, ix, Options{})
	stored := func(d digest.Digest) bool {
		_, err := store.Stat(ctx, "", d)
		return err == nil
	}

	list, err := c.Images(ctx)
	if err != nil || len(list) != 1 {
		t.Fatalf("Images = %+v, %v; want the sha512 image", list, err)
	}
	if im := list[0]; im.Digest != man || im.Manifests != 1 || im.Blobs != 2 || im.Size != int64(len(body)+len(cfg)+len(layer)) ||
		!slices.Equal(im.Platforms, []string{"linux/amd64"}) || im.MediaType != "application/vnd.oci.image.manifest.v1+json" {
		t.Errorf("image %+v", im)
	}
	r, err := c.Collect(ctx)
	if err != nil || r.BlobsRemoved != 2 || r.ManifestsRemoved != 0 {
		t.Fatalf("Collect = %+v, %v; want the two unreferenced blobs removed", r, err)
	}
	if stored(recorded) || stored(unrecorded) || !stored(man) || !stored(cfgD) || !stored(layerD) {
		t.Errorf("after the collection: unreferenced %v %v, image %v %v %v stored; want the image only",
			stored(recorded), stored(unrecorded), stored(man), stored(cfgD), stored(layerD))
	}
	r, err = c.Evict(ctx, 0, time.Minute, time.Now())
	if err != nil || r.ImagesEvicted != 1 || r.ManifestsRemoved != 1 || r.BlobsRemoved != 2 || !slices.Equal(r.Evicted[0].Tags, []string{"v1"}) {
		t.Fatalf("Evict = %+v, %v; want the image evicted whole", r, err)
	}
	if stored(man) || stored(cfgD) || stored(layerD) {
		t.Error("the evicted image's content is still stored")
	}
}

// An eviction's freed digests: sha256 as bytes, others (sha512, a
// sha256 digest in upper case) as strings; added after a lookup, found.
func TestDigestSet(t *testing.T) {
	var none *digestSet
	if none.has(digest.FromString("a")) {
		t.Error("the nil set has a digest")
	}
	s := &digestSet{}
	in := []digest.Digest{digest.FromString("a"), digest.SHA512.FromString("a"), digest.Digest("sha256:" + strings.ToUpper(digest.FromString("b").Encoded()))}
	out := []digest.Digest{digest.FromString("b"), digest.SHA512.FromString("b"), digest.Digest("sha256:" + strings.ToUpper(digest.FromString("a").Encoded()))}
	for i, d := range in {
		s.add(d)
		for _, e := range in[:i+1] {
			if !s.has(e) {
				t.Errorf("%s added, not found", e)
			}
		}
	}
	for _, d := range out {
		if s.has(d) {
			t.Errorf("%s found, never added", d)
		}
	}
	// By identifier: a digest of the table as its bytes, another (an
	// identifier given past the table) as its string.
	ix, err := storage.OpenIndex(filepath.Join(t.TempDir(), "index.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ix.Close() })
	if err := ix.RecordBlob("docker.io", "library/app", out[0], 10, time.Now()); err != nil {
		t.Fatal(err)
	}
	recs, err := ix.ReadImageTable(nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	ids := newDigestIDs(recs.Content)
	byID := &digestSet{}
	for _, d := range []digest.Digest{out[0], out[1], out[2]} {
		byID.addID(ids, ids.id(d))
	}
	for _, d := range append(in, out...) {
		if byID.has(d) != slices.Contains(out, d) {
			t.Errorf("added by identifier: has(%s) = %v", d, byID.has(d))
		}
	}
	// Many of the table's digests: a bit each (32 bytes each were ~6 MiB
	// at 100k images), found by digest, by identifier, and by the
	// identifiers of another read of the same records.
	var many []digest.Digest
	for i := range 256 {
		d := digest.FromString(fmt.Sprint("blob ", i))
		many = append(many, d)
		if err := ix.RecordBlob("docker.io", "library/app", d, 10, time.Now()); err != nil {
			t.Fatal(err)
		}
	}
	recs, err = ix.ReadImageTable(nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	ids = newDigestIDs(recs.Content)
	set := &digestSet{}
	for _, d := range many[:128] {
		set.addID(ids, ids.id(d))
	}
	again, err := ix.ReadImageTable(nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	other := newDigestIDs(again.Content)
	for i, d := range many {
		if want := i < 128; set.has(d) != want || set.hasID(ids, ids.id(d)) != want || set.hasID(other, other.id(d)) != want {
			t.Errorf("%s: has %v, hasID %v, by another table's identifier %v; want %v", d, set.has(d), set.hasID(ids, ids.id(d)), set.hasID(other, other.id(d)), want)
		}
	}
	if n := len(set.sha)*32 + len(set.inTable)*8; n > len(many)/4 {
		t.Errorf("128 digests of the table held in %d bytes, want at most %d", n, len(many)/4)
	}
}

// An eviction removes its victims' tags and mirror records a chunk of
// images at a time, in the order of their repositories, whatever order
// it chose them in: every one goes, and nothing else.
func TestUnrootAllChunks(t *testing.T) {
	ix, err := storage.OpenIndex(filepath.Join(t.TempDir(), "index.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ix.Close() })
	var us []storage.Unroot
	for i := range 7 {
		repo := fmt.Sprintf("library/app%d", (7-i)%3)
		d := digest.FromString(fmt.Sprintf("image %d", i))
		fill := &storage.FillRecord{Upstream: "docker.io", Repo: repo, State: storage.FillComplete}
		for _, tag := range []string{fmt.Sprintf("v%d", i), fmt.Sprintf("w%d", i)} {
			if err := ix.RecordManifest(storage.ManifestEntry{Upstream: "docker.io", Repo: repo, Digest: d, Tag: tag, Fill: fill,
				Record: storage.ManifestRecord{MediaType: "application/vnd.oci.image.manifest.v1+json", Size: 100}}); err != nil {
				t.Fatal(err)
			}
		}
		if i == 6 {
			continue // kept
		}
		us = append(us, storage.Unroot{Upstream: "docker.io", Repo: repo, Digest: d, Tags: []string{fmt.Sprintf("v%d", i), fmt.Sprintf("w%d", i)},
			Fills: []storage.FillKey{{Upstream: "docker.io", Repo: repo, Digest: d}}})
	}
	c := New(nil, ix, Options{})
	if _, _, err := c.unrootAll(us, 2); err != nil {
		t.Fatal(err)
	}
	var tags []string
	if err := ix.ReadTagDigests(func(key, _ []byte) { tags = append(tags, string(key)) }); err != nil {
		t.Fatal(err)
	}
	recs, err := ix.ReadImageTable(nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	kept := digest.FromString("image 6")
	if !slices.Equal(tags, []string{"docker.io/library/app1:v6", "docker.io/library/app1:w6"}) || len(recs.Fills) != 1 || recs.Fills[0].Digest != kept {
		t.Errorf("left: tags %q, fills %+v; want image 6's", tags, recs.Fills)
	}
}

// A collection sweeps its candidates as identifiers, in the order of
// their digests' strings (the index forgets them in key order): the
// table's sha256 digests by identifier, the others (upper-case sha256,
// sha512, digests without records) as strings.
func TestDigestIDsCompare(t *testing.T) {
	ix, err := storage.OpenIndex(filepath.Join(t.TempDir(), "index.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ix.Close() })
	var ds []digest.Digest
	for i := range 4 {
		d := digest.FromString(fmt.Sprintf("blob %d", i))
		switch i {
		case 2:
			d = digest.Digest("sha256:" + strings.ToUpper(d.Encoded()))
		case 3:
			d = digest.SHA512.FromString("blob 3")
		}
		ds = append(ds, d)
		if err := ix.RecordBlob("docker.io", "library/app", d, 10, time.Now()); err != nil {
			t.Fatal(err)
		}
	}
	recs, err := ix.ReadImageTable(nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	ids := newDigestIDs(recs.Content)
	ds = append(ds, digest.FromString("not recorded"), digest.FromString("not recorded either"), digest.SHA512.FromString("neither"))
	var got []int32
	for _, d := range ds {
		got = append(got, ids.id(d))
	}
	slices.SortFunc(got, ids.compare)
	want := slices.Sorted(slices.Values(ds))
	for i, id := range got {
		if ids.digest(id) != want[i] {
			t.Fatalf("sorted by identifier: %d is %s, want %s", i, ids.digest(id), want[i])
		}
	}
}

// The victims' tags are found by repository and digest identifier: a
// digest that is an image in two repositories, one of them pinned, goes
// from the other with that repository's tags only.
func TestVictimTagsByRepository(t *testing.T) {
	ix, err := storage.OpenIndex(filepath.Join(t.TempDir(), "index.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ix.Close() })
	store, err := storage.OpenDriverStore(t.Context(), "inmemory", map[string]any{})
	if err != nil {
		t.Fatal(err)
	}
	a := digest.FromString("a")
	for _, m := range []struct{ repo, tag string }{{"library/app", "v2"}, {"library/app", "v1"}, {"library/other", "x"}, {"library/app-x", "v1"}} {
		d := a
		if m.repo == "library/app-x" {
			d = digest.FromString("b")
		}
		if err := ix.RecordManifest(storage.ManifestEntry{Upstream: "docker.io", Repo: m.repo, Digest: d, Tag: m.tag,
			Record: storage.ManifestRecord{MediaType: "application/vnd.oci.image.manifest.v1+json", Size: 100}}); err != nil {
			t.Fatal(err)
		}
	}
	for _, ref := range []string{storage.TagKey("docker.io", "library/other", "x"), storage.TagKey("docker.io", "library/app-x", "v1")} {
		if err := ix.Pin(t.Context(), ref, storage.PinRecord{Reason: "test"}); err != nil {
			t.Fatal(err)
		}
	}
	r, err := New(store, ix, Options{}).Evict(t.Context(), 0, time.Hour, time.Now().Add(48*time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Evicted) != 1 || r.Evicted[0].Repo != "library/app" || !slices.Equal(r.Evicted[0].Tags, []string{"v1", "v2"}) {
		t.Fatalf("evicted %+v, want library/app with v1 and v2", r.Evicted)
	}
	var left []string
	if err := ix.ReadTagDigests(func(key, _ []byte) { left = append(left, string(key)) }); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(left, []string{"docker.io/library/app-x:v1", "docker.io/library/other:x"}) {
		t.Errorf("tags left %q", left)
	}
}

// An image's tags are one string: listed as they were added, sorted
// once, and strings of sorted tags compare as their lists (the order of
// `ls`: name, tags, digest).
func TestTagsInOneString(t *testing.T) {
	lists := [][]string{nil, {"a"}, {"a", "b"}, {"ab"}, {"a", "a-b"}, {"a-b"}, {"a", "b", "c"}, {"a.b", "a_b"}, {"b"}, {"latest", "v1.2.3", "v1.2.3-alpine"}}
	for _, a := range lists {
		var s string
		for _, tag := range a {
			s = joinTag(s, tag)
		}
		if got := splitTags(s); !slices.Equal(got, a) {
			t.Errorf("%q: split %q", a, got)
		}
		for _, b := range lists {
			var sb string
			for _, tag := range b {
				sb = joinTag(sb, []byte(tag))
			}
			if got, want := strings.Compare(s, sb), slices.Compare(a, b); got != want {
				t.Errorf("%q vs %q: %d, want %d", a, b, got, want)
			}
		}
	}
	if got := splitTags(sortTags(joinTag(joinTag(joinTag("", "v2"), "latest"), "v1"))); !slices.Equal(got, []string{"latest", "v1", "v2"}) {
		t.Errorf("sorted: %q", got)
	}
}

// An eviction's report keeps its images compactly until the collection
// is over: they come back as they were added, whatever their digests
// and lists.
func TestEvictedImages(t *testing.T) {
	at := time.Date(2026, 1, 2, 3, 4, 5, 6, time.FixedZone("X", 3600))
	in := []Image{
		{Upstream: "docker.io", Repo: "library/a", Tags: []string{"latest", "v1"}, Digest: digest.FromString("a"), MediaType: "application/vnd.oci.image.index.v1+json",
			Platforms: []string{"linux/amd64", "linux/arm64"}, PlatformsLeftOut: []string{"linux/s390x"}, Size: 123, Manifests: 3, Blobs: 4, LastPull: at, State: "complete"},
		{Upstream: "docker.io", Repo: "library/a", Digest: digest.SHA512.FromString("b"), Size: 1, Pinned: true},
		{Repo: "pinned-only", Digest: digest.Digest("sha256:" + strings.ToUpper(digest.FromString("c").Encoded())), State: StateMissing},
		{Upstream: "ghcr.io", Repo: "o/b", Tags: []string{"x"}, Digest: digest.FromString("d"), Platforms: []string{""}},
		{Upstream: "docker.io", Repo: "library/a", Tags: []string{"v2"}, Digest: digest.FromString("e"), MediaType: "application/vnd.oci.image.index.v1+json",
			Platforms: []string{"linux/amd64", "linux/arm64"}, Size: 5, Manifests: 2, Blobs: 2, LastPull: at.UTC(), State: "complete"},
		{Upstream: "docker.io", Repo: "library/f", Digest: digest.FromString("f"), MediaType: "application/vnd.oci.image.manifest.v1+json",
			Platforms: []string{"linux/amd64"}, LastPull: time.Unix(1700000000, 5), State: "partial", Pinned: true},
	}
	var ev evictedImages
	for _, im := range in {
		ev.add(im)
	}
	if ev.len() != len(in) {
		t.Fatalf("%d images, want %d", ev.len(), len(in))
	}
	got := ev.images()
	if fmt.Sprintf("%#v", got) != fmt.Sprintf("%#v", in) {
		t.Errorf("images\n%#v\nwant\n%#v", got, in)
	}
	if (&evictedImages{}).images() != nil {
		t.Error("no images: not nil")
	}
	// 184 bytes with a string per media type, state and platform list
	// and a time.Time (round 8).
	if n := unsafe.Sizeof(evictedImage{}); n > 104 {
		t.Errorf("an evicted image is %d bytes, want at most 104 (an Image %d, with its strings ~560)", n, unsafe.Sizeof(Image{}))
	}
}

// A collection keeps a node per manifest (100k+ at 100k images): what
// only the image model uses of an index (its children's platforms, the
// config) is behind a pointer.
func TestIDNodeSize(t *testing.T) {
	if n := unsafe.Sizeof(idNode{}); n > 64 {
		t.Errorf("idNode is %d bytes, want at most 64", n)
	}
}

// openIndexStore opens an index in a temporary directory and an
// in-memory store, closed when the test ends.
func openIndexStore(t *testing.T) (*storage.Index, *storage.DriverStore) {
	t.Helper()
	ix, err := storage.OpenIndex(filepath.Join(t.TempDir(), "index.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ix.Close() })
	store, err := storage.OpenDriverStore(t.Context(), "inmemory", map[string]any{})
	if err != nil {
		t.Fatal(err)
	}
	return ix, store
}

// An image that is not an index and has no platform in its mirror record
// shows its config's: the configs are read in parallel (more images than
// parallelReads), each image given its own config's platform (an image
// only pinned too); an image in two repositories shares its config's; a
// config without "os", or not stored, gives none.
func TestImagesConfigPlatforms(t *testing.T) {
	ctx := t.Context()
	ix, store := openIndexStore(t)
	put := func(data []byte) digest.Digest {
		d := digest.FromBytes(data)
		if err := store.Put(ctx, "library/app", d, int64(len(data)), bytes.NewReader(data)); err != nil {
			t.Fatal(err)
		}
		return d
	}
	manifest := func(cfg digest.Digest, n int) digest.Digest {
		return put([]byte(fmt.Sprintf(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",`+
			`"config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":%q,"size":%d},"layers":[]}`, cfg, n)))
	}
	record := func(repo string, d digest.Digest, tag string) {
		if err := ix.RecordManifest(storage.ManifestEntry{Upstream: "docker.io", Repo: repo, Digest: d, Tag: tag,
			Record: storage.ManifestRecord{MediaType: "application/vnd.oci.image.manifest.v1+json", Size: 100}}); err != nil {
			t.Fatal(err)
		}
	}
	want := map[digest.Digest]string{}
	n := 3*parallelReads + 5
	for i := range n {
		variant := fmt.Sprintf("v%d", i) // a platform per image
		cfg := put([]byte(fmt.Sprintf(`{"architecture":"arm","os":"linux","variant":%q}`, variant)))
		d := manifest(cfg, 40)
		record("library/app", d, fmt.Sprintf("t%d", i))
		want[d] = "linux/arm/" + variant
	}
	shared := put([]byte(`{"architecture":"s390x","os":"linux"}`))
	both := manifest(shared, 37)
	record("library/one", both, "latest")
	record("library/two", both, "latest")
	noOS := manifest(put([]byte(`{"architecture":"amd64"}`)), 24)
	record("library/noos", noOS, "latest")
	gone := manifest(digest.FromString("a config never stored"), 2)
	record("library/gone", gone, "latest")
	pinned := manifest(put([]byte(`{"architecture":"ppc64le","os":"linux"}`)), 39)
	record("library/pinned", pinned, "latest")
	if err := ix.DeleteTag("docker.io", "library/pinned", "latest"); err != nil {
		t.Fatal(err)
	}
	c := New(store, ix, Options{})
	if err := c.Pin(t.Context(), pinned.String(), "test"); err != nil {
		t.Fatal(err)
	}

	list, err := c.Images(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != n+5 {
		t.Fatalf("%d images, want %d", len(list), n+5)
	}
	for _, im := range list {
		var w []string
		switch {
		case im.Digest == both:
			w = []string{"linux/s390x"}
		case im.Digest == pinned:
			w = []string{"linux/ppc64le"}
		case im.Digest == noOS || im.Digest == gone:
		default:
			w = []string{want[im.Digest]}
		}
		if !slices.Equal(im.Platforms, w) {
			t.Errorf("%s@%s: platforms %q, want %q", im.Name(), im.Digest, im.Platforms, w)
		}
	}
}

// An idQueue hands out what was pushed, in order, to readers that wait
// for it, and ends them once closed and drained.
func TestIDQueue(t *testing.T) {
	var q idQueue
	q.ready.L = &q.mu
	got := make(chan int32)
	go func() {
		defer close(got)
		for id, ok := q.next(); ok; id, ok = q.next() {
			got <- id
		}
	}()
	q.push(1) // the reader may be waiting already
	if id := <-got; id != 1 {
		t.Fatalf("got %d, want 1", id)
	}
	for id := int32(2); id <= 5; id++ {
		q.push(id)
	}
	q.close()
	var rest []int32
	for id := range got {
		rest = append(rest, id)
	}
	if !slices.Equal(rest, []int32{2, 3, 4, 5}) {
		t.Errorf("got %v after closing, want 2 3 4 5", rest)
	}
}
