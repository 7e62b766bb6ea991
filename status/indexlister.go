package status

import (
	"cmp"
	"context"
	"slices"

	"github.com/opencontainers/go-digest"

	"github.com/docker-mirror/docker-mirror/lifecycle"
	"github.com/docker-mirror/docker-mirror/storage"
)

// IndexLister lists the images from the index alone, for a store the
// lifecycle does not manage (a registry destination): tags, mirror
// records and pins, without walking manifests, so an image's size is its
// root manifest's and its platforms those its mirror record lists.
type IndexLister struct{ Index *storage.Index }

// Images lists the images the index names, sorted by name, tags and
// digest. The index is read in one transaction without a copy of its tag
// records (Index.ReadImageRecords): each tag goes straight into its image.
func (l IndexLister) Images(context.Context) ([]lifecycle.Image, error) {
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
	recs, err := l.Index.ReadImageRecords(&storage.Interner{}, func(t *storage.TagInfo) {
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
