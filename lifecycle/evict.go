package lifecycle

import (
	"bytes"
	"cmp"
	"context"
	"slices"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/docker-mirror/docker-mirror/storage"
)

// Evict evicts images, then collects. Every unpinned image not pulled
// since now-evictAfter (if evictAfter > 0) is evicted; then, while what
// the remaining images keep is larger than maxSize (if maxSize > 0), the
// least recently pulled unpinned image is. Pinned images, images the
// guard reports in use and images being mirrored (a mirror record not
// complete, updated within the grace period) are never evicted. An image
// is evicted whole: its tags and mirror records leave the index, and the
// collection removes its manifests and the blobs no kept image references.
func (c *Collector) Evict(ctx context.Context, maxSize int64, evictAfter time.Duration, now time.Time) (Report, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.refresh(ctx); err != nil {
		return Report{}, err
	}
	r, _, err := c.evict(ctx, maxSize, evictAfter, now, nil)
	c.opts.Metrics.observe("evict", "evict", r, err)
	return r, err
}

// evict evicts, then collects unless collect (if not nil) says not to,
// given whether anything was evicted; collected says whether it did.
func (c *Collector) evict(ctx context.Context, maxSize int64, evictAfter time.Duration, now time.Time, collect func(evicted bool) bool) (r Report, collected bool, err error) {
	r = Report{DryRun: c.opts.DryRun, StoredBefore: c.index.StoredBytes()}
	longest, err := c.index.FlushTimed()
	r.LongestWrite = max(r.LongestWrite, longest)
	if err != nil {
		return r, false, err
	}
	// The model and the victims are left behind once the plan is made:
	// the collection that follows holds its own view of the whole index.
	p, err := c.plan(ctx, maxSize, evictAfter, now, &r)
	defer p.release()
	if err != nil {
		return r, false, err
	}
	longest, err = c.index.UnrootImagesTimed(p.unroots)
	p.unroots = nil
	r.LongestWrite = max(r.LongestWrite, longest)
	if err != nil {
		return r, false, err
	}
	r.ImagesEvicted = len(r.Evicted)
	p.release()

	if collect != nil && !collect(len(r.Evicted) > 0) {
		r.StoredAfter = c.index.StoredBytes()
		return r, false, nil
	}
	var drop *digestSet
	if c.opts.DryRun {
		drop = p.dropped // still in the index: collect as if they were not
	}
	cr, err := c.collect(ctx, drop, p.freed)
	r.add(cr)
	r.StoredAfter = c.index.StoredBytes()
	return r, true, err
}

// evictPlan is what an eviction decided: the victims (in the report),
// what leaves the index, and the claims on the victims' digests, held
// until it has.
type evictPlan struct {
	unroots []storage.Unroot
	// freed: what no kept image references any more; dropped: the
	// victims' roots no kept image holds.
	freed, dropped *digestSet
	releases       []func()
}

// release releases the claims (once).
func (p *evictPlan) release() {
	for _, rel := range p.releases {
		rel()
	}
	p.releases = nil
}

// plan reads the images and chooses the victims (see Evict), adding them
// to r.Evicted.
func (c *Collector) plan(ctx context.Context, maxSize int64, evictAfter time.Duration, now time.Time, r *Report) (*evictPlan, error) {
	p := &evictPlan{freed: &digestSet{}, dropped: &digestSet{}}
	m, err := c.model(ctx, false, false)
	if err != nil {
		return p, err
	}
	var candidates []*entry
	for _, e := range m.images {
		if !e.Pinned {
			candidates = append(candidates, e)
		}
	}
	slices.SortFunc(candidates, func(a, b *entry) int {
		return cmp.Or(a.LastPull.Compare(b.LastPull), cmp.Compare(a.Name(), b.Name()), cmp.Compare(a.Digest, b.Digest))
	})

	kept := m.keptSize()
	var victims []*entry
	tried := map[*entry]bool{}
	claimed := map[digest.Digest]bool{} // the same digest may be an image in several repositories
	evict := func(e *entry) {
		if tried[e] {
			return
		}
		tried[e] = true
		if c.mirroring(m, e, now) {
			r.Kept++
			return
		}
		if !claimed[e.Digest] {
			rel, ok := c.opts.Guard.Claim(e.Digest)
			if !ok {
				r.Kept++
				return
			}
			p.releases = append(p.releases, rel)
			claimed[e.Digest] = true
		}
		victims = append(victims, e)
		for _, id := range e.reach.all() {
			if m.refs[id]--; m.refs[id] == 0 {
				kept -= m.size(id)
				p.freed.add(m.ids.digest(id))
			}
		}
	}
	if evictAfter > 0 {
		cutoff := now.Add(-evictAfter)
		for _, e := range candidates {
			if e.LastPull.Before(cutoff) {
				evict(e)
			}
		}
	}
	if maxSize > 0 {
		for _, e := range candidates {
			if kept <= maxSize {
				break
			}
			evict(e)
		}
	}

	if err := c.victimTags(victims); err != nil {
		return p, err
	}
	// Roots no kept image holds any more leave the index, in a few
	// transactions for all the victims (not one per tag).
	for _, e := range victims {
		r.Evicted = append(r.Evicted, e.Image)
		c.opts.Log.Info("evicting cached image", "image", e.Name(), "tags", e.Tags, "digest", e.Digest,
			"size", e.Size, "last_pull", e.LastPull, "dry_run", c.opts.DryRun)
		for _, k := range e.roots() {
			if m.refsOf(k.digest) == 0 {
				p.dropped.add(k.digest)
			}
		}
		if c.opts.DryRun {
			continue
		}
		p.unroots = append(p.unroots, c.unroots(m, e)...)
	}
	return p, nil
}

