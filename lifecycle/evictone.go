package lifecycle

import (
	"context"
	"errors"
	"fmt"

	"github.com/opencontainers/go-digest"
)

// Why EvictImage may refuse.
var (
	ErrImageUnknown = errors.New("no such cached image")
	ErrImagePinned  = errors.New("image is pinned: unpin it first")
	ErrImageBusy    = errors.New("image is being pulled or mirrored: try again later")
)

// EvictImage evicts one image on an admin's request, as Evict evicts the
// least recently pulled: its tags and mirror records leave the index, and
// a collection removes what no kept image references. A pinned image, one
// being mirrored or one in use is refused. It waits for a pass that runs,
// or for ctx to end (an admin's request whose client left); once it
// removes the image from the index it finishes, collection included,
// whatever ctx does: a request cut then (a reverse proxy's timeout) would
// leave the image untagged and its content stored.
func (c *Collector) EvictImage(ctx context.Context, upstream, repo string, dgst digest.Digest) (Report, error) {
	if err := c.lock(ctx); err != nil {
		return Report{}, err
	}
	defer c.unlock()
	defer c.enterPass()() // the model of every image, and a collection
	// On a shared bucket, what another replica recorded since the last
	// pass keeps what it shares with this image, as in every pass.
	if err := c.refresh(ctx); err != nil {
		return Report{}, err
	}
	r := Report{DryRun: c.opts.DryRun, StoredBefore: c.index.StoredBytes()}
	longest, err := c.index.FlushTimed()
	r.LongestWrite = longest
	if err != nil {
		return r, err
	}
	m, err := c.model(ctx, false, true)
	if err != nil {
		return r, err
	}
	found := int32(-1)
	if id, ok := m.ids.lookup(dgst); ok {
		for _, i := range m.images {
			e := &m.entries[i]
			if n := m.name(e); e.id == id && n.upstream == upstream && n.repo == repo {
				found = i
				break
			}
		}
	}
	if found < 0 {
		return r, fmt.Errorf("%w: %s/%s@%s", ErrImageUnknown, upstream, repo, dgst)
	}
	e := &m.entries[found]
	im := m.image(found)
	switch {
	case e.pinned:
		return r, fmt.Errorf("%s: %w", im.Name(), ErrImagePinned)
	case c.mirroring(m, found, c.opts.Now()):
		return r, fmt.Errorf("%s: %w", im.Name(), ErrImageBusy)
	}
	release, ok := c.opts.Guard.Claim(im.Digest)
	if !ok {
		return r, fmt.Errorf("%s: %w", im.Name(), ErrImageBusy)
	}
	released := false
	defer func() {
		if !released {
			release()
		}
	}()
	// A pin made since the model read the pins (a pin does not wait for
	// an eviction, and is answered as done) keeps the image: one made
	// here, or on a shared bucket by another replica, as in Evict.
	pins := m.pinRefs(nil, found)
	pinned, err := c.pinnedSince(pins)
	if err == nil && !pinned && c.index.Shared() {
		pinned, err = c.index.RecheckPins(ctx, pins)
	}
	if err != nil {
		return r, err
	} else if pinned {
		return r, fmt.Errorf("%s: %w", im.Name(), ErrImagePinned)
	}
	freed := &digestSet{} // collected at once, whatever its age
	for _, id := range m.all(e) {
		if m.refs[id]--; m.refs[id] == 0 {
			freed.addID(m.ids, id)
		}
	}
	ctx = context.WithoutCancel(ctx) // carried out whole from here (see above)
	r.Evicted = append(r.Evicted, im)
	c.opts.Log.Info("evicting cached image on request", "image", im.Name(), "tags", im.Tags, "digest", im.Digest, "size", im.Size, "dry_run", c.opts.DryRun)
	if !c.opts.DryRun {
		longest, spared, err := c.index.UnrootImagesTimed(c.unroots(m, found, im.Digest))
		r.LongestWrite = max(r.LongestWrite, longest)
		if err != nil {
			return r, err
		}
		if len(spared) > 0 { // pinned meanwhile
			r.Evicted = nil
			return r, fmt.Errorf("%s: %w", im.Name(), ErrImagePinned)
		}
	}
	r.ImagesEvicted = 1
	release()
	released = true
	cr, err := c.collect(ctx, m.recs.Content, nil, freed)
	r.add(cr)
	r.StoredAfter = c.index.StoredBytes()
	c.opts.Metrics.observe("evict", "request", r, err)
	return r, err
}
