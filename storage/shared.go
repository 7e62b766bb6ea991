package storage

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/opencontainers/go-digest"
	bolt "go.etcd.io/bbolt"
	"golang.org/x/sync/errgroup"
)

// The index on a shared store: every record a replica needs to serve
// content another replica fetched is written through to Records, and read
// from there when the local database misses it. Without Records (the
// default, a store of one process) none of this runs.

// recordsTimeout bounds one access to the shared records: the Index's
// methods take no context, and a store that does not answer must not hold
// a pull for ever.
const recordsTimeout = 30 * time.Second

// sharedKinds are the index buckets Refresh reads from the shared records,
// in this order. Jobs are shared too, but read one by one (Job): a
// replica must not take another's running jobs for its own to resume.
var sharedKinds = [][]byte{bucketBlobs, bucketManifests, bucketLinks, bucketTags, bucketMirrors, bucketPins, bucketAccess, bucketReferrers}

// TagRecheck is how old a tag's local record may be before a shared
// index compares it with the bucket's.
const TagRecheck = 15 * time.Second

// ShareRecords makes records the shared copy of the index: writes go
// through to it, local misses are read from it. now is the clock tag
// records are aged by (nil: time.Now). Call it once, before the index is
// used.
func (ix *Index) ShareRecords(records Records, now func() time.Time) {
	ix.records = records
	ix.clock = now
	ix.fills.disable() // other replicas' writes do not pass it
	ix.links.disable()
	ix.tags.disable()
}

// now is the shared index's clock.
func (ix *Index) now() time.Time {
	if ix.clock != nil {
		return ix.clock()
	}
	return time.Now()
}

// Shared reports whether the index keeps its records in a shared store.
func (ix *Index) Shared() bool { return ix.records != nil }

func recordsContext() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), recordsTimeout)
}

// sharePut writes a record through to the shared records.
func (ix *Index) sharePut(bucket, key []byte, v any) error {
	if ix.records == nil {
		return nil
	}
	// JSON, whatever the local form: replicas of every version read it.
	raw, err := json.Marshal(v)
	if err != nil {
		return err
	}
	ctx, cancel := recordsContext()
	defer cancel()
	if err := ix.records.Put(ctx, string(bucket), string(key), raw); err != nil {
		return fmt.Errorf("shared records: writing %s %q: %w: %w", bucket, key, ErrUnavailable, err)
	}
	return nil
}

// shareCreate writes a record through to the shared records only if they
// hold none (RecordCreator): an error wrapping ErrRecordExists if they
// do. Records that cannot tell take it as sharePut's.
func (ix *Index) shareCreate(bucket, key []byte, v any) error {
	c, ok := ix.records.(RecordCreator)
	if !ok {
		return ix.sharePut(bucket, key, v)
	}
	raw, err := json.Marshal(v)
	if err != nil {
		return err
	}
	ctx, cancel := recordsContext()
	defer cancel()
	if err := c.Create(ctx, string(bucket), string(key), raw); err != nil {
		if errors.Is(err, ErrRecordExists) {
			return err
		}
		return fmt.Errorf("shared records: creating %s %q: %w: %w", bucket, key, ErrUnavailable, err)
	}
	return nil
}

// shareGetVersion is shareGet, with the record's version (RecordVersions;
// "" where the records keep none).
func (ix *Index) shareGetVersion(bucket, key []byte) ([]byte, string, bool, error) {
	v, ok := ix.records.(RecordVersions)
	if !ok {
		raw, found, err := ix.shareGet(bucket, key)
		return raw, "", found, err
	}
	ctx, cancel := recordsContext()
	defer cancel()
	raw, version, err := v.GetVersion(ctx, string(bucket), string(key))
	if errors.Is(err, ErrNotFound) {
		return nil, "", false, nil
	}
	if err != nil {
		return nil, "", false, fmt.Errorf("shared records: reading %s %q: %w: %w", bucket, key, ErrUnavailable, err)
	}
	return raw, version, true, nil
}

