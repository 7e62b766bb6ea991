package lifecycle

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"syscall"

	"github.com/opencontainers/go-digest"

	"github.com/docker-mirror/docker-mirror/storage"
)

// Verify rehashes every stored blob and manifest, streaming it, and
// removes the corrupt ones from the store and the index, with the tags
// that named a corrupt manifest. Index entries of content missing from the
// store are removed too. Images whose content was removed (their own, or
// their signatures', attestations' or SBOMs') go back to the
// partial mirror state, so the next pull mirrors them again. In a dry run
// it only reports.
func (c *Collector) Verify(ctx context.Context) (Report, error) {
	if err := c.lock(ctx); err != nil {
		return Report{}, err
	}
	defer c.unlock()
	if err := c.refresh(ctx); err != nil {
		return Report{}, err
	}
	r, err := c.verify(ctx)
	c.opts.Metrics.observe("verify", "verify", r, err)
	return r, err
}

func (c *Collector) verify(ctx context.Context) (Report, error) {
	r := Report{DryRun: c.opts.DryRun, StoredBefore: c.index.StoredBytes()}
	// A record that cannot be decoded stops every read of its bucket:
	// found first, and dropped by a repair, which then goes on.
	bad, err := c.index.UnreadableRecords()
	if err != nil {
		return r, err
	}
	if r.UnreadableRecords = bad; len(bad) > 0 {
		for _, u := range bad {
			c.opts.Log.Warn("index record cannot be read", "bucket", u.Bucket, "key", u.Key, "error", u.Err, "dry_run", c.opts.DryRun)
		}
		if c.opts.DryRun {
			// Nothing past them can be read: the content is checked
			// once they are dropped.
			r.StoredAfter = r.StoredBefore
			return r, nil
		}
		if err := c.index.DropRecords(bad); err != nil {
			return r, err
		}
	}
	// Content whose record was dropped is removed as corrupt content is,
	// with what names it: its images go back to partial, and its next
	// pull fetches it again.
	var dropped []digest.Digest
	for _, u := range bad {
		if u.Content() {
			dropped = append(dropped, digest.Digest(u.Key))
		}
	}
	recs, err := c.index.ReadImageTable(nil, nil) // no tags: not needed
	if err != nil {
		return r, err
	}
	content := recs.Content
	var contents []storage.StoredContent
	if err := c.store.Walk(ctx, func(sc storage.StoredContent) error {
		contents = append(contents, sc)
		return nil
	}); err != nil {
		return r, fmt.Errorf("listing the store: %w", err)
	}
	slices.SortFunc(contents, func(a, b storage.StoredContent) int { return cmp.Compare(a.Digest, b.Digest) })

	found := map[digest.Digest]bool{}
	size := map[digest.Digest]int64{}
	var corrupt []digest.Digest
	buf := make([]byte, 1<<20)
	for _, sc := range contents {
		manifest := content.IsManifest(sc.Digest)
		ok, err := c.rehash(ctx, sc.Digest, buf)
		if errors.Is(err, storage.ErrNotFound) {
			continue // removed meanwhile
		}
		if errors.Is(err, syscall.EIO) {
			// Unreadable (bad sectors): as useless as corrupt, and
			// served it fails every client; removed, it is fetched
			// again. The rest is checked.
			c.opts.Log.Warn("stored content cannot be read", "digest", sc.Digest, "error", err)
			ok, err = false, nil
		}
		if err != nil {
			return r, fmt.Errorf("verifying %s: %w", sc.Digest, err)
		}
		found[sc.Digest] = true
		size[sc.Digest] = sc.Size
		r.BytesChecked += sc.Size
		if manifest {
			r.ManifestsChecked++
		} else {
			r.BlobsChecked++
		}
		if ok {
			continue
		}
		c.opts.Log.Warn("stored content does not match its digest", "digest", sc.Digest, "manifest", manifest, "size", sc.Size, "dry_run", c.opts.DryRun)
		corrupt = append(corrupt, sc.Digest)
		r.Corrupt = append(r.Corrupt, sc.Digest)
		if manifest {
			r.CorruptManifests++
		} else {
			r.CorruptBlobs++
		}
	}

	// Index entries naming content the store does not hold.
	var missing []digest.Digest
	for id := range content.Len() {
		if !content.Recorded(id) { // a last pull only
			continue
		}
		d := content.Digest(id)
		if found[d] {
			continue
		}
		if _, err := c.store.Stat(ctx, "", d); !errors.Is(err, storage.ErrNotFound) {
			if err != nil {
				return r, err
			}
			continue // stored meanwhile
		}
		c.opts.Log.Warn("indexed content is missing from the store", "digest", d, "dry_run", c.opts.DryRun)
		missing = append(missing, d)
	}
	r.Missing = len(missing)
	r.MissingContent = missing
	if c.opts.DryRun {
		r.StoredAfter = r.StoredBefore
		return r, nil
	}
	if len(corrupt)+len(missing)+len(dropped) == 0 {
		r.StoredAfter = c.index.StoredBytes()
		return r, nil
	}

	droppedSet := map[digest.Digest]bool{}
	for _, d := range dropped {
		droppedSet[d] = true
	}
	err = c.removeContent(ctx, recs.Fills, slices.Concat(corrupt, missing, dropped), size, found, recordedAgain(droppedSet), &r)
	r.StoredAfter = c.index.StoredBytes()
	return r, err
}

