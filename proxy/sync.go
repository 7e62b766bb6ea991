package proxy

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"path"
	"sort"
	"time"

	"github.com/docker-mirror/docker-mirror/oci"
	"github.com/docker-mirror/docker-mirror/proxy/errcode"
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

// RunSync runs s now and then every interval until ctx ends. A run is
// skipped while a sync job is still going (the last run, longer than the
// interval, or one a restart left unfinished and ResumeJobs resumed): a
// second beside it would go over the same images again. In a cluster,
// only the replica that owns the sync runs it (each would start the same
// job); if it is down, the next in hash order does.
func (p *Proxy) RunSync(ctx context.Context, s Sync, interval time.Duration) {
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		if p.peers != nil && !p.peers.Owns(syncKey) {
			p.log.Debug("sync: another replica of the cluster runs it")
		} else if p.syncRunning() {
			p.log.Info("sync: the last run has not finished; this one is skipped")
		} else if _, err := p.SyncOnce(ctx, s); err != nil {
			p.log.Warn("sync", "error", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// syncRunning reports whether a sync job is running.
func (p *Proxy) syncRunning() bool {
	p.jobs.mu.Lock()
	defer p.jobs.mu.Unlock()
	for _, j := range p.jobs.live {
		if j.Trigger == syncTrigger {
			return true
		}
	}
	return false
}

// syncKey decides which replica of a cluster runs the sync.
const syncKey = "sync"

// syncTrigger is the Trigger of the sync's jobs.
const syncTrigger = "sync"

// SyncOnce expands s's tag patterns and starts one prefetch job for the
// resulting images. An entry whose tags cannot be listed (its repository
// removed upstream, its upstream down) is left out with a warning, as an
// image that cannot be fetched fails alone: the others are synced.
func (p *Proxy) SyncOnce(ctx context.Context, s Sync) (*storage.Job, error) {
	var images []string
	var errs []error
	for _, entry := range s.Images {
		expanded, err := p.ExpandTags(ctx, entry)
		if err != nil {
			errs = append(errs, fmt.Errorf("sync %q: %w", entry, err))
			continue
		}
		images = append(images, expanded...)
	}
	if len(images) == 0 && len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	for _, err := range errs {
		p.log.Warn("sync: entry left out of this run", "error", err)
	}
	if len(images) == 0 {
		return nil, fmt.Errorf("sync: no tag matches %q", s.Images)
	}
	return p.StartPrefetch(ctx, PrefetchRequest{Images: images, Platforms: s.Platforms, Pin: s.Pin}, syncTrigger)
}

// CheckSync checks a sync's images as its runs read them: references to
// a configured upstream, and tag patterns path.Match reads. One entry
// that is not would fail every run, each only with a warning in the log.
func (p *Proxy) CheckSync(s Sync) error {
	for _, entry := range s.Images {
		name, pattern, ok := oci.TagPattern(entry)
		if ok {
			if _, err := path.Match(pattern, ""); err != nil {
				return fmt.Errorf("%q: invalid tag pattern %q: %w", entry, pattern, err)
			}
			entry = name
		}
		if _, err := p.parseImage(entry); err != nil {
			var e *errcode.Error
			if errors.As(err, &e) {
				return errors.New(e.Message) // the message alone names the reference
			}
			return err
		}
	}
	return nil
}

// maxTagPages bounds the pages of one tag list ExpandTags reads: 10,000
// pages of up to 1,000 tags, and no upstream's tokens can keep it reading.
const maxTagPages = 10000

// ExpandTags turns "name:pattern" into one reference per matching tag
// upstream ("name:*" for all of them); a reference without a pattern is
// returned as it is.
func (p *Proxy) ExpandTags(ctx context.Context, entry string) ([]string, error) {
	name, pattern, ok := oci.TagPattern(entry)
	if !ok {
		return []string{entry}, nil
	}
	if _, err := path.Match(pattern, ""); err != nil {
		return nil, fmt.Errorf("invalid tag pattern %q: %w", pattern, err)
	}
	im, err := p.parseImage(name)
	if err != nil {
		return nil, err
	}
	var out []string
	skipped := 0
	seen := map[string]bool{}
	for query := (url.Values{"n": {"1000"}}); query != nil; {
		// An upstream whose Link leads back to a page already read
		// would keep the loop going for ever.
		if key := query.Encode(); seen[key] {
			return nil, fmt.Errorf("tags of %s: upstream %s lists page %q again", im.t.repo, im.t.host(), key)
		} else if len(seen) == maxTagPages {
			return nil, fmt.Errorf("tags of %s: upstream %s lists over %d pages", im.t.repo, im.t.host(), maxTagPages)
		} else {
			seen[key] = true
		}
		pg, err := im.t.up.Tags(ctx, im.t.repo, query)
		if err != nil {
			return nil, err
		}
		for _, tag := range pg.Tags {
			if !oci.ValidTag(tag) {
				skipped++ // would fail the whole job it is in
				continue
			}
			if ok, _ := path.Match(pattern, tag); ok {
				out = append(out, name+":"+tag)
			}
		}
		query = pg.Next
	}
	if skipped > 0 {
		p.log.Warn("tags the upstream lists are not valid tags; skipped", "upstream", im.t.host(), "repo", im.t.repo, "skipped", skipped)
	}
	sort.Strings(out)
	return out, nil
}