// shareDeleteIf removes a record from the shared records only while its
// version is version (shareGetVersion's): an error wrapping
// ErrRecordChanged if another write changed it since. Records that keep
// no versions remove it whatever it is.
func (ix *Index) shareDeleteIf(bucket, key []byte, version string) error {
	v, ok := ix.records.(RecordVersions)
	if !ok {
		return ix.shareDelete(bucket, key)
	}
	ctx, cancel := recordsContext()
	defer cancel()
	if err := v.DeleteIf(ctx, string(bucket), string(key), version); err != nil {
		if errors.Is(err, ErrRecordChanged) {
			return err
		}
		return fmt.Errorf("shared records: deleting %s %q: %w: %w", bucket, key, ErrUnavailable, err)
	}
	return nil
}

// shareDelete removes records from the shared records.
func (ix *Index) shareDelete(bucket []byte, keys ...[]byte) error {
	if ix.records == nil {
		return nil
	}
	ctx, cancel := recordsContext()
	defer cancel()
	for _, k := range keys {
		if err := ix.records.Delete(ctx, string(bucket), string(k)); err != nil {
			return fmt.Errorf("shared records: deleting %s %q: %w: %w", bucket, k, ErrUnavailable, err)
		}
	}
	return nil
}

// shareGet reads a record from the shared records: found false if there
// is none.
func (ix *Index) shareGet(bucket, key []byte) ([]byte, bool, error) {
	if ix.records == nil {
		return nil, false, nil
	}
	ctx, cancel := recordsContext()
	defer cancel()
	raw, err := ix.records.Get(ctx, string(bucket), string(key))
	if errors.Is(err, ErrNotFound) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, fmt.Errorf("shared records: reading %s %q: %w: %w", bucket, key, ErrUnavailable, err)
	}
	return raw, true, nil
}

// viewShared reads a record locally, and on a local miss from the shared
// records, keeping what it finds in the local database; a shared record
// that cannot be read is a miss.
func viewShared[T any](ix *Index, bucket, key []byte) (T, bool, error) {
	v, ok, err := view[T](ix, bucket, key)
	if ok || err != nil || ix.records == nil {
		return v, ok, err
	}
	raw, found, err := ix.shareGet(bucket, key)
	if err != nil || !found {
		return v, false, err
	}
	raw = notAhead(bucket, raw, ix.now()) // as adopted: the caller ages it so
	if err := unmarshal(raw, &v); err != nil {
		// Unreadable (truncated, or written in another form by another
		// version): a miss, which the caller fetches and records again,
		// rather than an error on every replica without a record of its
		// own for as long as it is there.
		var zero T
		return zero, false, nil
	}
	return v, true, ix.adopt(bucket, key, raw)
}

// adopt keeps a record read from the shared records in the local
// database, as its writer recorded it (links both ways; the stored total
// counting a new blob or manifest).
func (ix *Index) adopt(bucket, key, raw []byte) error {
	return ix.write(func(tx *bolt.Tx) error { return ix.adoptTx(tx, bucket, key, raw) })
}

// adoptTx writes one shared record in tx.
func (ix *Index) adoptTx(tx *bolt.Tx, bucket, key, raw []byte) error {
	switch string(bucket) {
	case string(bucketLinks):
		host, repo, dgst, ok := parseLinkKey(string(key))
		if !ok {
			return nil
		}
		return link(tx, host, repo, dgst)
	case string(bucketBlobs), string(bucketManifests):
		var rec struct {
			Size int64 `json:"size"`
		}
		if err := json.Unmarshal(raw, &rec); err != nil {
			return nil
		}
		if cur := tx.Bucket(bucket).Get(key); cur != nil && string(bucket) == string(bucketBlobs) {
			raw = keepLastAccess(cur, raw)
		}
		return ix.putContent(tx, bucket, key, raw)
	case string(bucketTags):
		if b := tx.Bucket(bucket); b != nil && sameTagAhead(b.Get(key), raw, ix.now()) {
			return nil // adopted before, capped then: see Index.tag
		}
		raw = tagNotAhead(raw, ix.now())
	case string(bucketReferrers):
		if b := tx.Bucket(bucket); b != nil && sameReferrersAhead(b.Get(key), raw, ix.now()) {
			return nil // adopted before, capped then
		}
		raw = referrersNotAhead(raw, ix.now())
	case string(bucketPins):
		if json.Unmarshal(raw, new(PinRecord)) != nil {
			// Unreadable, but a pin all the same: its key is what keeps
			// the image out of eviction.
			raw = []byte("{}")
		}
	case string(bucketAccess):
		if json.Unmarshal(raw, new(time.Time)) != nil {
			return nil // unreadable: see readable
		}
		// A pull is recorded here first: a later one than the bucket's
		// (its write there refused) stays, and Refresh writes it there.
		b, err := tx.CreateBucketIfNotExists(bucket)
		if err != nil {
			return err
		}
		if _, later := laterPull(b.Get(key), raw); later {
			return nil
		}
		return b.Put(key, raw)
	}
	if !readable(bucket, raw) {
		return nil
	}
	b, err := tx.CreateBucketIfNotExists(bucket)
	if err != nil {
		return err
	}
	return b.Put(key, raw)
}

