package proxy

import (
	"context"
	"fmt"
	"path"
	"sort"
	"strings"
	"time"

	"github.com/docker-mirror/docker-mirror/storage"
)

// Sync keeps images mirrored and fresh ahead of time, so the first pull
// after a new release is already a hit: each run starts a prefetch job of
// the images (tag patterns expanded against the upstream's tag list),
// visible like any other job.
type Sync struct {
	// Images are references; a tag may be a path.Match pattern, e.g.
	// "library/redis:7.*".
	Images []string
	// Platforms narrow the platforms mirrored; empty: the configured ones.
	Platforms []string
	// Pin keeps the synced images out of eviction.
	Pin bool
}

// RunSync runs s now and then every interval until ctx ends.
func (p *Proxy) RunSync(ctx context.Context, s Sync, interval time.Duration) {
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		if _, err := p.SyncOnce(ctx, s); err != nil {
			p.log.Warn("sync", "error", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// SyncOnce expands s's tag patterns and starts one prefetch job for the
// resulting images.
func (p *Proxy) SyncOnce(ctx context.Context, s Sync) (*storage.Job, error) {
	var images []string
	for _, entry := range s.Images {
		expanded, err := p.ExpandTags(ctx, entry)
		if err != nil {
			return nil, fmt.Errorf("sync %q: %w", entry, err)
		}
		images = append(images, expanded...)
	}
	if len(images) == 0 {
		return nil, fmt.Errorf("sync: no tag matches %q", s.Images)
	}
	return p.StartPrefetch(ctx, PrefetchRequest{Images: images, Platforms: s.Platforms, Pin: s.Pin}, "sync")
}

// ExpandTags turns "name:pattern" into one reference per matching tag
// upstream ("name:*" for all of them); a reference without a pattern is
// returned as it is.
func (p *Proxy) ExpandTags(ctx context.Context, entry string) ([]string, error) {
	slash := strings.LastIndexByte(entry, '/')
	colon := strings.LastIndexByte(entry, ':')
	if colon <= slash || !strings.ContainsAny(entry[colon+1:], "*?[") {
		return []string{entry}, nil
	}
	name, pattern := entry[:colon], entry[colon+1:]
	if _, err := path.Match(pattern, ""); err != nil {
		return nil, fmt.Errorf("invalid tag pattern %q: %w", pattern, err)
	}
	im, err := p.parseImage(name)
	if err != nil {
		return nil, err
	}
	var out []string
	last := ""
	for {
		tags, more, err := im.t.up.Tags(ctx, im.t.repo, 1000, last)
		if err != nil {
			return nil, err
		}
		for _, tag := range tags {
			if ok, _ := path.Match(pattern, tag); ok {
				out = append(out, name+":"+tag)
			}
		}
		if !more || len(tags) == 0 {
			break
		}
		last = tags[len(tags)-1]
	}
	sort.Strings(out)
	return out, nil
}
