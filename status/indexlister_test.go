package status

import (
	"cmp"
	"fmt"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/docker-mirror/docker-mirror/lifecycle"
	"github.com/docker-mirror/docker-mirror/storage"
)

// The index lister reads the content records as a table
// (ReadImageTable, as the lifecycle does), not as maps keyed by digest
// strings: it must list what the maps' reading listed (recordsImages,
// kept here as the oracle), on an index with tags, images named only by
// a fill record, a digest both manifest and blob, sha512 and upper-case
// digests, pins by tag and by digest, pulls flushed and not.
func TestIndexListerTable(t *testing.T) {
	ix, err := storage.OpenIndex(filepath.Join(t.TempDir(), "index.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ix.Close() })
	t0 := time.Date(2026, 12, 3, 9, 0, 0, 0, time.UTC)
	var ds []digest.Digest
	for i := range 6 {
		d := digest.FromString(fmt.Sprintf("manifest %d", i))
		switch i {
		case 4:
			d = digest.Digest("sha256:" + strings.ToUpper(d.Encoded()))
		case 5:
			d = digest.SHA512.FromString("manifest 5")
		}
		ds = append(ds, d)
		repo := fmt.Sprintf("library/app%d", i%3)
		e := storage.ManifestEntry{Upstream: "docker.io", Repo: repo, Digest: d,
			Record: storage.ManifestRecord{MediaType: "application/vnd.oci.image.manifest.v1+json", Size: int64(100 + i), FetchedAt: t0.Add(time.Duration(i) * time.Second)}}
		if i != 2 { // 2: a fill record alone
			e.Tag = fmt.Sprintf("v%d", i)
		}
		if i%2 == 0 {
			e.Fill = &storage.FillRecord{Upstream: "docker.io", Repo: repo, State: storage.FillComplete, Platforms: []string{"linux/amd64"}, UpdatedAt: t0}
		}
		if err := ix.RecordManifest(e); err != nil {
			t.Fatal(err)
		}
	}
	// A second tag in another repository, a tag revalidated later, a
	// manifest also recorded as a blob, pins, pulls flushed and not.
	if err := ix.RecordManifest(storage.ManifestEntry{Upstream: "quay.io", Repo: "x/y", Digest: ds[0], Record: storage.ManifestRecord{Size: 100, FetchedAt: t0}, Tag: "latest"}); err != nil {
		t.Fatal(err)
	}
	if err := ix.TouchTag("docker.io", "library/app1", "v1", t0.Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	if err := ix.RecordBlob("docker.io", "library/app0", ds[3], 5000, t0.Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	for _, ref := range []string{storage.TagKey("docker.io", "library/app0", "v3"), ds[0].String(), ds[2].String()} {
		if err := ix.Pin(t.Context(), ref, storage.PinRecord{PinnedAt: t0, Reason: "test"}); err != nil {
			t.Fatal(err)
		}
	}
	if err := ix.TouchManifest(ds[1], t0.Add(2*time.Hour)); err != nil {
		t.Fatal(err)
	}
	if err := ix.Flush(); err != nil {
		t.Fatal(err)
	}
	if err := ix.TouchManifest(ds[3], t0.Add(3*time.Hour)); err != nil { // not flushed
		t.Fatal(err)
	}
	want, err := recordsImages(ix)
	if err != nil {
		t.Fatal(err)
	}
	got, err := IndexLister{Index: ix}.Images(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if len(want) != 7 || !reflect.DeepEqual(got, want) {
		t.Errorf("listed:\n%+v\nwant (%d):\n%+v", got, len(want), want)
	}
}

// recordsImages is IndexLister.Images as it read the index before, with
// ReadImageRecords: the oracle of TestIndexListerTable.
func recordsImages(ix *storage.Index) ([]lifecycle.Image, error) {
	type key struct {
		upstream, repo string
		digest         digest.Digest
	}
	byKey := map[key]*lifecycle.Image{}
	var snap *storage.ImageRecords // set before any image is made
	get := func(k key) *lifecycle.Image {
		im, ok := byKey[k]
		if !ok {
			im = &lifecycle.Image{Upstream: k.upstream, Repo: k.repo, Digest: k.digest}
			rec := snap.Manifests[k.digest]
			im.MediaType, im.Size, im.LastPull = rec.MediaType, rec.Size, rec.FetchedAt
			if rec.Size > 0 {
				im.Manifests = 1
			}
			if t := snap.Access[k.digest]; t.After(im.LastPull) {
				im.LastPull = t
			}
			im.Pinned = snap.Pins[k.digest.String()]
			byKey[k] = im
		}
		return im
	}
	// Tags are read last, with the other records (but for unflushed
	// manifest pulls, added below).
	var tagged []*lifecycle.Image
	recs, err := ix.ReadImageRecords(&storage.Interner{}, func(t *storage.TagInfo) {
		if !t.OK {
			return
		}
		snap = t.Records
		im := get(key{t.Upstream, t.Repo, t.Digest})
		if len(im.Tags) == 0 {
			tagged = append(tagged, im)
		}
		im.Tags = append(im.Tags, t.Tag)
		if t.CheckedAt.After(im.LastPull) {
			im.LastPull = t.CheckedAt
		}
		if t.Pinned {
			im.Pinned = true
		}
	})
	if err != nil {
		return nil, err
	}
	snap = recs
	// The manifests' pulls not yet flushed when the tags were read.
	for _, im := range tagged {
		if t := snap.Access[im.Digest]; t.After(im.LastPull) {
			im.LastPull = t
		}
	}
	for _, f := range snap.Fills {
		im := get(key{f.Upstream, f.Repo, f.Digest})
		im.State, im.Platforms = f.State, slices.Clone(f.Platforms)
	}
	out := make([]lifecycle.Image, 0, len(byKey))
	for _, im := range byKey {
		slices.Sort(im.Tags)
		out = append(out, *im)
	}
	slices.SortFunc(out, func(a, b lifecycle.Image) int {
		return cmp.Or(cmp.Compare(a.Name(), b.Name()), slices.Compare(a.Tags, b.Tags), cmp.Compare(a.Digest, b.Digest))
	})
	return out, nil
}