// tagNotAhead returns the shared tag record raw with its times no later
// than now: a replica whose clock is ahead of this one's wrote them, and
// kept as they are, its confirmation would be newer than any other
// replica's for as long as that clock is ahead (Index.tag keeps the newer
// of its record and the bucket's), and a tag moved since served as it was.
func tagNotAhead(raw []byte, now time.Time) []byte {
	var r TagRecord
	if r.UnmarshalBinary(raw) != nil || !capTimes(now, &r.CheckedAt, &r.FetchedAt) {
		return raw
	}
	out, err := json.Marshal(r)
	if err != nil {
		return raw
	}
	return out
}

// sameTagAhead reports whether the shared tag record raw is ahead of now
// and names the digest of the local one, cur, which is not: most likely
// the record adopted before, capped then. Adopted again, capped now (at
// every refresh), the tag would never grow old here; a confirmation of
// the same digest costs a revalidation at worst. A local record ahead
// too (written while this replica's clock was ahead) is capped.
func sameTagAhead(cur, raw []byte, now time.Time) bool {
	var c, r TagRecord
	return cur != nil && c.UnmarshalBinary(cur) == nil && r.UnmarshalBinary(raw) == nil && r.CheckedAt.After(now) && r.Digest == c.Digest && !c.CheckedAt.After(now)
}

// notAhead returns the shared record raw of bucket with the times its
// freshness is judged by no later than now (tagNotAhead,
// referrersNotAhead).
func notAhead(bucket, raw []byte, now time.Time) []byte {
	switch string(bucket) {
	case string(bucketTags):
		return tagNotAhead(raw, now)
	case string(bucketReferrers):
		return referrersNotAhead(raw, now)
	}
	return raw
}

// referrersNotAhead is tagNotAhead for a referrers answer: confirmed by a
// replica whose clock is ahead, kept as it is it would stay fresh here
// for as long as that clock is ahead, a referrer pushed since (a new
// signature) not listed.
func referrersNotAhead(raw []byte, now time.Time) []byte {
	var r ReferrersRecord
	if json.Unmarshal(raw, &r) != nil || !capTimes(now, &r.CheckedAt, &r.FetchedAt) {
		return raw
	}
	out, err := json.Marshal(r)
	if err != nil {
		return raw
	}
	return out
}

// sameReferrersAhead is sameTagAhead for a referrers answer: the shared
// one, ahead of now, lists what the local one, not ahead, does; adopted
// again, capped now at every refresh, it would never grow old here.
func sameReferrersAhead(cur, raw []byte, now time.Time) bool {
	var c, r ReferrersRecord
	return cur != nil && json.Unmarshal(cur, &c) == nil && json.Unmarshal(raw, &r) == nil && r.CheckedAt.After(now) && !c.CheckedAt.After(now) &&
		c.Filtered == r.Filtered && c.FromTag == r.FromTag && bytes.Equal(c.Body, r.Body)
}

// capTimes sets each of times, the times a record's freshness is judged
// by, that is later than now to now, and reports whether any was: written
// by a replica whose clock is ahead (tagNotAhead).
func capTimes(now time.Time, times ...*time.Time) (ahead bool) {
	for _, t := range times {
		if t.After(now) {
			*t, ahead = now, true
		}
	}
	return ahead
}