// victimTags gives the victims, chosen by a model read without their
// plain tags, those tags (sorted), read in a second scan of the tags:
// what the report lists and the unroots remove. A tag written since the
// model was read that names a victim goes with it (as one moved away
// would have stayed: the index deletes a tag only if it still names the
// digest).
func (c *Collector) victimTags(victims []*entry) error {
	if len(victims) == 0 {
		return nil
	}
	// By "host/repo@digest": looked up from the key's bytes, no string
	// made per tag.
	byKey := make(map[string]*entry, len(victims))
	for _, e := range victims {
		byKey[e.Upstream+"/"+e.Repo+"@"+string(e.Digest)] = e
	}
	var buf []byte
	err := c.index.ReadTagDigests(func(key, d []byte) {
		colon := bytes.LastIndexByte(key, ':')
		if colon < 0 {
			return
		}
		buf = append(append(append(buf[:0], key[:colon]...), '@'), d...)
		e := byKey[string(buf)]
		if e == nil {
			return
		}
		if colon == len(key)-1 {
			return
		}
		// Its own string: a part of the key's would keep the key.
		tag := string(key[colon+1:])
		if _, artifact := referrerTagSubject(tag); !artifact { // those are kept already
			e.Tags = append(e.Tags, tag)
		}
	})
	for _, e := range victims {
		slices.Sort(e.Tags)
		if cap(e.Tags) > len(e.Tags) { // appended one by one
			e.Tags = slices.Clone(e.Tags)
		}
	}
	return err
}

// mirroring reports whether an image is being mirrored: one of its roots
// has a mirror record that is not complete and was updated within the
// grace period. Evicting it would race the mirror, which records the image
// complete when it is done, whatever the eviction removed meanwhile: the
// image would come back without its tags.
func (c *Collector) mirroring(m *model, e *entry, now time.Time) bool {
	for _, k := range e.roots() {
		if rec, ok := m.mirrors[k]; ok && rec.state != storage.FillComplete && c.recent(now, rec.updated()) {
			return true
		}
	}
	return false
}

// unroots is what evicting e removes from the index: its tags, its
// signatures' tags unless a kept image keeps them, and its mirror records
// (a folded child's only if no kept image lists it). m.refs must already
// count the image out.
func (c *Collector) unroots(m *model, e *entry) []storage.Unroot {
	u := storage.Unroot{Upstream: e.Upstream, Repo: e.Repo, Digest: e.Digest, Tags: e.Tags}
	for i, k := range e.roots() {
		if _, ok := m.mirrors[k]; ok && (i == 0 || m.refsOf(k.digest) == 0) {
			u.Fills = append(u.Fills, storage.FillKey{Upstream: k.upstream, Repo: k.repo, Digest: k.digest})
		}
	}
	us := []storage.Unroot{u}
	for _, a := range e.artifactTags {
		if m.refsOf(a.key.digest) == 0 {
			us = append(us, storage.Unroot{Upstream: a.key.upstream, Repo: a.key.repo, Digest: a.key.digest, Tags: []string{a.tag}})
		}
	}
	return us
}
