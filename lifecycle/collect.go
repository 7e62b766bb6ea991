package lifecycle

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"time"

	"github.com/opencontainers/go-digest"
	"golang.org/x/sync/errgroup"

	"github.com/docker-mirror/docker-mirror/storage"
)

// Collect removes the blobs and manifests that no image references from
// the store and the index (with their links), except content within the
// grace period or claimed by the proxy. Content is marked from the roots
// (tags, mirror records, pins) through the manifests read from the store:
// an index's children, and each image's config and layers. A manifest the
// index links that cannot be read keeps what its repositories hold, and is
// logged (keepUnreadable).
func (c *Collector) Collect(ctx context.Context) (Report, error) {
	if err := c.lock(ctx); err != nil {
		return Report{}, err
	}
	defer c.unlock()
	defer c.enterPass()()
	if err := c.refresh(ctx); err != nil {
		return Report{}, err
	}
	r, err := c.collect(ctx, nil, nil, nil)
	c.opts.Metrics.observe("collect", "gc", r, err)
	return r, err
}

// marker marks what roots keep, each root once.
type marker struct {
	g      *idGraph
	marked marks
	seen   idSet
	// drop are roots treated as gone (a dry-run eviction).
	drop *digestSet
	// holder lists the digests the proxy holds: kept, and those the
	// index knows as manifests (isManifest) walked as roots.
	holder     Holder
	isManifest func(digest.Digest) bool
	// roots are the roots last marked, and the index version they are of.
	roots storage.Roots
	// missing are the marked manifests not in the store when read
	// (refresh); stale says marks were added since it was listed.
	missing []int32
	stale   bool
	// index and log serve keepUnreadable: unread counts the entries of
	// g.unreadable it has looked at, reported the manifests it reported,
	// repos the repositories whose content it keeps.
	index    *storage.Index
	log      *slog.Logger
	unread   int
	reported idSet
	repos    map[string]bool
}

// has reports whether d is marked.
func (mk *marker) has(d digest.Digest) bool {
	id, ok := mk.g.ids.lookup(d)
	return ok && mk.marked.has(id)
}

// mark marks what roots (nil: none) and the digests the proxy holds
// keep.
func (mk *marker) mark(ctx context.Context, roots *storage.RootSet) error {
	if mk.holder != nil {
		var held []digest.Digest
		for _, d := range mk.holder.Held() {
			if mk.isManifest(d) {
				held = append(held, d)
			} else {
				mk.marked.blobs.add(mk.g.ids.id(d)) // a blob being served: not read as a manifest
			}
		}
		for _, d := range held {
			if err := mk.walkDigest(ctx, d); err != nil {
				return err
			}
		}
	}
	// The roots in the table are its identifiers (mk.g.ids numbers the
	// table's digests alike, roots.Table() is mk.g.ids.table): no string
	// is made of its sha256 digests. Its others (sha512, or keys that are
	// not digests: upper-case hex) are checked as strings, as any root.
	var err error
	roots.EachID(func(id int) {
		if err != nil {
			return
		}
		if _, sha := roots.Table().Key(id); !sha {
			err = mk.walkDigest(ctx, roots.Table().Digest(id))
		} else if !mk.drop.hasID(mk.g.ids, int32(id)) {
			err = mk.walkID(ctx, int32(id))
		}
	})
	if err != nil {
		return err
	}
	roots.EachOther(func(d digest.Digest) {
		if err == nil {
			err = mk.walkDigest(ctx, d)
		}
	})
	if err != nil {
		return err
	}
	return mk.keepUnreadable()
}

