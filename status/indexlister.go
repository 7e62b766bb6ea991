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
// records, its content records as a table sorted by digest
// (Index.ReadImageTable, as the lifecycle reads them): each tag goes
// straight into its image.
func (l IndexLister) Images(context.Context) ([]lifecycle.Image, error) {
	type key struct {
		upstream, repo string
		digest         digest.Digest
	}
	byKey := map[key]*lifecycle.Image{}
	var tab *storage.ContentTable // set before any image is made
	get := func(k key) *lifecycle.Image {
		im, ok := byKey[k]
		if !ok {
			im = &lifecycle.Image{Upstream: k.upstream, Repo: k.repo, Digest: k.digest}
			rec, _ := tab.Lookup(k.digest)
			if rec.Manifest {
				im.MediaType, im.Size, im.LastPull = rec.MediaType, rec.ManifestSize, rec.FetchedAt
				if rec.ManifestSize > 0 {
					im.Manifests = 1
				}
			}
			if rec.Pulled.After(im.LastPull) {
				im.LastPull = rec.Pulled
			}
			byKey[k] = im
		}
		return im
	}
	// Tags are read last, with the other records (but for unflushed
	// manifest pulls, added below).
	var tagged []*lifecycle.Image
	recs, err := l.Index.ReadImageTable(&storage.Interner{}, func(t *storage.TagInfo) {
		if !t.OK {
			return
		}
		tab = t.Table
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
	tab = recs.Content
	// The manifests' pulls not yet flushed when the tags were read.
	for _, im := range tagged {
		if rec, _ := tab.Lookup(im.Digest); rec.Pulled.After(im.LastPull) {
			im.LastPull = rec.Pulled
		}
	}
	for _, f := range recs.Fills {
		im := get(key{f.Upstream, f.Repo, f.Digest})
		im.State, im.Platforms = f.State, slices.Clone(f.Platforms)
	}
	out := make([]lifecycle.Image, 0, len(byKey))
	for k, im := range byKey {
		if recs.Pins[k.digest.String()] {
			im.Pinned = true
		}
		slices.Sort(im.Tags)
		out = append(out, *im)
	}
	slices.SortFunc(out, func(a, b lifecycle.Image) int {
		return cmp.Or(cmp.Compare(a.Name(), b.Name()), slices.Compare(a.Tags, b.Tags), cmp.Compare(a.Digest, b.Digest))
	})
	return out, nil
}
