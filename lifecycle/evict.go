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
	if err := c.lock(ctx); err != nil {
		return Report{}, err
	}
	defer c.unlock()
	defer c.enterPass()()
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
	// The model is left behind once the victims have left the index,
	// but for its content table: the collection that follows takes it
	// rather than read the records again. The report's images are kept
	// compactly until the collection is over (evicted).
	kept := r.Kept
	p, err := c.plan(ctx, maxSize, evictAfter, now, &r)
	// A victim an admin pinned since the records were read (a pin does
	// not wait for the pass, and is answered as done) is no victim; on a
	// shared bucket, nor one another replica pulled (an image it serves
	// again after an idle spell) or pinned: the choice is made again
	// with its pull or pin.
	for range replans {
		if err != nil {
			break
		}
		var pulled, pinned bool
		if pinned, err = c.pinnedSince(p.victimPins()); err != nil {
			break
		}
		if !pinned && c.index.Shared() {
			if pulled, err = c.index.RecheckPulls(ctx, p.victimManifests()); err != nil {
				break
			}
			if pinned, err = c.index.RecheckPins(ctx, p.victimPins()); err != nil {
				break
			}
		}
		if !pulled && !pinned {
			break
		}
		p.release()
		r.Kept = kept
		p, err = c.plan(ctx, maxSize, evictAfter, now, &r)
	}
	defer p.release()
	// spared: victims a pin made meanwhile kept (unrootVictims).
	var spared map[storage.FillKey]bool
	defer func() {
		r.Evicted = slices.DeleteFunc(p.evicted.images(), func(im Image) bool {
			return spared[storage.FillKey{Upstream: im.Upstream, Repo: im.Repo, Digest: im.Digest}]
		})
	}()
	if err != nil {
		return r, false, err
	}
	c.logVictims(p)
	if !c.opts.DryRun {
		longest, spared, err = c.unrootVictims(p.m, p.victims)
		r.LongestWrite = max(r.LongestWrite, longest)
		if err != nil {
			return r, false, err
		}
	}
	p.m, p.victims = nil, nil
	r.ImagesEvicted = p.evicted.len() - len(spared)
	p.release()

	if collect != nil && !collect(r.ImagesEvicted > 0) {
		r.StoredAfter = c.index.StoredBytes()
		return r, false, nil
	}
	var drop *digestSet
	if c.opts.DryRun {
		drop = p.dropped // still in the index: collect as if they were not
	}
	cr, err := c.collect(ctx, p.table, drop, p.freed)
	r.add(cr)
	r.StoredAfter = c.index.StoredBytes()
	return r, true, err
}

// unrootVictims removes the victims from the index (see unroots),
// unrootChunk images at a time in the order of their repositories and
// digests: their unroots are made a chunk at a time (at 100k images, all
// of them at once, ~13 MiB for 50k victims). It returns the victims a
// pin made meanwhile kept (storage.Index.UnrootImagesTimed), by
// repository and digest.
func (c *Collector) unrootVictims(m *model, victims []int32) (time.Duration, map[storage.FillKey]bool, error) {
	names := m.fullNames()
	victims = slices.Clone(victims)
	slices.SortFunc(victims, func(i, j int32) int {
		a, b := &m.entries[i], &m.entries[j]
		return cmp.Or(cmp.Compare(names[a.name], names[b.name]), m.ids.compare(a.id, b.id))
	})
	var longest time.Duration
	var us []storage.Unroot
	var spared map[storage.FillKey]bool
	for chunk := range slices.Chunk(victims, unrootChunk) {
		us = us[:0]
		for _, i := range chunk {
			us = append(us, c.unroots(m, i, m.digest(&m.entries[i]))...)
		}
		l, pinned, err := c.unrootAll(us, unrootChunk) // a victim may have several
		longest = max(longest, l)
		if err != nil {
			return longest, spared, err
		}
		for _, i := range chunk {
			e := &m.entries[i]
			n := m.name(e)
			k := storage.FillKey{Upstream: n.upstream, Repo: n.repo, Digest: m.digest(e)}
			if pinned[k] {
				if spared == nil {
					spared = map[storage.FillKey]bool{}
				}
				spared[k] = true
				c.opts.Log.Info("kept cached image pinned while it was being evicted", "image", n.name(), "digest", k.Digest)
			}
		}
		clear(us)
	}
	return longest, spared, nil
}

// unrootChunk bounds the images one Index.UnrootImagesTimed removes: it
// keeps a key and more (~100 bytes) for each tag it removes, and at 100k
// images an eviction of half of them removes 500k tags (~50 MiB at once).
const unrootChunk = 2048

