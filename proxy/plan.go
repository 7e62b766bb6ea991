package proxy

import (
	"context"
	"errors"

	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"

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

// Plan reads an image's manifests from the upstream, without storing
// anything, and lists the blobs mirroring it with pats (nil: the configured
// platforms) would copy, each marked if the store has it already.
func (p *Proxy) Plan(ctx context.Context, ref string, pats []oci.Platform) (Plan, error) {
	im, err := p.parseImage(ref)
	if err != nil {
		return Plan{}, err
	}
	if pats == nil {
		pats = p.platformsFor(im.t)
	}
	m, err := im.t.up.Manifest(ctx, im.t.repo, im.ref)
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
		var children []v1.Descriptor
		children, plan.Platforms = selectChildren(doc.Manifests, pats)
		for _, c := range children {
			cm, err := im.t.up.Manifest(ctx, im.t.repo, oci.Ref{Digest: c.Digest})
			if err != nil {
				return Plan{}, err
			}
			cdoc, _, err := oci.ParseManifest(cm.Body, cm.MediaType)
			if err != nil {
				return Plan{}, err
			}
			images = append(images, cdoc)
			plan.Manifests++
		}
	}
	seen := map[digest.Digest]bool{}
	for _, d := range images {
		blobs := d.Layers
		if d.Config != nil {
			blobs = append([]v1.Descriptor{*d.Config}, blobs...)
		}
		for _, b := range blobs {
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