// keepUnreadable keeps everything linked to the repositories of a marked
// manifest that cannot be read though the index links it (its file lost:
// a rename a crash undid; or not matching its digest: a bad sector). Read
// as naming nothing, it would lose its children and layers with it, an
// image still tagged, even pinned: what it named is not known without
// its bytes, and what was fetched for its repositories is a superset the
// index knows. It is reported once a pass; verify --repair removes it, so
// the next pull fetches it again, and its content is then referenced as
// any image's. A manifest an index lists that was never fetched (another
// platform's) is linked nowhere: nothing more is kept for it. Each
// repository is read once a pass.
func (mk *marker) keepUnreadable() error {
	if mk.index == nil {
		return nil
	}
	found := mk.g.unreadable[mk.unread:]
	mk.unread = len(mk.g.unreadable)
	for _, id := range found {
		n := mk.g.nodes[id]
		if mk.reported.has(id) || !mk.marked.manifests.has(id) || n == nil || !(n.missing || n.corrupt) {
			continue // reported, or read since (refresh)
		}
		mk.reported.add(id)
		d := mk.g.ids.digest(id)
		holders, err := mk.index.Holders(d)
		if err != nil {
			return err
		}
		if len(holders) == 0 {
			continue
		}
		state := "missing from the store"
		if n.corrupt {
			state = "not matching its digest"
		}
		mk.log.Warn("a cached manifest cannot be read: what its repositories hold is kept; run verify --repair to remove it, and the next pull fetches it again",
			"digest", d, "manifest", state, "repositories", holders)
		for _, h := range holders {
			if mk.repos[h] {
				continue
			}
			if mk.repos == nil {
				mk.repos = map[string]bool{}
			}
			mk.repos[h] = true
			if err := mk.index.LinkedTo(h, func(b []byte) {
				if id, ok := mk.g.ids.idBytes(b); ok {
					mk.marked.blobs.add(id)
				}
			}); err != nil {
				return err
			}
		}
	}
	return nil
}

// walkDigest marks what the root d keeps, unless it is dropped or not a
// digest.
func (mk *marker) walkDigest(ctx context.Context, d digest.Digest) error {
	if mk.drop.has(d) || d.Validate() != nil {
		return nil
	}
	return mk.walkID(ctx, mk.g.ids.id(d))
}

// walkID marks what the root numbered id keeps, once.
func (mk *marker) walkID(ctx context.Context, id int32) error {
	if mk.seen.has(id) {
		return nil
	}
	mk.seen.add(id)
	mk.stale = true
	return mk.g.walk(ctx, id, &mk.marked)
}

// refresh reads again the marked manifests that were missing: a fill
// stores a manifest before its blobs, so a manifest stored since the
// marking marks the blobs stored after it.
func (mk *marker) refresh(ctx context.Context) error {
	if mk.stale {
		mk.missing = mk.missing[:0]
		mk.marked.manifests.all(func(id int32) {
			if n := mk.g.nodes[id]; n != nil && n.missing {
				mk.missing = append(mk.missing, id)
			}
		})
		mk.stale = false
	}
	still := mk.missing[:0]
	for _, id := range mk.missing {
		delete(mk.g.nodes, id)
		n, err := mk.g.load(ctx, id)
		if err != nil {
			return err
		}
		if n.missing {
			still = append(still, id)
			continue
		}
		for _, b := range n.blobs {
			mk.marked.blobs.add(b)
		}
		for _, child := range n.manifests {
			if err := mk.g.walk(ctx, child, &mk.marked); err != nil {
				return err
			}
			mk.stale = true // a child may be missing too
		}
	}
	if !mk.stale {
		mk.missing = still
	}
	return mk.keepUnreadable()
}

// update marks, before a batch is swept, the roots recorded since the
// last marking (read again only if the index changed since), what the
// proxy holds now, and the manifests stored since.
func (mk *marker) update(ctx context.Context, ix *storage.Index) error {
	v, err := ix.Version()
	if err != nil {
		return err
	}
	var roots *storage.RootSet
	if v != mk.roots.Version {
		if mk.roots, err = ix.RootsIn(mk.g.ids.table); err != nil {
			return err
		}
		roots = mk.roots.Set
	}
	if err := mk.mark(ctx, roots); err != nil {
		return err
	}
	return mk.refresh(ctx)
}

// storedFiles is the store's listing, by digest identifier.
type storedFiles struct {
	ids           *digestIDs
	in            idSet
	size, modTime []int64 // modTime: storage.UnixNano
}

func (s *storedFiles) add(id int32, size int64, modTime time.Time) {
	if n := int(id) + 1; n > len(s.size) {
		grow := max(n, s.ids.n()) - len(s.size)
		s.size = append(s.size, make([]int64, grow)...)
		s.modTime = append(s.modTime, make([]int64, grow)...)
	}
	s.in.add(id)
	s.size[id], s.modTime[id] = size, storage.UnixNano(modTime)
}

// sizeOf is the stored size of d (0 if it is not stored).
func (s *storedFiles) sizeOf(d digest.Digest) int64 {
	if id, ok := s.ids.lookup(d); ok && s.in.has(id) {
		return s.size[id]
	}
	return 0
}