// unrootAll removes what us names from the index, chunk images at a
// time, in the order of their repositories (the keys' order: the
// chunks' writes stay side by side, as they were in one call); it
// returns how long the longest transaction held the write lock, and the
// unroots a pin kept, by repository and digest.
func (c *Collector) unrootAll(us []storage.Unroot, chunk int) (time.Duration, map[storage.FillKey]bool, error) {
	slices.SortFunc(us, func(a, b storage.Unroot) int {
		return cmp.Or(cmp.Compare(a.Upstream, b.Upstream), cmp.Compare(a.Repo, b.Repo), cmp.Compare(a.Digest, b.Digest))
	})
	var longest time.Duration
	var kept map[storage.FillKey]bool
	for len(us) > 0 {
		n := min(len(us), chunk)
		l, pinned, err := c.index.UnrootImagesTimed(us[:n])
		longest = max(longest, l)
		if err != nil {
			return longest, kept, err
		}
		for _, i := range pinned {
			if kept == nil {
				kept = map[storage.FillKey]bool{}
			}
			kept[storage.FillKey{Upstream: us[i].Upstream, Repo: us[i].Repo, Digest: us[i].Digest}] = true
		}
		clear(us[:n]) // their tags can go
		us = us[n:]
	}
	return longest, kept, nil
}

// evictPlan is what an eviction decided: the victims (in the report),
// what leaves the index, and the claims on the victims' digests, held
// until it has.
type evictPlan struct {
	// m is the model and victims its victims' entries, until they have
	// left the index; evicted are the report's images.
	m       *model
	victims []int32
	evicted evictedImages
	// freed: what no kept image references any more; dropped: the
	// victims' roots no kept image holds.
	freed, dropped *digestSet
	// table is the model's content table (freed and dropped number
	// digests in it).
	table *storage.ContentTable
	// claims are the claims on the victims' digests.
	claims Claims
}

// release releases the claims (once).
func (p *evictPlan) release() { p.claims.Release() }

// replans bounds how many times an eviction chooses its victims again
// for pulls or pins made since it read the records (see evict): each
// choice reads the model of every image.
const replans = 2

// victimPins are the pins that would keep the victims: their digests and
// tags.
func (p *evictPlan) victimPins() []string {
	var out []string
	for _, i := range p.victims {
		out = p.m.pinRefs(out, i)
	}
	return out
}

// pinRefs appends to out the pins that would keep image i: its digest
// and its tags.
func (m *model) pinRefs(out []string, i int32) []string {
	e := &m.entries[i]
	n := m.name(e)
	out = append(out, m.digest(e).String())
	if n.upstream == "" {
		return out
	}
	for _, tag := range splitTags(e.tags) {
		out = append(out, storage.TagKey(n.upstream, n.repo, tag))
	}
	return out
}

// pinnedSince reports whether any of refs is pinned in the index now.
func (c *Collector) pinnedSince(refs []string) (bool, error) {
	if len(refs) == 0 {
		return false, nil
	}
	pins, err := c.index.Pins()
	if err != nil {
		return false, err
	}
	for _, ref := range refs {
		if _, ok := pins[ref]; ok {
			return true, nil
		}
	}
	return false, nil
}

// victimManifests are the digests of the victims' manifests, whose
// recorded pulls make their last pull.
func (p *evictPlan) victimManifests() []digest.Digest {
	var out []digest.Digest
	for _, i := range p.victims {
		e := &p.m.entries[i]
		for _, id := range p.m.all(e)[:e.nManifests] {
			out = append(out, p.m.ids.digest(id))
		}
	}
	return out
}

// plan reads the images and chooses the victims (see Evict), adding them
// to p.evicted (the report's images, made after the collection).
func (c *Collector) plan(ctx context.Context, maxSize int64, evictAfter time.Duration, now time.Time, r *Report) (*evictPlan, error) {
	p := &evictPlan{freed: &digestSet{}, dropped: &digestSet{}, claims: claimsOf(c.opts.Guard)}
	m, err := c.model(ctx, false, false)
	if err != nil {
		return p, err
	}
	p.table = m.recs.Content
	var candidates []int32
	for _, i := range m.images {
		if !m.entries[i].pinned {
			candidates = append(candidates, i)
		}
	}
	names := m.fullNames()
	slices.SortFunc(candidates, func(i, j int32) int {
		a, b := &m.entries[i], &m.entries[j]
		return cmp.Or(a.lastPull.Compare(b.lastPull), cmp.Compare(names[a.name], names[b.name]), m.ids.compare(a.id, b.id))
	})

	kept := m.keptSize()
	var victims []int32
	// tried: by entry; claimed: by digest (the same digest may be an
	// image in several repositories).
	var tried, claimed idSet
	evict := func(i int32) {
		if tried.has(i) {
			return
		}
		tried.add(i)
		if c.mirroring(m, i, now) {
			r.Kept++
			return
		}
		e := &m.entries[i]
		if !claimed.has(e.id) {
			if !p.claims.Claim(m.digest(e)) {
				r.Kept++
				return
			}
			claimed.add(e.id)
		}
		victims = append(victims, i)
		for _, id := range m.all(e) {
			if m.refs[id]--; m.refs[id] == 0 {
				kept -= m.size(id)
				p.freed.addID(m.ids, id)
			}
		}
	}
	if evictAfter > 0 {
		cutoff := now.Add(-evictAfter)
		for _, i := range candidates {
			if m.entries[i].lastPull.Before(cutoff) {
				evict(i)
			}
		}
	}
	if maxSize > 0 {
		for _, i := range candidates {
			if kept <= maxSize {
				break
			}
			evict(i)
		}
	}
	candidates = nil

	if err := c.victimTags(m, victims); err != nil {
		return p, err
	}
	// Roots no kept image holds any more leave the index (evict), in a
	// few transactions for all the victims (not one per tag).
	p.m, p.victims = m, victims
	p.evicted.grow(len(victims))
	for _, i := range victims {
		p.evicted.add(m.image(i))
		for _, root := range m.roots(i) {
			if id := m.entries[root].id; m.refs[id] == 0 {
				p.dropped.addID(m.ids, id)
			}
		}
	}
	return p, nil
}

