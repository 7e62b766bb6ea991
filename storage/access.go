package storage

import (
	"encoding/json"
	"time"

	"github.com/opencontainers/go-digest"
	bolt "go.etcd.io/bbolt"
)

// Last-pull times of manifests, for eviction.

// AccessGranularity is how precisely TouchManifest records pulls: a
// manifest's access time is written at most once per AccessGranularity, so
// serving a manifest rarely costs a disk write.
const AccessGranularity = time.Minute

// SharedPullIdle is how old the last pull a shared index records for a
// manifest must be for its next pull to be written to the shared records
// at once (TouchManifest) rather than at the next flush. An image pulled
// at least this often costs its hits no write; one pulled again after
// longer is the least recently pulled in every other replica's view, the
// first their evictions take, until this replica's flush.
const SharedPullIdle = 5 * time.Minute

// TouchManifest notes that a manifest was served at t: the eviction's
// least-recently-pulled order uses it. Like Touch, it costs no disk write
// on the request's path, and no read either: the time is kept in memory,
// and Flush (every 30 s in a server, before an eviction or ls, and on
// Close) writes it if the recorded time is older than AccessGranularity.
// (Reading the recorded time here cost every first pull of a manifest a
// lookup: a page fault at 100k images.) On a shared index the first pull
// noted since a flush reads the recorded time, and if it is older than
// SharedPullIdle writes t to the shared records before it returns: the
// other replicas' evictions, reading the bucket's pull times, then spare
// the image this replica is serving (a hit on a shared store reads the
// bucket anyway: the local lookup is small beside it).
func (ix *Index) TouchManifest(dgst digest.Digest, t time.Time) error {
	ix.mu.Lock()
	if ix.pulled == nil {
		ix.pulled = map[digest.Digest]time.Time{}
	}
	prev, noted := ix.pulled[dgst]
	if !noted || t.Sub(prev) >= AccessGranularity {
		ix.pulled[dgst] = t
	}
	ix.mu.Unlock()
	if noted || ix.records == nil {
		return nil
	}
	recorded, err := ix.recordedAccess(dgst)
	if err != nil || t.Sub(recorded) < SharedPullIdle {
		return err
	}
	// Noted all the same: on a failure the flush writes it.
	return ix.sharePut(bucketAccess, []byte(dgst), t)
}

// flushPullTimes writes the last pulls TouchManifest noted, in
// transactions bounded by the index's write limits; it returns how long
// the longest held the write lock.
func (ix *Index) flushPullTimes() (time.Duration, error) {
	ix.mu.Lock()
	pending := ix.pulled
	ix.pulled = nil
	ix.mu.Unlock()
	todo := pairs(pending)
	var b *bolt.Bucket
	wrote := map[digest.Digest]time.Time{}
	flushed := 0 // todo[:flushed] are committed
	held, err := ix.writeAll(len(todo), batchWrite{
		begin: func(tx *bolt.Tx) (err error) {
			clear(wrote)
			b, err = tx.CreateBucketIfNotExists(bucketAccess)
			return err
		},
		touch: touchKey(bucketAccess, func(i int) []byte { return []byte(todo[i].k) }),
		item: func(_ *bolt.Tx, i int) (int, error) {
			d, t := todo[i].k, todo[i].v
			var cur time.Time
			if raw := b.Get([]byte(d)); raw != nil {
				_ = json.Unmarshal(raw, &cur) // an unreadable entry is overwritten
			}
			if t.Sub(cur) < AccessGranularity {
				return 0, nil // written at most once per AccessGranularity
			}
			raw, err := json.Marshal(t)
			if err != nil {
				return 0, err
			}
			wrote[d] = t
			return 1, b.Put([]byte(d), raw)
		},
		// Every replica's pulls count for eviction: the bucket holds the
		// latest (a replica writing an older time loses at most a
		// minute). Best effort: with the bucket unreachable (or at
		// shutdown) a time the bucket misses only makes the image look
		// older to the other replicas until this replica's next
		// Refresh writes it there (if the bucket has an older one) or
		// its next pull; this replica's index keeps it.
		committed: func(_, to int) error {
			flushed = to
			for dgst, t := range wrote {
				if ix.sharePut(bucketAccess, []byte(dgst), t) != nil {
					break
				}
			}
			return nil
		},
	})
	if err != nil {
		// Not lost: written on the next flush.
		ix.mu.Lock()
		if ix.pulled == nil {
			ix.pulled = map[digest.Digest]time.Time{}
		}
		requeue(ix.pulled, todo[flushed:])
		ix.mu.Unlock()
	}
	return held, err
}

// requeue puts back in pending the times of a flush that were not
// written, where no later one was noted meanwhile.
func requeue(pending map[digest.Digest]time.Time, todo []pair[digest.Digest, time.Time]) {
	for _, p := range todo {
		if cur, ok := pending[p.k]; !ok || p.v.After(cur) {
			pending[p.k] = p.v
		}
	}
}

// ManifestAccess returns the last pull TouchManifest noted for a
// manifest, flushed or not (the zero time if none).
func (ix *Index) ManifestAccess(dgst digest.Digest) (time.Time, error) {
	t, err := ix.recordedAccess(dgst)
	ix.mu.Lock()
	if p := ix.pulled[dgst]; p.After(t) {
		t = p
	}
	ix.mu.Unlock()
	return t, err
}

// recordedAccess returns the last pull written to the index.
func (ix *Index) recordedAccess(dgst digest.Digest) (time.Time, error) {
	var t time.Time
	err := ix.db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketAccess)
		if b == nil {
			return nil
		}
		if raw := b.Get([]byte(dgst)); raw != nil {
			if err := json.Unmarshal(raw, &t); err != nil {
				return unreadable(bucketAccess, dgst, err)
			}
		}
		return nil
	})
	return t, err
}

// addUnflushedPulls adds to access the manifests' last pulls noted by
// TouchManifest and not yet flushed, where they are newer.
func (ix *Index) addUnflushedPulls(access map[digest.Digest]time.Time) {
	ix.mu.Lock()
	defer ix.mu.Unlock()
	for d, t := range ix.pulled {
		if t.After(access[d]) {
			access[d] = t
		}
	}
}