// collect removes what no root references; freed (content an eviction
// has just left unreferenced) is not subject to the grace period. table,
// if not nil, is the content records as an eviction's model read them
// (not read again: see Index.RootsView); the sweep checks each removal
// against the index as it is.
func (c *Collector) collect(ctx context.Context, table *storage.ContentTable, drop, freed *digestSet) (Report, error) {
	r := Report{DryRun: c.opts.DryRun, StoredBefore: c.index.StoredBytes()}
	now := c.opts.Now()
	g := newGraph(c.store)
	listed, err := c.index.ReferrerDigests()
	if err != nil {
		return r, err
	}
	g.referrers = listed
	// The content records are a table, and every digest the pass keeps
	// is an identifier into it, the roots too (the index checks a batch
	// against them); only digests without records are strings.
	tag := func(key, d []byte) { addReferrerTag(g, key, d) }
	var view *storage.ContentView
	if table != nil {
		view, err = c.index.RootsView(table, tag)
	} else {
		view, err = c.index.ContentView(tag)
	}
	if err != nil {
		return r, err
	}
	ids := newDigestIDs(view.Table)
	mk := &marker{
		g:     newIDGraph(g, ids),
		drop:  drop,
		roots: view.Roots,
		index: c.index,
		log:   c.opts.Log,
	}
	g.referrers = nil // numbered in mk.g
	mk.holder, _ = c.opts.Guard.(Holder)
	mk.isManifest = func(d digest.Digest) bool {
		_, ok, err := c.index.Manifest(d)
		return ok || err != nil // unsure: walked, which reads it
	}
	if err := mk.mark(ctx, view.Roots.Set); err != nil {
		return r, err
	}
	stored := &storedFiles{ids: ids}
	err = c.store.Walk(ctx, func(sc storage.StoredContent) error {
		stored.add(ids.id(sc.Digest), sc.Size, sc.ModTime)
		return nil
	})
	if errors.Is(err, storage.ErrListingIncomplete) {
		// A directory it cannot read (permission denied, bad sectors):
		// failing on it, every collection and eviction would, the store
		// staying past max_size. What the index records is removed by
		// its path all the same; what the directory holds unrecorded is
		// kept.
		c.opts.Log.Warn("listing the store: passed over what cannot be read; content there that the index does not record is kept", "error", err)
	} else if err != nil {
		return r, fmt.Errorf("listing the store: %w", err)
	}

	// Candidates: what is stored or indexed and not marked, as
	// identifiers (at 100k images an eviction's collection has 200k: as
	// strings, ~19 MiB), in the order of their digests.
	var candidates []int32
	for i := range ids.n() {
		id := int32(i)
		if !stored.in.has(id) && !ids.recorded(id) || mk.marked.has(id) {
			continue
		}
		d := ids.digest(id)
		if c.opts.Owned != nil && !c.opts.Owned(d) {
			r.Kept++ // another replica's to collect
			continue
		}
		var modTime, newest time.Time
		if stored.in.has(id) {
			modTime = storage.FromUnixNano(stored.modTime[id])
		}
		if ids.recorded(id) {
			newest = view.Table.NewestID(int(id))
		}
		if !freed.hasID(ids, id) && c.recent(now, modTime, newest) {
			r.Kept++
			continue
		}
		candidates = append(candidates, id)
	}
	slices.SortFunc(candidates, ids.compare)

	if c.opts.DryRun {
		for _, id := range candidates {
			count(&r, ids.recorded(id) && view.Table.ManifestID(int(id)), stored.sizeOf(ids.digest(id)))
		}
		r.StoredAfter = r.StoredBefore
		return r, nil
	}

	for chunk := range slices.Chunk(candidates, batchSize) {
		batch := make([]digest.Digest, 0, len(chunk))
		for _, id := range chunk {
			batch = append(batch, ids.digest(id))
		}
		if err := c.sweep(ctx, batch, mk, stored, freed, &r); err != nil {
			r.StoredAfter = c.index.StoredBytes()
			return r, err
		}
	}
	// The referrers lists of subjects not held (asked for, never pulled)
	// go too: nothing kept what they name. A subject held in another
	// repository is marked, and keeps what its lists name: so do they.
	if _, err := c.index.ForgetUnheldReferrers(func(subject digest.Digest, fetched time.Time) bool {
		return (c.opts.Owned == nil || c.opts.Owned(subject)) && !mk.has(subject) && !c.recent(now, fetched)
	}); err != nil {
		r.StoredAfter = c.index.StoredBytes()
		return r, err
	}
	r.StoredAfter = c.index.StoredBytes()
	return r, nil
}

