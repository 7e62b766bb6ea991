package proxy

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"github.com/opencontainers/go-digest"

	"github.com/docker-mirror/docker-mirror/oci"
	"github.com/docker-mirror/docker-mirror/storage"
)

// Plan is what mirroring an image would copy.
type Plan struct {
	Digest    string
	Platforms []string
	// Manifests counts the index and its selected children.
	Manifests int
	Blobs     []PlannedBlob
}

// PlannedBlob is a blob of a plan and whether the store has it already.
type PlannedBlob struct {
	Digest digest.Digest
	Size   int64
	Stored bool
}

// Plan reads an image's manifests from the upstream (or the store, where
// the proxy reads them back from it), without storing anything, and lists the blobs mirroring it with pats (nil: the configured
// platforms) would copy, each marked if the store has it already.
func (p *Proxy) Plan(ctx context.Context, ref string, pats []oci.Platform) (Plan, error) {
	im, err := p.parseImage(ref)
	if err != nil {
		return Plan{}, err
	}
	if pats == nil {
		pats = p.platformsFor(im.t)
	}
	// Read back from the store, as a copy reads them, where it holds them
	// (WithManifestsFromStore): each upstream GET counts as a pull.
	m, err := p.upstreamManifest(ctx, im.t, im.ref, false)
	if err != nil {
		return Plan{}, err
	}
	if err := noPlatformMatches(ref, m.Body, m.MediaType, pats); err != nil {
		return Plan{}, err
	}
	plan := Plan{Digest: m.Digest.String(), Manifests: 1}
	doc, mt, err := oci.ParseManifest(m.Body, m.MediaType)
	if err != nil {
		return Plan{}, err
	}
	images := []oci.Manifest{doc}
	if oci.IsIndex(mt) {
		images = nil
		// An index's children, and those of an index it lists, as a copy
		// goes (copyIndex).
		var add func(doc oci.Manifest, depth int) error
		add = func(doc oci.Manifest, depth int) error {
			children, names := selectChildren(doc.Manifests, pats)
			plan.Platforms = append(plan.Platforms, names...)
			for _, c := range children {
				cm, err := p.upstreamManifest(ctx, im.t, oci.Ref{Digest: c.Digest}, false)
				if err != nil {
					return err
				}
				cdoc, cmt, err := oci.ParseManifest(cm.Body, cm.MediaType)
				if err != nil {
					return err
				}
				plan.Manifests++
				switch {
				case !oci.IsIndex(cmt):
					images = append(images, cdoc)
				case depth+1 > MaxIndexDepth:
					return fmt.Errorf("manifest %s: an index nested more than %d deep", c.Digest, MaxIndexDepth)
				default:
					if err := add(cdoc, depth+1); err != nil {
						return err
					}
				}
			}
			return nil
		}
		if err := add(doc, 0); err != nil {
			return Plan{}, err
		}
		slices.Sort(plan.Platforms)
		plan.Platforms = slices.Compact(plan.Platforms)
	}
	seen := map[digest.Digest]bool{}
	for _, d := range images {
		for _, b := range d.BlobDescriptors() { // as fillBlobs copies them
			if seen[b.Digest] || len(b.URLs) > 0 {
				continue
			}
			seen[b.Digest] = true
			_, err := p.store.Stat(ctx, im.t.storeRepo(), b.Digest)
			if err != nil && !errors.Is(err, storage.ErrNotFound) {
				return Plan{}, err
			}
			plan.Blobs = append(plan.Blobs, PlannedBlob{Digest: b.Digest, Size: b.Size, Stored: err == nil})
		}
	}
	return plan, nil
}
