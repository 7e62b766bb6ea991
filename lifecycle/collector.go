// Package lifecycle manages what the embedded store keeps: it lists the
// cached images, evicts the least recently pulled ones when the store
// outgrows its limit (or those not pulled for a while), collects the blobs
// and manifests no kept image references, and verifies stored content
// against its digests.
//
// It works on the embedded store (a storage.DriverStore and its Index). A
// registry destination keeps content the lifecycle cannot see; use that
// registry's own garbage collection.
//
// # Images
//
// An image is a root of the cache: a manifest (index or image) that a tag
// names, or that has a mirror record (pulled by digest, or mirrored), or
// that is pinned. What an image keeps is its manifest, the child manifests
// of an index, and their configs and layers. A mirror record of a child
// manifest (a client pulled it by digest) is folded into the index that
// lists it. The same digest cached under two repositories is two images;
// the content is kept while either is.
//
// # Running next to the proxy
//
// Eviction only removes index entries (tags, mirror records); the
// collection that follows removes content. Before removing a digest the
// collector claims it from a Guard, and skips it if the proxy is using it;
// with InUse the proxy also waits for a removal in progress and then finds
// the content gone, so it fetches it again, and what the digests it holds
// reference (an image being mirrored or copied) is kept like what roots
// reference. Content no image references that was recorded, written or
// accessed within the grace period is not collected either: the moment
// between a write and the record that references it. The content an
// eviction has just freed is not subject to the grace period: it is
// removed in the same pass unless it is in use. Roots recorded while a
// collection runs, and manifests stored since they were found missing,
// are read again before each batch is removed.
//
// With the filesystem driver a removed blob stays readable by a client
// that opened it before (an open file survives its unlink): serving does
// not need to hold the digest once the file is open. On drivers without
// that property (s3) serving holds it until its answer ends; a client in
// the middle of a download of content another process removed (a
// replica sharing the bucket) gets an error.
package lifecycle

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/docker-mirror/docker-mirror/gchold"
	"github.com/docker-mirror/docker-mirror/storage"
)

// DefaultGrace is the grace period the server collects with: content no
// image references, written or accessed in the last minute, is kept. It
// covers the moment between a write and the record that references it;
// what a pull is using is the Guard's to protect.
const DefaultGrace = time.Minute

// SharedGrace is the grace period on a store replicas share: another
// replica's work in progress (a prefetch by digest, whose image is
// recorded at its end) is not this one's guard's to protect.
const SharedGrace = 10 * time.Minute

// DefaultCollectEvery is how often the server collects when no eviction
// asks for it (Policy.CollectEvery).
const DefaultCollectEvery = 10 * time.Minute

// batchSize is how many digests are claimed and removed at a time.
const batchSize = 256

// Options configure a Collector.
type Options struct {
	// Grace: unreferenced content recorded, written or accessed less than
	// Grace ago is not collected (content an eviction has just freed
	// excepted). 0 collects everything unreferenced (offline).
	Grace time.Duration
	// Guard, if set, is asked before anything is evicted or removed; if
	// it is also a Holder, what the digests it holds reference is kept.
	Guard Guard
	// Now is the clock (default time.Now).
	Now func() time.Time
	// Log receives what was evicted and removed (default: discarded).
	Log *slog.Logger
	// Metrics, if set, count evictions, removals and corrupt content.
	Metrics *Metrics
	// DryRun computes and reports, and changes nothing.
	DryRun bool
	// Owned, if set, says which unreferenced content this collector
	// removes: with several replicas on one store, each removes only the
	// digests it owns (nil: all of them).
	Owned func(digest.Digest) bool
	// GCHold, if set, lowers the GC's percent while a long pass runs (a
	// collection, an eviction, an image list's build and visit): a pass
	// builds most of the process's heap, and the GC's headroom over it
	// is most of the process's peak. nil leaves the percent alone.
	GCHold *gchold.Hold
}

// Collector runs the cache lifecycle on an embedded store and its index.
// Its operations run one at a time; listing the images (ListImages,
// Images) runs beside them.
type Collector struct {
	store *storage.DriverStore
	index *storage.Index
	opts  Options
	// mu is held by an operation (a pass, an eviction, a collection, a
	// verification) throughout: a channel of one, so that an operation
	// waiting for it ends with its context (lock).
	mu chan struct{}
	// lastCollect is when Pass last collected.
	lastCollect time.Time
}

// New returns a Collector of store and index.
func New(store *storage.DriverStore, index *storage.Index, opts Options) *Collector {
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	if opts.Guard == nil {
		opts.Guard = BusyFunc(nil)
	}
	return &Collector{store: store, index: index, opts: opts, mu: make(chan struct{}, 1)}
}