// sweep removes one batch of unmarked content: claimed from the guard,
// checked against the roots recorded since the marking, forgotten by the
// index, then removed from the store.
func (c *Collector) sweep(ctx context.Context, batch []digest.Digest, mk *marker, stored *storedFiles, freed *digestSet, r *Report) error {
	claimed, release := c.claim(batch)
	defer release()
	r.Kept += len(batch) - len(claimed)
	if len(claimed) == 0 {
		return nil
	}
	now := c.opts.Now()
	kept := 0 // by the index's transaction now running
	keep := func(d digest.Digest, e storage.ContentEntry) bool {
		var ts []time.Time
		if e.Blob != nil {
			ts = append(ts, e.Blob.FetchedAt, e.Blob.LastAccess)
		}
		if e.Manifest != nil {
			ts = append(ts, e.Manifest.FetchedAt)
		}
		if (e.Rooted && !mk.drop.has(d)) || (!freed.has(d) && c.recent(now, ts...)) {
			kept++
			return true
		}
		return false
	}
	// Roots recorded since the marking keep their content too. Content a
	// new root needs that is claimed now is fetched again by the proxy.
	// The index checks the batch against the roots marked if nothing was
	// written since (else they are read and marked again): a few tries,
	// then it reads them itself, under its write lock. It forgets the
	// batch in as many transactions as its write limits need.
	var gone []storage.Forgotten
	// On a shared store another replica may have recorded an image naming
	// some of this content since the records were read: reused it
	// (storage.Index.Reuse) or fetched it again. Its records are read again
	// now, and what was written since is kept, whatever its age (an
	// eviction's freed content too).
	written, err := c.index.Recheck(ctx, claimed)
	if err != nil {
		return err
	}
	// A manifest written since keeps what it names too: the replica
	// reuses it before its blobs and child manifests, whose records may
	// not be written again yet.
	for d := range written {
		if mk.isManifest(d) {
			if err := mk.walkDigest(ctx, d); err != nil {
				return err
			}
		}
	}
	todo := slices.DeleteFunc(slices.Clone(claimed), func(d digest.Digest) bool {
		if written[d] {
			r.Kept++
			return true
		}
		return false
	})
	for try := 0; len(todo) > 0; {
		if err := mk.update(ctx, c.index); err != nil {
			return err
		}
		todo = slices.DeleteFunc(todo, func(d digest.Digest) bool {
			if mk.has(d) {
				r.Kept++
				return true
			}
			return false
		})
		if len(todo) == 0 {
			break
		}
		kept = 0
		res, err := c.index.ForgetRooted(todo, mk.roots, try >= 3, keep)
		r.LongestWrite = max(r.LongestWrite, res.Held)
		if errors.Is(err, storage.ErrStaleRoots) {
			try++
			continue
		}
		if err != nil {
			return err
		}
		r.Kept += kept
		gone = append(gone, res.Forgotten...)
		todo = todo[res.Done:]
		try = 0
		if res.Version == mk.roots.Version+1 {
			// Only this transaction wrote since the roots were read, and
			// it removed no root that keeps anything: they stand.
			mk.roots.Version = res.Version
		}
	}
	// The removals wait on the disk (or the network), not the CPU: a few
	// at once.
	var eg errgroup.Group
	eg.SetLimit(deleters)
	for _, f := range gone {
		eg.Go(func() error {
			if err := c.store.Delete(ctx, "", f.Digest); err != nil {
				return fmt.Errorf("removing %s from the store: %w", f.Digest, err)
			}
			return nil
		})
		size := stored.sizeOf(f.Digest)
		count(r, f.Manifest, size)
		c.opts.Log.Debug("collected", "digest", f.Digest, "manifest", f.Manifest, "size", size)
	}
	return eg.Wait()
}

// deleters bounds the store removals a sweep runs at once.
const deleters = 8

// addReferrerTag adds to g a tag of the referrers tag schema or of
// cosign's (key "host/repo:sha256-<hex>[.sig]"), naming dgst.
func addReferrerTag(g *graph, key, dgst []byte) {
	colon := bytes.LastIndexByte(key, ':')
	if colon < 0 || !bytes.Contains(key[colon:], []byte("-")) {
		return // not a referrer tag: no string made of its key or digest
	}
	_, _, tag, ok := storage.ParseTagKey(string(key))
	d := digest.Digest(dgst)
	if !ok || d.Validate() != nil {
		return
	}
	if subject, ok := referrerTagSubject(tag); ok {
		g.referrers[subject] = append(g.referrers[subject], d)
	}
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