// readable reports whether a shared record of a kind the collection
// reads whole (tags, mirror states, referrers answers) can be read. One
// that cannot (truncated, or encoded otherwise by another version) is not
// adopted, as an unreadable content record or pull time is not: in the
// local database it would fail every collection and eviction of every
// replica, each reading the whole bucket first, for as long as it is
// there. What it alone kept is collected, and fetched again if asked for.
func readable(bucket, raw []byte) bool {
	switch string(bucket) {
	case string(bucketTags):
		return new(TagRecord).UnmarshalBinary(raw) == nil
	case string(bucketMirrors):
		return json.Unmarshal(raw, new(FillRecord)) == nil
	case string(bucketReferrers):
		return json.Unmarshal(raw, new(ReferrersRecord)) == nil
	}
	return true
}

// parseLinkKey splits a linkKey into its parts.
func parseLinkKey(key string) (host, repo string, dgst digest.Digest, ok bool) {
	at := -1
	for i := len(key) - 1; i >= 0; i-- {
		if key[i] == '@' {
			at = i
			break
		}
	}
	if at < 0 {
		return "", "", "", false
	}
	d, err := digest.Parse(key[at+1:])
	if err != nil {
		return "", "", "", false
	}
	for i := 0; i < at; i++ {
		if key[i] == '/' {
			if i == 0 || i == at-1 {
				return "", "", "", false
			}
			return key[:i], key[i+1 : at], d, true
		}
	}
	return "", "", "", false
}

// PruneAge is how old a local record the bucket no longer holds must be
// before Refresh drops it: younger ones may be on their way to the bucket.
const PruneAge = 10 * time.Minute

// prunable are the kinds Refresh drops local records of when the bucket
// no longer has them (another replica collected or evicted them), with
// the time each record was last written. Links, access times and jobs are
// only ever added: a stale one names content that reads as missing.
var prunable = map[string]func(raw []byte) time.Time{
	string(bucketTags): func(raw []byte) time.Time {
		var r TagRecord
		_ = r.UnmarshalBinary(raw)
		return latestTime(r.FetchedAt, r.CheckedAt)
	},
	string(bucketMirrors): func(raw []byte) time.Time {
		var r FillRecord
		_ = json.Unmarshal(raw, &r)
		return r.UpdatedAt
	},
	string(bucketPins): func(raw []byte) time.Time {
		var r PinRecord
		_ = json.Unmarshal(raw, &r)
		return r.PinnedAt
	},
	string(bucketBlobs): func(raw []byte) time.Time {
		var r BlobRecord
		_ = json.Unmarshal(raw, &r)
		return r.FetchedAt
	},
	string(bucketManifests): func(raw []byte) time.Time {
		var r ManifestRecord
		_ = json.Unmarshal(raw, &r)
		return r.FetchedAt
	},
}