// lock takes c.mu, or fails with ctx: an admin's eviction asked for
// during a pass (minutes on a large store) ends with its request, not
// after the pass.
func (c *Collector) lock(ctx context.Context) error {
	select {
	case c.mu <- struct{}{}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// tryLock takes c.mu if no operation holds it.
func (c *Collector) tryLock() bool {
	select {
	case c.mu <- struct{}{}:
		return true
	default:
		return false
	}
}

// unlock lets c.mu go.
func (c *Collector) unlock() { <-c.mu }

// ErrRegistryDestination is returned by NewForStore for a store that is
// not the embedded one.
var ErrRegistryDestination = errors.New("the cache lifecycle (eviction, gc, ls, rehashing) works on the embedded store only; a registry destination manages its own storage (use its garbage collection; verify --destination checks the index against it)")

// NewForStore is New for any Store: it fails with ErrRegistryDestination
// unless store is the embedded *storage.DriverStore.
func NewForStore(store storage.Store, index *storage.Index, opts Options) (*Collector, error) {
	ds, ok := store.(*storage.DriverStore)
	if !ok {
		return nil, ErrRegistryDestination
	}
	return New(ds, index, opts), nil
}

// Report says what an operation did (or, in a dry run, would do).
type Report struct {
	// DryRun: nothing was changed; the counts say what would have been.
	DryRun bool `json:"dry_run,omitempty"`

	// ImagesEvicted counts the images evicted; Evicted lists them.
	ImagesEvicted int     `json:"images_evicted"`
	Evicted       []Image `json:"evicted,omitempty"`

	// BlobsRemoved and ManifestsRemoved count the content removed from
	// the store and the index; BytesFreed is its size in the store.
	BlobsRemoved     int   `json:"blobs_removed"`
	ManifestsRemoved int   `json:"manifests_removed"`
	BytesFreed       int64 `json:"bytes_freed"`
	// TagsRemoved counts tags removed because the manifest they named
	// was corrupt or missing.
	TagsRemoved int `json:"tags_removed,omitempty"`
	// Kept counts unreferenced, corrupt or evictable content left alone
	// because it was in use or within the grace period.
	Kept int `json:"kept,omitempty"`

	// BlobsChecked, ManifestsChecked and BytesChecked are what Verify
	// rehashed.
	BlobsChecked     int   `json:"blobs_checked,omitempty"`
	ManifestsChecked int   `json:"manifests_checked,omitempty"`
	BytesChecked     int64 `json:"bytes_checked,omitempty"`
	// CorruptBlobs and CorruptManifests count the content Verify found
	// not matching its digest; Corrupt lists it.
	CorruptBlobs     int             `json:"corrupt_blobs,omitempty"`
	CorruptManifests int             `json:"corrupt_manifests,omitempty"`
	Corrupt          []digest.Digest `json:"corrupt,omitempty"`
	// Missing counts index entries naming content the store lacks;
	// MissingContent lists their digests.
	Missing        int             `json:"missing,omitempty"`
	MissingContent []digest.Digest `json:"missing_content,omitempty"`
	// FillsReset counts images whose mirror state went back to partial
	// because Verify removed some of their content: the next pull
	// mirrors them again.
	FillsReset int `json:"mirrors_reset,omitempty"`
	// UnreadableRecords lists the index's records Verify found that
	// cannot be decoded; a repair drops them (storage.DropRecords).
	UnreadableRecords []storage.UnreadableRecord `json:"unreadable_records,omitempty"`

	// LongestWrite is how long the pass's longest index transaction held
	// the index's write lock (pulls that record content wait that long).
	LongestWrite time.Duration `json:"longest_write_ns,omitempty"`

	// StoredBefore and StoredAfter are the indexed size of the store.
	StoredBefore int64 `json:"stored_before"`
	StoredAfter  int64 `json:"stored_after"`
}

// CorruptFound is the number of corrupt blobs and manifests found.
func (r Report) CorruptFound() int { return r.CorruptBlobs + r.CorruptManifests }

// add merges another report's removals into r.
func (r *Report) add(o Report) {
	r.BlobsRemoved += o.BlobsRemoved
	r.ManifestsRemoved += o.ManifestsRemoved
	r.BytesFreed += o.BytesFreed
	r.TagsRemoved += o.TagsRemoved
	r.Kept += o.Kept
	r.LongestWrite = max(r.LongestWrite, o.LongestWrite)
}

// Pin keeps an image out of eviction. ref is its root digest, or a
// storage.TagKey ("host/repo:tag"), which pins whatever the tag points to.
func (c *Collector) Pin(ctx context.Context, ref, reason string) error {
	return c.index.Pin(ctx, ref, storage.PinRecord{PinnedAt: c.opts.Now(), Reason: reason})
}

// Unpin lets an image be evicted again.
func (c *Collector) Unpin(ctx context.Context, ref string) error { return c.index.Unpin(ctx, ref) }

// Policy is what the server's periodic lifecycle enforces.
type Policy struct {
	// MaxSize, if > 0, is the size the store is kept under.
	MaxSize int64
	// EvictAfter, if > 0, evicts images not pulled for that long.
	EvictAfter time.Duration
	// CollectEvery, if > 0, is how often a pass collects even if it
	// evicted nothing (content left unreferenced by pulls: tags moved,
	// failed fills); 0 collects on every pass.
	CollectEvery time.Duration
}

// Run runs a pass on every tick (the server ticks every minute) and on
// every wake (the server wakes it when a write takes the store past
// p.MaxSize; wakes that come during a pass make one more pass, and are
// ignored while the last pass could not get the store under p.MaxSize,
// until the next tick), until ctx ends. See Pass. Evictions are logged;
// failures are logged and do not stop it, but for an index found damaged
// (storage.ErrDamaged), which it returns: each pass would meet it again.
func (c *Collector) Run(ctx context.Context, ticks <-chan time.Time, wake <-chan struct{}, p Policy) error {
	stuck := false // the last pass left the store over p.MaxSize
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-ticks:
		case <-wake:
			if stuck {
				continue
			}
		}
		r, err := c.Pass(ctx, p)
		stuck = err == nil && p.MaxSize > 0 && r.StoredAfter > p.MaxSize
		if errors.Is(err, storage.ErrDamaged) {
			return err
		}
		if err != nil {
			if ctx.Err() == nil {
				c.opts.Log.Warn("cache eviction and collection failed", "error", err)
			}
			continue
		}
		if r.ImagesEvicted > 0 || r.BlobsRemoved > 0 || r.ManifestsRemoved > 0 {
			c.opts.Log.Info("cache collected", "images_evicted", r.ImagesEvicted, "blobs_removed", r.BlobsRemoved,
				"manifests_removed", r.ManifestsRemoved, "bytes_freed", r.BytesFreed, "stored_bytes", r.StoredAfter)
		}
		if stuck {
			c.opts.Log.Warn("cache still over its size limit: the rest is pinned, in use or just written",
				"stored_bytes", r.StoredAfter, "max_size", p.MaxSize)
		}
	}
}