// removeContent forgets the digests doomed but those keep (if not nil)
// keeps, and removes from the store those found there (of the sizes
// size), the images losing content (fills: the mirror records) going back
// to partial first, and adds what it removed to r.
func (c *Collector) removeContent(ctx context.Context, fills []storage.FillEntry, doomed []digest.Digest, size map[digest.Digest]int64, found map[digest.Digest]bool, keep func(digest.Digest, storage.ContentEntry) bool, r *Report) error {
	// The images that a removed signature, attestation or SBOM belongs
	// to are found through the referrers lists and tags as they are
	// before the removal, which takes the tags of a corrupt manifest.
	g, err := c.referrersGraph()
	if err != nil {
		return err
	}
	if err := c.index.ReadTagDigests(func(key, d []byte) { addReferrerTag(g, key, d) }); err != nil {
		return err
	}
	// The images losing content go back to partial before it is removed:
	// a repair cut short after a removal leaves none complete (a rerun
	// finds nothing more to remove).
	removed := map[digest.Digest]bool{}
	for _, d := range doomed {
		removed[d] = true
	}
	if err := c.resetMirrors(ctx, g, fills, removed, r); err != nil {
		return err
	}
	for batch := range slices.Chunk(doomed, batchSize) {
		claimed, release := c.claim(batch)
		r.Kept += len(batch) - len(claimed)
		gone, err := c.index.Forget(claimed, keep)
		if err == nil {
			for _, f := range gone {
				if size[f.Digest] > 0 || found[f.Digest] {
					if err = c.store.Delete(ctx, "", f.Digest); errors.Is(err, storage.ErrNotFound) {
						err = nil // removed meanwhile
					} else if err != nil {
						break
					}
				}
				r.TagsRemoved += len(f.Tags)
				count(r, f.Manifest, size[f.Digest])
			}
		}
		release()
		if err != nil {
			return err
		}
	}
	return nil
}

// recordedAgain keeps, of dropped (content whose record was dropped as
// unreadable), what has a record again: a pull that found none fetched
// and recorded it since the drop, and its tags name it.
func recordedAgain(dropped map[digest.Digest]bool) func(digest.Digest, storage.ContentEntry) bool {
	return func(d digest.Digest, e storage.ContentEntry) bool {
		return dropped[d] && (e.Blob != nil || e.Manifest != nil)
	}
}

// rehash reports whether stored content matches its digest.
func (c *Collector) rehash(ctx context.Context, d digest.Digest, buf []byte) (bool, error) {
	rc, err := c.store.Open(ctx, "", d, 0)
	if err != nil {
		return false, err
	}
	defer rc.Close()
	v := d.Verifier()
	if _, err := io.CopyBuffer(v, readerOnly{ctx, rc}, buf); err != nil {
		return false, err
	}
	return v.Verified(), nil
}

// readerOnly hides a reader's WriterTo, so CopyBuffer uses the buffer, and
// stops at ctx's end.
type readerOnly struct {
	ctx context.Context
	r   io.Reader
}

// Read reads from the reader unless ctx has ended.
func (r readerOnly) Read(p []byte) (int, error) {
	if err := r.ctx.Err(); err != nil {
		return 0, err
	}
	return r.r.Read(p)
}

// resetMirrors sets the complete mirror records whose images lose content
// (removed) back to partial: what g reaches from an image, its referrers and cosign
// tags' artifacts too.
func (c *Collector) resetMirrors(ctx context.Context, g *graph, fills []storage.FillEntry, removed map[digest.Digest]bool, r *Report) error {
	for _, me := range fills {
		d := me.Digest
		if me.State != storage.FillComplete || removed[d] {
			continue
		}
		reached, err := g.reach(ctx, d)
		if err != nil {
			return err
		}
		lost := false
		for _, x := range reached.all() {
			if removed[x] {
				lost = true
				break
			}
		}
		if !lost {
			continue
		}
		cur, ok, err := c.index.Fill(me.Upstream, me.Repo, d)
		if err != nil {
			return err
		}
		if !ok || cur.State != storage.FillComplete {
			continue
		}
		cur.State, cur.UpdatedAt = storage.FillPartial, c.opts.Now()
		if err := c.index.PutFill(d, cur); err != nil {
			return err
		}
		r.FillsReset++
	}
	return nil
}
