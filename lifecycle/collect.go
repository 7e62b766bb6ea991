package lifecycle

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/docker-mirror/docker-mirror/storage"
)

// Collect removes the blobs and manifests that no image references from
// the store and the index (with their links), except content within the
// grace period or claimed by the proxy. Content is marked from the roots
// (tags, mirror records, pins) through the manifests read from the store:
// an index's children, and each image's config and layers.
func (c *Collector) Collect(ctx context.Context) (Report, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.refresh(ctx); err != nil {
		return Report{}, err
	}
	r, err := c.collect(ctx, nil, nil)
	c.opts.Metrics.observe("collect", "gc", r, err)
	return r, err
}

// marker marks what roots keep, each root once.
type marker struct {
	g      *graph
	marked reach
	seen   map[digest.Digest]bool
	// drop are roots treated as gone (a dry-run eviction).
	drop map[digest.Digest]bool
	// holder lists the digests the proxy holds: kept, and those the
	// index knows as manifests (isManifest) walked as roots.
	holder     Holder
	isManifest func(digest.Digest) bool
}

func (mk *marker) mark(ctx context.Context, roots map[digest.Digest]bool) error {
	if mk.holder != nil {
		roots = maps.Clone(roots)
		for _, d := range mk.holder.Held() {
			if mk.isManifest(d) {
				roots[d] = true
			} else {
				mk.marked.blobs[d] = true // a blob being served: not read as a manifest
			}
		}
	}
	for d := range roots {
		if mk.seen[d] || mk.drop[d] || d.Validate() != nil {
			continue
		}
		mk.seen[d] = true
		if err := mk.g.walk(ctx, d, mk.marked); err != nil {
			return err
		}
	}
	return nil
}

// refresh reads again the marked manifests that were missing: a fill
// stores a manifest before its blobs, so a manifest stored since the
// marking marks the blobs stored after it.
func (mk *marker) refresh(ctx context.Context) error {
	var missing []digest.Digest
	for d := range mk.marked.manifests {
		if n := mk.g.nodes[d]; n != nil && n.missing {
			missing = append(missing, d)
		}
	}
	for _, d := range missing {
		delete(mk.g.nodes, d)
		n, err := mk.g.load(ctx, d)
		if err != nil {
			return err
		}
		for _, b := range n.blobs {
			mk.marked.blobs[b] = true
		}
		for _, child := range n.manifests {
			if err := mk.g.walk(ctx, child, mk.marked); err != nil {
				return err
			}
		}
	}
	return nil
}

// collect removes what no root references; freed (content an eviction
// has just left unreferenced) is not subject to the grace period.
func (c *Collector) collect(ctx context.Context, drop, freed map[digest.Digest]bool) (Report, error) {
	r := Report{DryRun: c.opts.DryRun, StoredBefore: c.index.StoredBytes()}
	now := c.opts.Now()
	snap, err := c.index.Snapshot()
	if err != nil {
		return r, err
	}
	g, err := c.referrersGraph(snap)
	if err != nil {
		return r, err
	}
	mk := &marker{
		g:      g,
		marked: reach{manifests: map[digest.Digest]bool{}, blobs: map[digest.Digest]bool{}},
		seen:   map[digest.Digest]bool{},
		drop:   drop,
	}
	mk.holder, _ = c.opts.Guard.(Holder)
	mk.isManifest = func(d digest.Digest) bool {
		_, ok, err := c.index.Manifest(d)
		return ok || err != nil // unsure: walked, which reads it
	}
	if err := mk.mark(ctx, snapshotRoots(snap)); err != nil {
		return r, err
	}
	stored := map[digest.Digest]storage.StoredContent{}
	if err := c.store.Walk(ctx, func(sc storage.StoredContent) error {
		stored[sc.Digest] = sc
		return nil
	}); err != nil {
		return r, fmt.Errorf("listing the store: %w", err)
	}

	// Candidates: what is stored or indexed and not marked.
	var candidates []digest.Digest
	seen := map[digest.Digest]bool{}
	for _, ds := range [][]digest.Digest{keys(stored), keys(snap.Blobs), keys(snap.Manifests)} {
		for _, d := range ds {
			if seen[d] || mk.marked.has(d) {
				continue
			}
			seen[d] = true
			if c.opts.Owned != nil && !c.opts.Owned(d) {
				r.Kept++ // another replica's to collect
				continue
			}
			if !freed[d] && c.recent(now, stored[d].ModTime, snap.Blobs[d].FetchedAt, snap.Blobs[d].LastAccess, snap.Manifests[d].FetchedAt) {
				r.Kept++
				continue
			}
			candidates = append(candidates, d)
		}
	}
	slices.Sort(candidates)

	if c.opts.DryRun {
		for _, d := range candidates {
			_, manifest := snap.Manifests[d]
			count(&r, manifest, stored[d].Size)
		}
		r.StoredAfter = r.StoredBefore
		return r, nil
	}

	for batch := range slices.Chunk(candidates, batchSize) {
		if err := c.sweep(ctx, batch, mk, stored, freed, &r); err != nil {
			r.StoredAfter = c.index.StoredBytes()
			return r, err
		}
	}
	r.StoredAfter = c.index.StoredBytes()
	return r, nil
}