// Pass is one run of the server's lifecycle at the collector's clock: it
// evicts by p (if p.EvictAfter is set, or the store is over p.MaxSize),
// and collects if it evicted something, if the store is over p.MaxSize,
// or if the last collection by Pass that succeeded is p.CollectEvery old
// (a failed one is tried again on the next pass). The eviction
// reads the index and the images' manifests; the collection lists the
// whole store. A damaged page of the index it reads is an error
// (storage.ErrDamaged), not a panic in the server's background.
func (c *Collector) Pass(ctx context.Context, p Policy) (_ Report, err error) {
	defer c.index.RecoverDamaged(&err)
	if err := c.lock(ctx); err != nil {
		return Report{}, err
	}
	defer c.unlock()
	r, err := c.pass(ctx, p)
	if !errors.Is(err, storage.ErrUnreadableRecord) || c.opts.DryRun {
		return r, err
	}
	// A record that cannot be read (a flipped bit) would fail every
	// pass, the store growing past max_size: it is dropped, as verify
	// --repair drops it, and the pass made again.
	var dropped Report
	if derr := c.dropUnreadable(ctx, &dropped); derr != nil {
		return r, errors.Join(err, derr)
	}
	r, err = c.pass(ctx, p)
	r.add(dropped)
	r.UnreadableRecords, r.FillsReset = dropped.UnreadableRecords, r.FillsReset+dropped.FillsReset
	return r, err
}

// dropUnreadable drops the index's records that cannot be decoded, as
// Verify's repair does (storage.Index.DropRecords), logging each; the
// content whose record it was is removed, its images going back to
// partial, and its next pull fetches it again.
func (c *Collector) dropUnreadable(ctx context.Context, r *Report) error {
	bad, err := c.index.UnreadableRecords()
	if err != nil || len(bad) == 0 {
		return err
	}
	for _, u := range bad {
		c.opts.Log.Warn("index record cannot be read; dropping it", "bucket", u.Bucket, "key", u.Key, "error", u.Err)
	}
	if err := c.index.DropRecords(bad); err != nil {
		return err
	}
	r.UnreadableRecords = bad
	found := map[digest.Digest]bool{}
	var content []digest.Digest
	for _, u := range bad {
		if u.Content() {
			content = append(content, digest.Digest(u.Key))
			found[digest.Digest(u.Key)] = true
		}
	}
	if len(content) == 0 {
		return nil
	}
	recs, err := c.index.ReadImageTable(nil, nil)
	if err != nil {
		return err
	}
	return c.removeContent(ctx, recs.Fills, content, nil, found, recordedAgain(found), r)
}