func latestTime(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// Refresh makes the local database a copy of the shared records: every
// record in the bucket is copied in, and local tags, mirror states, pins
// and content records the bucket no longer holds are dropped once older
// than PruneAge. What the index lists (tags, pins, content and its total
// size) is then what every replica on the store recorded: the collector
// reads the whole bucket's roots and totals this way. Without shared
// records it does nothing.
func (ix *Index) Refresh(ctx context.Context) error {
	if ix.records == nil {
		return nil
	}
	for _, bucket := range sharedKinds {
		if err := ix.refreshKind(ctx, bucket); err != nil {
			return err
		}
	}
	// Adopting and pruning changed the stored total as they went; a sum
	// checks it (and corrects it, were it ever off).
	_, err := ix.checkStored()
	return err
}

// refreshKind is Refresh of one kind of records. The pins are read and
// written under the pins' lock: a pin or unpin made here in between,
// written to the bucket after the walk read it, would be undone here
// until the next Refresh. Their walk is bounded as one bucket call is:
// the pins and unpins waiting (a job's taking back, on a context not
// cancelled) wait no longer for a bucket that hangs.
func (ix *Index) refreshKind(ctx context.Context, bucket []byte) error {
	if string(bucket) == string(bucketPins) {
		unlock, err := ix.lockPins(ctx)
		if err != nil {
			return err
		}
		defer unlock()
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, recordsTimeout)
		defer cancel()
	}
	var recs []sharedRecord
	inBucket := map[string]bool{}
	err := ix.records.Walk(ctx, string(bucket), func(key string, value []byte) error {
		recs = append(recs, sharedRecord{[]byte(key), value})
		inBucket[key] = true
		return nil
	})
	if err != nil {
		return fmt.Errorf("shared records: reading %s: %w", bucket, err)
	}
	if err := ix.prune(bucket, inBucket); err != nil {
		return err
	}
	for chunk := range slices.Chunk(recs, 1000) {
		err := ix.write(func(tx *bolt.Tx) error {
			for _, r := range chunk {
				if err := ix.adoptTx(tx, bucket, r.key, r.raw); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			return err
		}
	}
	if string(bucket) == string(bucketAccess) {
		return ix.shareLaterPulls(recs)
	}
	return nil
}

// prune drops the local records of a prunable kind that the bucket does
// not hold and that were written more than PruneAge ago.
func (ix *Index) prune(bucket []byte, inBucket map[string]bool) error {
	written, ok := prunable[string(bucket)]
	if !ok {
		return nil
	}
	cutoff := ix.now().Add(-PruneAge)
	return ix.write(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucket)
		if b == nil {
			return nil
		}
		var gone [][]byte
		err := b.ForEach(func(k, v []byte) error {
			if !inBucket[string(k)] && written(v).Before(cutoff) {
				gone = append(gone, bytes.Clone(k))
			}
			return nil
		})
		if err != nil {
			return err
		}
		for _, k := range gone {
			del := b.Delete
			if isContent(bucket) {
				del = func(k []byte) error { return ix.deleteContent(tx, bucket, k) }
			}
			if err := del(k); err != nil {
				return err
			}
		}
		return nil
	})
}

// keepLastAccess returns the shared blob record raw with the later of its
// and the local record's last access: pulls are noted locally only.
func keepLastAccess(local, raw []byte) []byte {
	var l, r BlobRecord
	if json.Unmarshal(local, &l) != nil || json.Unmarshal(raw, &r) != nil || !l.LastAccess.After(r.LastAccess) {
		return raw
	}
	r.LastAccess = l.LastAccess
	out, err := json.Marshal(r)
	if err != nil {
		return raw
	}
	return out
}

// laterPull reports whether the pull time local (an access record, nil if
// none) is later than the shared record raw's, and returns it.
func laterPull(local, raw []byte) (time.Time, bool) {
	var l, r time.Time
	if local == nil || json.Unmarshal(local, &l) != nil || json.Unmarshal(raw, &r) != nil {
		return l, false
	}
	return l, l.After(r)
}

// sharedRecord is a record as read from the shared records.
type sharedRecord struct{ key, raw []byte }