// logVictims logs the victims of the plan chosen last: not in plan,
// whose choice an eviction on a shared bucket may make again (evict),
// sparing a victim it had logged.
func (c *Collector) logVictims(p *evictPlan) {
	for _, i := range p.victims {
		im := p.m.image(i)
		c.opts.Log.Info("evicting cached image", "image", im.Name(), "tags", im.Tags, "digest", im.Digest,
			"size", im.Size, "last_pull", im.LastPull, "dry_run", c.opts.DryRun)
	}
}

// fullNames are the model's repository names as Image.Name gives them.
func (m *model) fullNames() []string {
	out := make([]string, len(m.names))
	for i, n := range m.names {
		out[i] = n.name()
	}
	return out
}

// victimTags gives the victims, chosen by a model read without their
// plain tags, those tags (sorted), read in a second scan of the tags:
// what the report lists and the unroots remove. A tag written since the
// model was read that names a victim goes with it (as one moved away
// would have stayed: the index deletes a tag only if it still names the
// digest).
func (c *Collector) victimTags(m *model, victims []int32) error {
	if len(victims) == 0 {
		return nil
	}
	// By repository and digest identifier, both looked up from the
	// key's and the record's bytes: no string made per tag, nor one per
	// victim (at 100k images, 50k victims: ~12 MiB as "host/repo@digest").
	byKey := make(map[imageKey]int32, len(victims))
	names := map[string]int32{}
	for _, i := range victims {
		e := &m.entries[i]
		byKey[e.imageKey] = i
		if n := m.name(e); n.upstream != "" {
			names[n.name()] = e.name
		}
	}
	err := c.index.ReadTagDigests(func(key, d []byte) {
		colon := bytes.LastIndexByte(key, ':')
		if colon < 0 || colon == len(key)-1 {
			return
		}
		name, ok := names[string(key[:colon])]
		if !ok {
			return
		}
		id, ok := m.ids.lookupBytes(d)
		if !ok {
			return
		}
		i, ok := byKey[imageKey{name, id}]
		if !ok {
			return
		}
		// Its own string: a part of the key's would keep the key.
		tag := string(key[colon+1:])
		if _, artifact := referrerTagSubject(tag); !artifact { // those are kept already
			e := &m.entries[i]
			e.tags = joinTag(e.tags, tag)
		}
	})
	for _, i := range victims {
		e := &m.entries[i]
		e.tags = sortTags(e.tags)
	}
	return err
}

// mirroring reports whether image i is being mirrored: one of its roots
// has a mirror record that is not complete and was updated within the
// grace period. Evicting it would race the mirror, which records the image
// complete when it is done, whatever the eviction removed meanwhile: the
// image would come back without its tags.
func (c *Collector) mirroring(m *model, i int32, now time.Time) bool {
	for _, r := range m.roots(i) {
		if f := m.entries[r].fill; f.ok && m.states[f.state] != storage.FillComplete && c.recent(now, f.updated()) {
			return true
		}
	}
	return false
}

// unroots is what evicting image i (of digest d) removes from the index:
// its tags, its signatures' tags unless a kept image keeps them, and its
// mirror records (a folded child's only if no kept image lists it).
// m.refs must already count the image out.
func (c *Collector) unroots(m *model, i int32, d digest.Digest) []storage.Unroot {
	e := &m.entries[i]
	n := m.name(e)
	// A pin made since the pins were read keeps all of it.
	pins := m.pinRefs(nil, i)
	u := storage.Unroot{Upstream: n.upstream, Repo: n.repo, Digest: d, Tags: splitTags(e.tags), Pins: pins}
	for k, r := range m.roots(i) {
		if f := &m.entries[r]; f.fill.ok && (k == 0 || m.refs[f.id] == 0) {
			fn, fd := m.name(f), d
			if k > 0 {
				fd = m.digest(f)
			}
			u.Fills = append(u.Fills, storage.FillKey{Upstream: fn.upstream, Repo: fn.repo, Digest: fd})
		}
	}
	us := []storage.Unroot{u}
	for _, r := range m.folded[i] {
		f := &m.entries[r]
		if m.refs[f.id] != 0 {
			continue
		}
		fn, fd := m.name(f), m.digest(f)
		for _, tag := range splitTags(f.tags) {
			us = append(us, storage.Unroot{Upstream: fn.upstream, Repo: fn.repo, Digest: fd, Tags: []string{tag}, Pins: pins})
		}
	}
	return us
}