// pass is Pass, c.mu held.
func (c *Collector) pass(ctx context.Context, p Policy) (Report, error) {
	now := c.opts.Now()
	due := p.CollectEvery <= 0 || c.lastCollect.IsZero() || !now.Before(c.lastCollect.Add(p.CollectEvery))
	if !due && p.EvictAfter <= 0 && p.MaxSize > 0 && c.index.Shared() {
		// Reading the records is a request per record: a listing of
		// the content (one per 1,000) tells first whether the bucket
		// can be over the limit at all.
		listed, err := c.listedBytes(ctx)
		if err != nil && !errors.Is(err, storage.ErrListingIncomplete) {
			return Report{}, err
		}
		// A listing that passed over a directory it cannot read (a
		// shared disk's) cannot tell that the store is under the
		// limit: the records do.
		if err == nil && listed <= p.MaxSize {
			return Report{StoredBefore: listed, StoredAfter: listed}, nil
		}
	}
	if due || p.EvictAfter > 0 || p.MaxSize > 0 {
		// On a shared bucket, roots and totals are every replica's.
		if err := c.refresh(ctx); err != nil {
			return Report{}, err
		}
	}
	if p.EvictAfter <= 0 && (p.MaxSize <= 0 || c.index.StoredBytes() <= p.MaxSize) {
		// Nothing to evict (no age limit, under the size limit, or none).
		if !due {
			return Report{StoredBefore: c.index.StoredBytes(), StoredAfter: c.index.StoredBytes()}, nil
		}
		defer c.enterPass()()
		r, err := c.collect(ctx, nil, nil, nil)
		if err == nil {
			c.lastCollect = now // a failed one is tried again on the next pass
		}
		c.opts.Metrics.observe("collect", "gc", r, err)
		return r, err
	}
	defer c.enterPass()()
	r, collected, err := c.evict(ctx, p.MaxSize, p.EvictAfter, now, func(evicted bool) bool {
		return evicted || due || (p.MaxSize > 0 && c.index.StoredBytes() > p.MaxSize)
	})
	if collected && err == nil {
		c.lastCollect = now
	}
	op, reason := "evict", "evict"
	if collected && r.ImagesEvicted == 0 {
		// Nothing evicted: what went was unreferenced already.
		op, reason = "collect", "gc"
	}
	c.opts.Metrics.observe(op, reason, r, err)
	return r, err
}

// enterPass begins a pass that writes the index (a collection, an
// eviction): the GC's hold, and the index's pass, whose commits leave
// bbolt's freelist out (storage.Index.BeginPass). The func it returns
// ends both.
func (c *Collector) enterPass() (exit func()) {
	leave := c.opts.GCHold.Enter()
	end := c.index.BeginPass()
	return func() {
		end()
		leave()
	}
}

// recent reports whether any of the times is within the grace period.
func (c *Collector) recent(now time.Time, ts ...time.Time) bool {
	if c.opts.Grace <= 0 {
		return false
	}
	cutoff := now.Add(-c.opts.Grace)
	for _, t := range ts {
		if t.After(cutoff) {
			return true
		}
	}
	return false
}

// claim claims ds from the guard; it returns those claimed, and a release
// of them all.
func (c *Collector) claim(ds []digest.Digest) ([]digest.Digest, func()) {
	var got []digest.Digest
	claims := claimsOf(c.opts.Guard)
	for _, d := range ds {
		if claims.Claim(d) {
			got = append(got, d)
		}
	}
	return got, claims.Release
}

// listedBytes is the size of all content in the store, as listed: what
// the records count and what none does yet.
func (c *Collector) listedBytes(ctx context.Context) (int64, error) {
	var n int64
	err := c.store.Walk(ctx, func(sc storage.StoredContent) error {
		n += sc.Size
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("listing the store: %w", err)
	}
	return n, nil
}

// refresh reads every replica's records from a shared store into the
// index before the index is read as a whole: roots, pins, pull times and
// sizes are then the bucket's, not this replica's (nothing to do on a
// store of one process).
func (c *Collector) refresh(ctx context.Context) error {
	if err := c.index.Refresh(ctx); err != nil {
		return fmt.Errorf("reading the records other replicas share: %w", err)
	}
	return nil
}