// shareLaterPulls writes to the shared records the pull times this
// replica holds later than the bucket's (recs, as read there): a flush's
// write the bucket refused, which the other replicas' evictions would not
// count otherwise. Best effort, as the flush: on a failure the rest waits
// for the next Refresh.
func (ix *Index) shareLaterPulls(recs []sharedRecord) error {
	var later []pair[string, time.Time]
	err := ix.db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketAccess)
		if b == nil {
			return nil
		}
		for _, r := range recs {
			if t, ok := laterPull(b.Get(r.key), r.raw); ok {
				later = append(later, pair[string, time.Time]{string(r.key), t})
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	for _, p := range later {
		if ix.sharePut(bucketAccess, []byte(p.k), p.v) != nil {
			break
		}
	}
	return nil
}

// Reuse notes that a fill reuses the stored content dgst, recorded
// already, at t for an image it records, without writing it. On a shared
// index the content's records in the bucket are written again with t (a
// blob's last access, a manifest's fetch time): a collection on another
// replica that read the records before the image was recorded reads them
// again before it removes the content (Recheck), and keeps it. It does
// nothing without shared records, or for content the index does not
// record (the fill records that itself).
func (ix *Index) Reuse(dgst digest.Digest, t time.Time) error {
	if ix.records == nil {
		return nil
	}
	if rec, ok, err := view[BlobRecord](ix, bucketBlobs, []byte(dgst)); err != nil {
		return err
	} else if ok {
		rec.LastAccess = t
		if err := ix.sharePut(bucketBlobs, []byte(dgst), rec); err != nil {
			return err
		}
	}
	if rec, ok, err := view[ManifestRecord](ix, bucketManifests, []byte(dgst)); err != nil {
		return err
	} else if ok {
		rec.FetchedAt = t
		return ix.sharePut(bucketManifests, []byte(dgst), rec)
	}
	return nil
}

// rechecks bounds the records Recheck reads at once.
const rechecks = 8

// Recheck reads again from the shared records the content records of
// dgsts, which a collection is about to remove, and returns those that
// another replica wrote since this index last read them (Refresh):
// content that replica fetched again or reused (Reuse) for an image it
// records, which the roots the collection read do not show. Those records are adopted, as Refresh would. A
// record removed meanwhile (another collection) counts for nothing.
// Without shared records it returns none.
func (ix *Index) Recheck(ctx context.Context, dgsts []digest.Digest) (map[digest.Digest]bool, error) {
	if ix.records == nil || len(dgsts) == 0 {
		return nil, nil
	}
	type read struct {
		bucket []byte
		dgst   digest.Digest
		local  time.Time // the newest time of the local record (zero: none)
		raw    []byte    // the bucket's record, if it is newer
	}
	var reads []read
	err := ix.db.View(func(tx *bolt.Tx) error {
		for _, d := range dgsts {
			n := len(reads)
			for _, bucket := range [][]byte{bucketBlobs, bucketManifests} {
				if raw := tx.Bucket(bucket).Get([]byte(d)); raw != nil {
					reads = append(reads, read{bucket: bucket, dgst: d, local: contentTime(bucket, raw)})
				}
			}
			if len(reads) == n {
				// Recorded by no replica when the records were read: any
				// record names it now.
				reads = append(reads, read{bucket: bucketBlobs, dgst: d}, read{bucket: bucketManifests, dgst: d})
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	var eg errgroup.Group
	eg.SetLimit(rechecks)
	for i := range reads {
		r := &reads[i]
		eg.Go(func() error {
			rctx, cancel := context.WithTimeout(ctx, recordsTimeout)
			defer cancel()
			raw, err := ix.records.Get(rctx, string(r.bucket), string(r.dgst))
			if errors.Is(err, ErrNotFound) {
				return nil
			}
			if err != nil {
				return fmt.Errorf("shared records: reading %s %q: %w: %w", r.bucket, r.dgst, ErrUnavailable, err)
			}
			if contentTime(r.bucket, raw).After(r.local) {
				r.raw = raw
			}
			return nil
		})
	}
	if err := eg.Wait(); err != nil {
		return nil, err
	}
	written := map[digest.Digest]bool{}
	for _, r := range reads {
		if r.raw == nil {
			continue
		}
		if err := ix.adopt(r.bucket, []byte(r.dgst), r.raw); err != nil {
			return nil, err
		}
		written[r.dgst] = true
	}
	return written, nil
}

// contentTime is the newest time a blob or manifest record (JSON, as the
// bucket and the local database hold them) notes: zero if it cannot be
// read.
func contentTime(bucket, raw []byte) time.Time {
	if bytes.Equal(bucket, bucketBlobs) {
		var r BlobRecord
		_ = json.Unmarshal(raw, &r)
		return latestTime(r.FetchedAt, r.LastAccess)
	}
	var r ManifestRecord
	_ = json.Unmarshal(raw, &r)
	return r.FetchedAt
}

// RecheckPulls reads again from the shared records the last pulls of the
// manifests dgsts, those of the images an eviction is about to remove,
// and adopts the ones later than the index holds: pulls another replica
// wrote since this index last read them (Refresh), of an image it is
// serving (TouchManifest writes the first pull after an idle spell at
// once). It reports whether there was any. Without shared records it
// reports none.
func (ix *Index) RecheckPulls(ctx context.Context, dgsts []digest.Digest) (bool, error) {
	keys := make([]string, len(dgsts))
	for i, d := range dgsts {
		keys[i] = string(d)
	}
	return ix.adoptNewer(ctx, bucketAccess, keys, func(key string, raw []byte) (bool, error) {
		var shared time.Time
		if json.Unmarshal(raw, &shared) != nil {
			return false, nil // unreadable: see readable
		}
		local, err := ix.recordedAccess(digest.Digest(key))
		return shared.After(local), err
	})
}

// shareDeleteTagsNaming removes from the shared records the tag records
// tags names (key, and the digest the local record named), each only
// while it names that digest: another replica may have written it since
// this index read it, naming the image the tag moved to, and that record
// is adopted instead (shareDeleteUnlessNewer). A record naming another
// digest is deleted all the same if checked before gone (not zero: when
// the upstream was asked, its answer that the tag is gone the later).
func (ix *Index) shareDeleteTagsNaming(tags []pair[string, digest.Digest], gone time.Time) error {
	keys := make([]string, len(tags))
	for i, tg := range tags {
		keys[i] = tg.k
	}
	return ix.shareDeleteUnlessNewer(bucketTags, keys, func(i int, raw []byte) bool {
		var rec TagRecord
		return rec.UnmarshalBinary(raw) == nil && rec.Digest != tags[i].v && !rec.CheckedAt.Before(gone)
	})
}

// shareDeleteUnlessNewer removes the records keys of bucket from the
// shared records, each only while it is the record read (where the
// records keep versions), not one written between the read and the
// delete; one that newer says another replica wrote since this index
// read it (newer(i, raw), keys[i]'s) is adopted instead, the local one
// being gone. Each costs a GET beside its DELETE, rechecks of them at
// once.
func (ix *Index) shareDeleteUnlessNewer(bucket []byte, keys []string, newer func(i int, raw []byte) bool) error {
	if ix.records == nil || len(keys) == 0 {
		return nil
	}
	kept := make([][]byte, len(keys))
	var eg errgroup.Group
	eg.SetLimit(rechecks)
	for i, k := range keys {
		eg.Go(func() error {
			raw, version, found, err := ix.shareGetVersion(bucket, []byte(k))
			if err != nil || !found {
				return err
			}
			if newer(i, raw) {
				kept[i] = raw
				return nil
			}
			// Only while it is the one read: written since, it stays,
			// for the next read here to adopt.
			if err := ix.shareDeleteIf(bucket, []byte(k), version); !errors.Is(err, ErrRecordChanged) {
				return err
			}
			return nil
		})
	}
	if err := eg.Wait(); err != nil {
		return err
	}
	for i, raw := range kept {
		if raw == nil {
			continue
		}
		if err := ix.adopt(bucket, []byte(keys[i]), raw); err != nil {
			return err
		}
	}
	return nil
}

// RecheckPins reads again from the shared records the pins refs (digests
// or TagKeys: those of the images an eviction is about to remove), and
// adopts those the index does not hold: pins another replica set since
// this index last read them (Refresh). It reports whether there was any.
// Without shared records it reports none. It reads and adopts under the
// pins' lock, as Refresh: an unpin made here in between is not undone.
func (ix *Index) RecheckPins(ctx context.Context, refs []string) (bool, error) {
	if ix.records == nil || len(refs) == 0 {
		return false, nil
	}
	unlock, err := ix.lockPins(ctx)
	if err != nil {
		return false, err
	}
	defer unlock()
	pins, err := ix.Pins()
	if err != nil {
		return false, err
	}
	var unpinned []string
	for _, ref := range refs {
		if _, ok := pins[ref]; !ok {
			unpinned = append(unpinned, ref)
		}
	}
	return ix.adoptNewer(ctx, bucketPins, unpinned, func(string, []byte) (bool, error) { return true, nil })
}

// adoptNewer reads the shared records of bucket at keys, rechecks of
// them at once, and adopts those newer reports true of (a record the
// index lacks, or holds older): it reports whether it adopted any.
// Without shared records it adopts none.
func (ix *Index) adoptNewer(ctx context.Context, bucket []byte, keys []string, newer func(key string, raw []byte) (bool, error)) (bool, error) {
	if ix.records == nil || len(keys) == 0 {
		return false, nil
	}
	found := make([][]byte, len(keys))
	// The first read to fail ends the others: each waiting out its own
	// timeout, a bucket that hangs would hold RecheckPins, and the pins'
	// lock it holds, for as many timeouts as there are rounds of keys.
	eg, ctx := errgroup.WithContext(ctx)
	eg.SetLimit(rechecks)
	for i, key := range keys {
		eg.Go(func() error {
			rctx, cancel := context.WithTimeout(ctx, recordsTimeout)
			defer cancel()
			raw, err := ix.records.Get(rctx, string(bucket), key)
			if errors.Is(err, ErrNotFound) {
				return nil
			}
			if err != nil {
				return fmt.Errorf("shared records: reading %s %q: %w: %w", bucket, key, ErrUnavailable, err)
			}
			ok, err := newer(key, raw)
			if ok {
				found[i] = raw
			}
			return err
		})
	}
	if err := eg.Wait(); err != nil {
		return false, err
	}
	adopted := false
	for i, raw := range found {
		if raw == nil {
			continue
		}
		if err := ix.adopt(bucket, []byte(keys[i]), raw); err != nil {
			return false, err
		}
		adopted = true
	}
	return adopted, nil
}

// keyPublished, in the meta bucket, says that the index's own records
// have been written to the shared records (PublishRecords).
var keyPublished = []byte("records-published")

// PublishRecords writes to the shared records every local record of a
// shared kind they do not hold, once: an index that kept its records in
// bbolt only (a filesystem store before its replicas shared them, a
// single mirror made a cluster) would otherwise see them all dropped by
// its first Refresh (the bucket holds none of them) and the content
// they kept collected. Later calls do nothing, as does one without
// shared records.
func (ix *Index) PublishRecords(ctx context.Context) error {
	if ix.records == nil {
		return nil
	}
	var done bool
	err := ix.db.View(func(tx *bolt.Tx) error {
		if b := tx.Bucket(bucketMeta); b != nil {
			done = b.Get(keyPublished) != nil
		}
		return nil
	})
	if err != nil || done {
		return err
	}
	for _, bucket := range sharedKinds {
		var recs []sharedRecord
		err := ix.db.View(func(tx *bolt.Tx) error {
			b := tx.Bucket(bucket)
			if b == nil {
				return nil
			}
			return b.ForEach(func(k, v []byte) error {
				recs = append(recs, sharedRecord{bytes.Clone(k), bytes.Clone(v)})
				return nil
			})
		})
		if err != nil {
			return err
		}
		for _, r := range recs {
			raw, err := sharedForm(bucket, r.raw)
			if err != nil {
				continue // unreadable: not worth sharing (see readable)
			}
			_, err = ix.records.Get(ctx, string(bucket), string(r.key))
			if err == nil {
				continue // another replica's is as good
			}
			if !errors.Is(err, ErrNotFound) {
				return fmt.Errorf("shared records: reading %s %q: %w", bucket, r.key, err)
			}
			if err := ix.records.Put(ctx, string(bucket), string(r.key), raw); err != nil {
				return fmt.Errorf("shared records: writing %s %q: %w", bucket, r.key, err)
			}
		}
	}
	return ix.write(func(tx *bolt.Tx) error {
		b, err := tx.CreateBucketIfNotExists(bucketMeta)
		if err != nil {
			return err
		}
		return b.Put(keyPublished, []byte("1"))
	})
}

// ForgetPublished undoes PublishRecords' once, for an index that runs
// without shared records: what it records meanwhile is in bbolt only,
// and a later PublishRecords must write it to the shared records, or
// their first Refresh drops it. It writes nothing if there is nothing to
// forget.
func (ix *Index) ForgetPublished() error {
	var set bool
	err := ix.db.View(func(tx *bolt.Tx) error {
		if b := tx.Bucket(bucketMeta); b != nil {
			set = b.Get(keyPublished) != nil
		}
		return nil
	})
	if err != nil || !set {
		return err
	}
	return ix.write(func(tx *bolt.Tx) error {
		if b := tx.Bucket(bucketMeta); b != nil {
			return b.Delete(keyPublished)
		}
		return nil
	})
}

// sharedForm is a local record as the shared records hold it: JSON (a
// tag's local form may be binary; a link's is empty).
func sharedForm(bucket, raw []byte) ([]byte, error) {
	switch string(bucket) {
	case string(bucketLinks):
		return []byte("{}"), nil
	case string(bucketTags):
		var r TagRecord
		if err := r.UnmarshalBinary(raw); err != nil {
			return nil, err
		}
		return json.Marshal(r)
	}
	return raw, nil
}
