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
// being mirrored or one in use is refused.
func (c *Collector) EvictImage(ctx context.Context, upstream, repo string, dgst digest.Digest) (Report, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
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
	var e *entry
	for _, x := range m.images {
		if x.Upstream == upstream && x.Repo == repo && x.Digest == dgst {
			e = x
			break
		}
	}
	switch {
	case e == nil:
		return r, fmt.Errorf("%w: %s/%s@%s", ErrImageUnknown, upstream, repo, dgst)
	case e.Pinned:
		return r, fmt.Errorf("%s: %w", e.Name(), ErrImagePinned)
	case c.mirroring(m, e, c.opts.Now()):
		return r, fmt.Errorf("%s: %w", e.Name(), ErrImageBusy)
	}
	release, ok := c.opts.Guard.Claim(e.Digest)
	if !ok {
		return r, fmt.Errorf("%s: %w", e.Name(), ErrImageBusy)
	}
	released := false
	defer func() {
		if !released {
			release()
		}
	}()
	freed := &digestSet{} // collected at once, whatever its age
	for _, id := range e.reach.all() {
		if m.refs[id]--; m.refs[id] == 0 {
			freed.add(m.ids.digest(id))
		}
	}
	r.Evicted = append(r.Evicted, e.Image)
	c.opts.Log.Info("evicting cached image on request", "image", e.Name(), "tags", e.Tags, "digest", e.Digest, "size", e.Size, "dry_run", c.opts.DryRun)
	if !c.opts.DryRun {
		longest, err := c.index.UnrootImagesTimed(c.unroots(m, e))
		r.LongestWrite = max(r.LongestWrite, longest)
		if err != nil {
			return r, err
		}
	}
	r.ImagesEvicted = 1
	release()
	released = true
	cr, err := c.collect(ctx, nil, freed)
	r.add(cr)
	r.StoredAfter = c.index.StoredBytes()
	c.opts.Metrics.observe("evict", "request", r, err)
	return r, err
}