// sweep removes one batch of unmarked content: claimed from the guard,
// checked against the roots recorded since the marking, forgotten by the
// index, then removed from the store.
func (c *Collector) sweep(ctx context.Context, batch []digest.Digest, mk *marker, stored map[digest.Digest]storage.StoredContent, freed map[digest.Digest]bool, r *Report) error {
	claimed, release := c.claim(batch)
	defer release()
	r.Kept += len(batch) - len(claimed)
	if len(claimed) == 0 {
		return nil
	}
	// Roots recorded since the marking keep their content too. Content a
	// new root needs that is claimed now is fetched again by the proxy.
	roots, err := c.index.RootDigests()
	if err != nil {
		return err
	}
	if err := mk.mark(ctx, roots); err != nil {
		return err
	}
	if err := mk.refresh(ctx); err != nil {
		return err
	}
	var todo []digest.Digest
	for _, d := range claimed {
		if mk.marked.has(d) {
			r.Kept++
		} else {
			todo = append(todo, d)
		}
	}
	now := c.opts.Now()
	gone, err := c.index.Forget(todo, func(d digest.Digest, e storage.ContentEntry) bool {
		var ts []time.Time
		if e.Blob != nil {
			ts = append(ts, e.Blob.FetchedAt, e.Blob.LastAccess)
		}
		if e.Manifest != nil {
			ts = append(ts, e.Manifest.FetchedAt)
		}
		if (e.Rooted && !mk.drop[d]) || (!freed[d] && c.recent(now, ts...)) {
			r.Kept++
			return true
		}
		return false
	})
	if err != nil {
		return err
	}
	for _, f := range gone {
		if err := c.store.Delete(ctx, "", f.Digest); err != nil {
			return fmt.Errorf("removing %s from the store: %w", f.Digest, err)
		}
		count(r, f.Manifest, stored[f.Digest].Size)
		c.opts.Log.Debug("collected", "digest", f.Digest, "manifest", f.Manifest, "size", stored[f.Digest].Size)
	}
	return nil
}

// count adds one removal of size bytes to r.
func count(r *Report, manifest bool, size int64) {
	if manifest {
		r.ManifestsRemoved++
	} else {
		r.BlobsRemoved++
	}
	r.BytesFreed += size
}

// snapshotRoots are the digests tags, mirror records and pins name.
func snapshotRoots(snap *storage.Snapshot) map[digest.Digest]bool {
	roots := map[digest.Digest]bool{}
	for _, rec := range snap.Tags {
		roots[rec.Digest] = true
	}
	for _, me := range snap.Fills {
		roots[me.Digest] = true
	}
	for key := range snap.Pins {
		if d, err := digest.Parse(key); err == nil {
			roots[d] = true
		}
	}
	return roots
}

func keys[V any](m map[digest.Digest]V) []digest.Digest {
	out := make([]digest.Digest, 0, len(m))
	for d := range m {
		out = append(out, d)
	}
	return out
}
